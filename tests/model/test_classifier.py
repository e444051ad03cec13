"""Export and load: a model directory verified on load, predicting exactly like the original."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from model.build import build_model
from model.classifier import Classifier, predict_outputs, save_model
from model.errors import ModelError
from model.taxonomy import Taxonomy, TruncatedTaxonomy
from model.vocabulary import Vocabulary

# Dresses and Shirts & Tops (depth 3), Shoes (depth 2), Apples (depth 5, truncated to 4).
LABELS = (2271, 212, 187, 6566)


@pytest.fixture(scope="module")
def taxonomy(taxonomy_file: Path) -> Taxonomy:
    return Taxonomy.load(taxonomy_file)


@pytest.fixture(scope="module")
def truncated(taxonomy: Taxonomy) -> TruncatedTaxonomy:
    return taxonomy.truncate(4)


@pytest.fixture(scope="module", params=["multi", "leaf"])
def exported(
    request: pytest.FixtureRequest, truncated: TruncatedTaxonomy, tmp_path_factory: Any
) -> tuple[Any, Path, Vocabulary]:
    heads = request.param
    vocabulary = Vocabulary.from_labels(truncated, LABELS)
    model = build_model(
        "tiny", vocabulary.sizes, heads=heads, leaf_size=len(vocabulary.leaves), image_size=32
    )
    directory = tmp_path_factory.mktemp(f"model-{heads}")
    save_model(
        model,
        directory,
        name="test-model",
        backbone="tiny",
        image_size=32,
        heads=heads,
        truncated=truncated,
        vocabulary=vocabulary,
        level_weights=None,
        training={"parameters": model.count_params()},
        metrics={},
    )
    return model, directory, vocabulary


def _images(count: int, size: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, size, size, 3), dtype=np.uint8)


class TestExportLoad:
    def test_loaded_model_predicts_identically(
        self, exported: tuple[Any, Path, Vocabulary], taxonomy: Taxonomy
    ) -> None:
        """The loaded classifier's head outputs equal the original model's exactly."""
        model, directory, _ = exported
        images = _images(6)
        classifier = Classifier.load(directory, taxonomy=taxonomy)
        expected = predict_outputs(model, images, batch_size=4)
        actual = classifier.predict_raw(images)
        assert expected.keys() == actual.keys()
        for head in expected:
            np.testing.assert_array_equal(expected[head], actual[head])

    def test_metadata_names_the_model(self, exported: tuple[Any, Path, Vocabulary]) -> None:
        """metadata.json holds identity, input size, taxonomy and the vocabulary."""
        _, directory, vocabulary = exported
        metadata = json.loads((directory / "metadata.json").read_text())
        assert "test-model" == metadata["name"]
        assert 16 == len(metadata["version"])
        assert 32 == metadata["input_size"]
        assert {"version": "2021-09-21", "depth": 4} == {
            k: metadata["taxonomy"][k] for k in ("version", "depth")
        }
        assert vocabulary.to_json() == metadata["vocabulary"]

    def test_loads_without_a_taxonomy_file(self, exported: tuple[Any, Path, Vocabulary]) -> None:
        """Without the taxonomy file the classifier decodes with the paths stored in metadata."""
        _, directory, _ = exported
        predictions = Classifier.load(directory).classify(list(_images(3)))
        assert 3 == len(predictions)
        assert all(p.path_string.startswith(("Apparel", "Food")) for p in predictions)

    def test_changed_file_is_refused(
        self, exported: tuple[Any, Path, Vocabulary], tmp_path: Path
    ) -> None:
        """A metadata file edited after export fails the checksum with its name."""
        _, directory, _ = exported
        copy = tmp_path / "copy"
        copy.mkdir()
        for item in directory.iterdir():
            (copy / item.name).write_bytes(item.read_bytes())
        metadata = copy / "metadata.json"
        metadata.write_text(metadata.read_text().replace("test-model", "other-model"))
        with pytest.raises(ModelError, match=r"checksum mismatch for .*metadata\.json"):
            Classifier.load(copy)

    def test_other_taxonomy_is_refused(self, exported: tuple[Any, Path, Vocabulary]) -> None:
        """A taxonomy where a vocabulary category has another path is refused, naming it."""
        _, directory, _ = exported
        text = (
            "# Google_Product_Taxonomy_Version: 2021-09-21\n"
            "166 - Apparel & Accessories\n"
            "412 - Food, Beverages & Tobacco\n"
        )
        other = Taxonomy.parse(text, source="other.txt")
        with pytest.raises(ModelError, match="is not in the taxonomy given"):
            Classifier.load(directory, taxonomy=other)

    def test_missing_directory_is_refused(self, tmp_path: Path) -> None:
        """A path that is not a model directory is refused with a clear message."""
        with pytest.raises(ModelError, match="does not exist"):
            Classifier.load(tmp_path / "nowhere")
        with pytest.raises(ModelError, match=r"checksums\.sha256 is missing"):
            Classifier.load(tmp_path)


class TestClassify:
    def test_any_size_and_batch(
        self, exported: tuple[Any, Path, Vocabulary], taxonomy: Taxonomy
    ) -> None:
        """Images of any size are resized; batches of 0, 1 and 7 give that many predictions."""
        _, directory, vocabulary = exported
        classifier = Classifier.load(directory, taxonomy=taxonomy)
        assert [] == classifier.classify([])
        one = classifier.classify([_images(1, size=50)[0]])
        mixed = [_images(1, size=s, seed=s)[0] for s in (10, 32, 64, 100, 33, 32, 200)]
        assert 1 == len(one)
        predictions = classifier.classify(mixed)
        assert 7 == len(predictions)
        for prediction in predictions:
            assert prediction.leaf_id in vocabulary.leaves
            assert tuple(n.id for n in prediction.path) == classifier.truncated.path_ids(
                prediction.category_id
            )

    def test_same_image_same_answer_in_any_batch(
        self, exported: tuple[Any, Path, Vocabulary], taxonomy: Taxonomy
    ) -> None:
        """An image's prediction does not depend on the batch it is in."""
        _, directory, _ = exported
        classifier = Classifier.load(directory, taxonomy=taxonomy)
        images = list(_images(5))
        alone = classifier.classify(images[2:3])[0]
        together = classifier.classify(images)[2]
        assert alone.leaf_id == together.leaf_id
        assert alone.confidence == pytest.approx(together.confidence, abs=1e-5)

    def test_wrong_array_is_refused(
        self, exported: tuple[Any, Path, Vocabulary], taxonomy: Taxonomy
    ) -> None:
        """A float or grey array is refused with its dtype and shape."""
        _, directory, _ = exported
        classifier = Classifier.load(directory, taxonomy=taxonomy)
        with pytest.raises(ModelError, match=r"uint8 RGB array, got float64 \(8, 8\)"):
            classifier.classify([np.zeros((8, 8))])
