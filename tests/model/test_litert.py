"""LiteRT flat buffers: export with checksums, agreement with Keras, quantisation, the choice."""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray
from structlog.testing import capture_logs

from model import litert
from model.build import build_model
from model.classifier import Classifier, listed_checksums, save_model
from model.errors import ModelError
from model.litert import FILES, FLOAT_TOLERANCE, LiteRTRuntime, export_litert, pick_default
from model.preprocess import decode_image
from model.taxonomy import Taxonomy, TruncatedTaxonomy
from model.vocabulary import Vocabulary
from service.config import load_settings
from service.errors import ConfigError

PHOTOS = Path(__file__).resolve().parents[2] / "service" / "demo_assets" / "photos"
# Dresses and Shirts & Tops (depth 3), Shoes (depth 2), Apples (depth 5, truncated to 4).
LABELS = (2271, 212, 187, 6566)
SIZE = 32


@pytest.fixture(scope="module")
def truncated(taxonomy_file: Path) -> TruncatedTaxonomy:
    return Taxonomy.load(taxonomy_file).truncate(4)


@pytest.fixture(scope="module")
def photos() -> NDArray[np.uint8]:
    """The demo's 30 real product photos, prepared at the tiny model's size."""
    files = sorted(PHOTOS.glob("*.jpg"))
    assert len(files) >= 20
    return np.stack([decode_image(path, SIZE) for path in files])


@pytest.fixture(scope="module")
def plain_dir(truncated: TruncatedTaxonomy, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny marginal-heads model directory as training exports it (no flat buffer)."""
    vocabulary = Vocabulary.from_labels(truncated, LABELS)
    model = build_model(
        "tiny",
        vocabulary.sizes,
        heads="marginal",
        leaf_size=len(vocabulary.leaves),
        image_size=SIZE,
        leaf_paths=vocabulary.encode_many(vocabulary.leaves),
    )
    # An untrained head is nearly uniform (top classes a thousandth apart), so any rounding
    # reorders them; larger weights give the photos distinct top classes, as a trained head.
    kernel, bias = model.get_layer("leaf").get_weights()
    model.get_layer("leaf").set_weights([kernel * 50, bias])
    directory = tmp_path_factory.mktemp("plain")
    save_model(
        model,
        directory,
        name="test-model",
        backbone="tiny",
        image_size=SIZE,
        heads="marginal",
        truncated=truncated,
        vocabulary=vocabulary,
        level_weights=None,
        training={},
        metrics={},
    )
    return directory


@pytest.fixture(scope="module")
def exported(
    plain_dir: Path, photos: NDArray[np.uint8], tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, dict[str, Any]]:
    """The same model with float, dynamic-range and int8 flat buffers (int8 calibrated on
    the photos); the export's metadata entry."""
    directory = tmp_path_factory.mktemp("exported") / "model"
    shutil.copytree(plain_dir, directory)
    entry = export_litert(directory, quantizations=("dynamic", "int8"), calibration=photos)
    return directory, entry


def _copy(directory: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "copy"
    shutil.copytree(directory, copy)
    return copy


def _metadata(directory: Path) -> dict[str, Any]:
    return dict(json.loads((directory / "metadata.json").read_text()))


class TestExport:
    def test_flat_buffers_are_written_listed_and_checksummed(
        self, exported: tuple[Path, dict[str, Any]]
    ) -> None:
        """Each flat buffer lies beside model.keras, with its SHA-256 in checksums.sha256 and
        its entry in metadata.json, which names the runtimes and the tolerance."""
        directory, _ = exported
        listed = listed_checksums(directory)
        metadata = _metadata(directory)
        names = ("model.tflite", "model.dynamic.tflite", "model.int8.tflite")
        assert {"model.keras", "metadata.json", *names} == set(listed)
        for name in names:
            assert hashlib.sha256((directory / name).read_bytes()).hexdigest() == listed[name]
        assert ["keras", "litert"] == metadata["runtimes"]
        assert {"none": names[0], "dynamic": names[1], "int8": names[2]} == {
            q: f["file"] for q, f in metadata["litert"]["files"].items()
        }
        assert FLOAT_TOLERANCE == metadata["litert"]["tolerance"]["float_max_abs_difference"]
        assert [-1, SIZE, SIZE, 3] == metadata["litert"]["input"]["shape"]

    def test_without_validation_the_float_flat_buffer_is_the_default(
        self, exported: tuple[Path, dict[str, Any]]
    ) -> None:
        """A quantised flat buffer whose validation accuracy was not measured is not served
        by default: the float one is."""
        _, entry = exported
        assert "none" == entry["default"]
        assert "not measured" in entry["default_reason"]

    def test_the_keras_model_still_loads_after_export(
        self, exported: tuple[Path, dict[str, Any]], photos: NDArray[np.uint8]
    ) -> None:
        """The rewritten metadata and checksums leave the directory loadable with Keras."""
        directory, _ = exported
        classifier = Classifier.load(directory, runtime="keras")
        assert "keras" == classifier.runtime.name
        assert len(photos) == len(classifier.classify(list(photos)))

    def test_a_float_flat_buffer_beyond_the_tolerance_is_refused(
        self, plain_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """When the float flat buffer differs from Keras by more than the tolerance the
        export fails and the directory is left as it was."""
        copy = _copy(plain_dir, tmp_path)
        before = {p.name: p.read_bytes() for p in copy.iterdir()}
        monkeypatch.setattr(litert, "FLOAT_TOLERANCE", -1.0)
        with pytest.raises(ModelError, match="more than the tolerance"):
            export_litert(copy)
        assert before == {p.name: p.read_bytes() for p in copy.iterdir()}

    def test_int8_needs_calibration_images(self, plain_dir: Path, tmp_path: Path) -> None:
        """Full-integer quantisation without calibration images is refused."""
        with pytest.raises(ModelError, match="calibration images"):
            export_litert(_copy(plain_dir, tmp_path), quantizations=("int8",))

    def test_a_new_export_removes_the_flat_buffers_it_does_not_write(
        self, exported: tuple[Path, dict[str, Any]], tmp_path: Path
    ) -> None:
        """Exporting again without quantisation deletes and unlists the quantised files."""
        copy = _copy(exported[0], tmp_path)
        export_litert(copy)
        assert {"model.keras", "metadata.json", "model.tflite"} == set(listed_checksums(copy))
        assert not (copy / "model.int8.tflite").exists()
        assert ["none"] == list(_metadata(copy)["litert"]["files"])


class TestDamage:
    def test_a_changed_flat_buffer_is_refused(
        self, exported: tuple[Path, dict[str, Any]], tmp_path: Path
    ) -> None:
        """A flat buffer changed after export fails its checksum, naming the file, whether
        litert is asked for or chosen by auto."""
        copy = _copy(exported[0], tmp_path)
        data = bytearray((copy / "model.tflite").read_bytes())
        data[len(data) // 2] ^= 0xFF
        (copy / "model.tflite").write_bytes(bytes(data))
        for runtime in ("litert", "auto"):
            with pytest.raises(ModelError, match=r"checksum mismatch for .*model\.tflite"):
                Classifier.load(copy, runtime=runtime, gpu=False)

    def test_a_missing_flat_buffer_is_refused(
        self, exported: tuple[Path, dict[str, Any]], tmp_path: Path
    ) -> None:
        """A flat buffer the metadata lists but the directory lacks is a clear error."""
        copy = _copy(exported[0], tmp_path)
        (copy / "model.tflite").unlink()
        with pytest.raises(ModelError, match=r"lacks model\.tflite"):
            Classifier.load(copy, runtime="litert")


class TestAgreement:
    def test_float_litert_agrees_with_keras_on_real_photos(
        self, exported: tuple[Path, dict[str, Any]], photos: NDArray[np.uint8]
    ) -> None:
        """On real photos every head's probabilities differ by at most the stated tolerance,
        and the decoded predictions name the same categories."""
        directory, _ = exported
        keras = Classifier.load(directory, runtime="keras")
        lite = Classifier.load(directory, runtime="litert")
        expected, actual = keras.predict_raw(photos), lite.predict_raw(photos)
        assert expected.keys() == actual.keys()
        for head in expected:
            np.testing.assert_allclose(actual[head], expected[head], rtol=0, atol=FLOAT_TOLERANCE)
        assert [[n.id for n in p.path] for p in keras.classify(list(photos))] == [
            [n.id for n in p.path] for p in lite.classify(list(photos))
        ]

    def test_batches_of_any_size_run(
        self, exported: tuple[Path, dict[str, Any]], photos: NDArray[np.uint8]
    ) -> None:
        """Batches of 1, 7 and 30 after each other give one prediction per image, the same
        as the Keras model's leaf head."""
        directory, _ = exported
        keras = Classifier.load(directory, runtime="keras")
        lite = Classifier.load(directory, runtime="litert")
        for size in (1, 7, len(photos)):
            batch = photos[:size]
            assert np.array_equal(
                keras.predict_raw(batch)["leaf"].argmax(1),
                lite.predict_raw(batch)["leaf"].argmax(1),
            )

    def test_the_export_records_the_agreement_it_measured(
        self, exported: tuple[Path, dict[str, Any]]
    ) -> None:
        """The metadata holds each flat buffer's measured difference from Keras; the float
        one's is within the tolerance."""
        _, entry = exported
        files = entry["files"]
        assert files["none"]["max_abs_difference"] <= FLOAT_TOLERANCE
        assert 1.0 == files["none"]["top1_agreement"]
        assert all(f["images_per_s"] > 0 for f in files.values())

    def test_without_the_litert_package_tf_lite_runs_the_flat_buffer(
        self,
        exported: tuple[Path, dict[str, Any]],
        photos: NDArray[np.uint8],
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """When ai-edge-litert is not installed TensorFlow's interpreter runs the same flat
        buffer, with the same outputs."""
        directory, _ = exported
        metadata = _metadata(directory)
        expected = LiteRTRuntime.from_directory(directory, metadata, "none")(photos)
        monkeypatch.setitem(sys.modules, "ai_edge_litert.interpreter", None)
        fallback = LiteRTRuntime.from_directory(directory, metadata, "none")
        assert fallback.describe()["interpreter"].startswith("tf.lite")
        actual = fallback(photos)
        for head in expected:
            np.testing.assert_allclose(actual[head], expected[head], rtol=0, atol=FLOAT_TOLERANCE)


class TestQuantised:
    def test_int8_flat_buffer_is_integer_and_classifies_like_float(
        self, exported: tuple[Path, dict[str, Any]], photos: NDArray[np.uint8]
    ) -> None:
        """The int8 flat buffer computes in int8 (most of its tensors are int8), takes the
        same uint8 pixels, and its leaf probabilities stay close to the float model's, with
        the same top class on most photos."""
        directory, _ = exported
        metadata = _metadata(directory)
        int8 = LiteRTRuntime.from_directory(directory, metadata, "int8")
        float_ = LiteRTRuntime.from_directory(directory, metadata, "none")
        details = int8._interpreter.get_tensor_details()
        assert sum(d["dtype"] == np.int8 for d in details) > len(details) / 2
        quantised, reference = int8(photos), float_(photos)
        assert reference.keys() == quantised.keys()
        assert np.max(np.abs(quantised["leaf"] - reference["leaf"])) < 0.05
        agree = np.mean(quantised["leaf"].argmax(1) == reference["leaf"].argmax(1))
        assert agree >= 0.9
        np.testing.assert_allclose(quantised["leaf"].sum(1), 1.0, atol=0.05)

    def test_a_classifier_serves_the_int8_flat_buffer(
        self, exported: tuple[Path, dict[str, Any]], photos: NDArray[np.uint8]
    ) -> None:
        """A classifier running the int8 flat buffer gives a prediction per photo, on a path
        of the model's vocabulary."""
        directory, _ = exported
        keras = Classifier.load(directory, runtime="keras")
        runtime = LiteRTRuntime.from_directory(directory, keras.metadata, "int8")
        classifier = Classifier(keras.model, keras.metadata, keras.truncated, runtime=runtime)
        predictions = classifier.classify(list(photos))
        leaves = set(keras.vocabulary.leaves)
        assert len(photos) == len(predictions)
        assert all(p.leaf_id in leaves for p in predictions)

    def test_dynamic_range_flat_buffer_runs(
        self, exported: tuple[Path, dict[str, Any]], photos: NDArray[np.uint8]
    ) -> None:
        """The dynamic-range flat buffer runs and stays close to the float one."""
        directory, _ = exported
        metadata = _metadata(directory)
        dynamic = LiteRTRuntime.from_directory(directory, metadata, "dynamic")(photos)
        reference = LiteRTRuntime.from_directory(directory, metadata, "none")(photos)
        assert np.max(np.abs(dynamic["leaf"] - reference["leaf"])) < 0.1


class TestPickDefault:
    @pytest.mark.parametrize(
        ("variants", "keras_accuracy", "expected"),
        [
            # quantised accuracy unknown: float
            ({"none": {"images_per_s": 70}, "int8": {"images_per_s": 250}}, None, "none"),
            # int8 faster and 0.4 points down: int8
            (
                {
                    "none": {"images_per_s": 70, "validation": {"accuracy": 0.900}},
                    "int8": {"images_per_s": 250, "validation": {"accuracy": 0.896}},
                },
                0.900,
                "int8",
            ),
            # int8 faster but 0.6 points down: float
            (
                {
                    "none": {"images_per_s": 70, "validation": {"accuracy": 0.900}},
                    "int8": {"images_per_s": 250, "validation": {"accuracy": 0.894}},
                },
                0.900,
                "none",
            ),
            # dynamic as accurate but slower than float: float
            (
                {
                    "none": {"images_per_s": 70, "validation": {"accuracy": 0.9}},
                    "dynamic": {"images_per_s": 30, "validation": {"accuracy": 0.9}},
                },
                0.9,
                "none",
            ),
            # both qualify: the faster
            (
                {
                    "none": {"images_per_s": 70},
                    "dynamic": {"images_per_s": 90, "validation": {"accuracy": 0.9}},
                    "int8": {"images_per_s": 250, "validation": {"accuracy": 0.9}},
                },
                0.9,
                "int8",
            ),
        ],
    )
    def test_a_quantised_model_is_the_default_only_when_faster_and_accurate(
        self, variants: dict[str, dict[str, Any]], keras_accuracy: float | None, expected: str
    ) -> None:
        """The default is the fastest flat buffer among the float one and the quantised ones
        that lose at most 0.5 points of measured validation accuracy."""
        assert expected == pick_default(variants, keras_accuracy)[0]


class TestSelection:
    @pytest.mark.parametrize(
        ("requested", "gpu", "flat_buffer", "expected"),
        [
            ("auto", False, True, "litert"),
            ("auto", True, True, "keras"),
            ("auto", False, False, "keras"),
            ("keras", False, True, "keras"),
            ("litert", True, True, "litert"),
        ],
    )
    def test_the_runtime_follows_the_rule(
        self,
        exported: tuple[Path, dict[str, Any]],
        plain_dir: Path,
        requested: str,
        gpu: bool,
        flat_buffer: bool,
        expected: str,
    ) -> None:
        """auto takes the flat buffer on a CPU, Keras on a GPU or without a flat buffer;
        keras and litert are obeyed; the choice and its reason are logged."""
        directory = exported[0] if flat_buffer else plain_dir
        with capture_logs() as logs:
            classifier = Classifier.load(directory, runtime=requested, gpu=gpu)  # type: ignore[arg-type]
        chosen = [e for e in logs if e["event"] == "runtime_selected"]
        assert expected == classifier.runtime.name
        assert [(requested, expected)] == [(e["requested"], e["runtime"]) for e in chosen]
        assert chosen[0]["reason"]

    def test_litert_without_a_flat_buffer_is_refused(self, plain_dir: Path) -> None:
        """Asking for litert on a directory without a flat buffer says how to make one."""
        with pytest.raises(ModelError, match="enrich export-litert"):
            Classifier.load(plain_dir, runtime="litert")

    def test_an_unknown_runtime_is_refused(self, plain_dir: Path) -> None:
        """A runtime name outside auto, keras and litert is refused, quoting it."""
        with pytest.raises(ModelError, match="'tpu'"):
            Classifier.load(plain_dir, runtime="tpu")  # type: ignore[arg-type]

    def test_the_service_serves_the_runtime_enrich_runtime_names(
        self, exported: tuple[Path, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """ENRICH_RUNTIME reaches the service's classifier; a value outside the three is a
        configuration error naming the variable."""
        from service.app import Service

        monkeypatch.delenv("REDIS_URL", raising=False)
        for name in ("keras", "litert"):
            monkeypatch.setenv("ENRICH_RUNTIME", name)
            settings = load_settings(model_dir=exported[0], metrics_port=0)
            assert name == settings.runtime
            assert name == Service(settings, http=False).classifier.runtime.name
        monkeypatch.setenv("ENRICH_RUNTIME", "tpu")
        with pytest.raises(ConfigError, match="ENRICH_RUNTIME"):
            load_settings()

    def test_enrich_inference_threads_sets_the_interpreters_threads(
        self, exported: tuple[Path, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """ENRICH_INFERENCE_THREADS gives the LiteRT interpreter that many threads; 0, the
        default, gives it every core this process may use; a negative count is refused."""
        from model.runtime import cpu_threads
        from service.app import Service

        monkeypatch.delenv("REDIS_URL", raising=False)
        monkeypatch.setenv("ENRICH_RUNTIME", "litert")
        for threads, expected in ((1, 1), (3, 3), (0, cpu_threads())):
            monkeypatch.setenv("ENRICH_INFERENCE_THREADS", str(threads))
            settings = load_settings(model_dir=exported[0], metrics_port=0)
            described = Service(settings, http=False).classifier.runtime.describe()
            assert expected == described["threads"]
        monkeypatch.setenv("ENRICH_INFERENCE_THREADS", "-1")
        with pytest.raises(ConfigError, match="ENRICH_INFERENCE_THREADS"):
            load_settings()


class TestCommand:
    def test_export_litert_calibrates_on_train_and_measures_validation(
        self, plain_dir: Path, shared_data: Path, taxonomy_file: Path, tmp_path: Path
    ) -> None:
        """`enrich export-litert --quantize int8 --labels --images` calibrates on the train
        rows, measures every flat buffer and Keras on the validation rows, and prints them."""
        from click.testing import CliRunner

        from service.cli import cli

        source = shared_data / "product-images"
        lines = (source / "labels.csv").read_text().splitlines()
        train = [line for line in lines[1:] if ",train," in line][:40]
        validation = [line for line in lines[1:] if ",validation," in line][:24]
        labels = tmp_path / "labels.csv"
        labels.write_text("\n".join([lines[0], *train, *validation]) + "\n")
        copy = _copy(plain_dir, tmp_path)
        args = ["export-litert", str(copy), "--quantize", "int8", "--labels", str(labels)]
        args += ["--images", str(source), "--taxonomy", str(taxonomy_file)]
        args += ["--calibration-count", "16"]
        result = CliRunner().invoke(cli, args, catch_exceptions=False)
        assert 0 == result.exit_code, result.output
        entry = _metadata(copy)["litert"]
        assert 16 == entry["calibration"]["images"]
        assert "validation" == entry["probe"]["source"]
        assert 24 == entry["keras"]["validation"]["images"]
        assert {"none", "int8"} == set(entry["files"])
        assert all(24 == f["validation"]["images"] for f in entry["files"].values())
        assert "| model.int8.tflite |" in result.output
        assert f"default: {FILES[entry['default']]} ({entry['default_reason']})" in result.output

    def test_int8_without_labels_is_a_usage_error(self, plain_dir: Path) -> None:
        """--quantize int8 without labelled images to calibrate on is refused before work."""
        from click.testing import CliRunner

        from service.cli import cli

        result = CliRunner().invoke(cli, ["export-litert", str(plain_dir), "--quantize", "int8"])
        assert 2 == result.exit_code
        assert "needs --labels" in result.output
