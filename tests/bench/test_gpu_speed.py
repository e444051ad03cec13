"""bench.gpu_speed: the device machine's one script, run here on the CPU with a tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import keras
import numpy as np
import pytest

from bench.gpu_speed import _host, main, with_policy
from model.classifier import IMAGE_MODALITY, read_model_directory
from tests.support.models import tiny_model


@pytest.fixture(scope="module")
def model_dir(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_model(shared_data, tmp_path_factory.mktemp("gpu") / "model", "tiny-gpu")


def test_a_mixed_policy_rebuilds_every_layer_with_the_same_weights(model_dir: Path) -> None:
    """with_policy puts every layer that computes (not the nested models holding them) under
    the policy, keeps every weight, and answers close to the float32 model."""
    model, _, _ = read_model_directory(model_dir, taxonomy=None, modality=IMAGE_MODALITY)
    mixed = with_policy(model, "mixed_bfloat16")
    computing = [layer for layer in mixed._flatten_layers(include_self=False)
                 if layer.weights and not isinstance(layer, keras.Model)]  # fmt: skip
    assert computing
    policies = {layer.dtype_policy.name for layer in computing}
    assert policies == {"mixed_bfloat16"}
    for ours, theirs in zip(model.get_weights(), mixed.get_weights(), strict=True):
        np.testing.assert_array_equal(ours, theirs)
    images = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    full, half = _host(model(images, training=False)), _host(mixed(images, training=False))
    assert set(full) == set(half)
    for name, values in full.items():
        assert np.abs(values - half[name]).max() < 0.05, name
    assert with_policy(model, "float32") is model


def test_the_script_measures_every_policy_and_batch_and_decoding(
    model_dir: Path, tmp_path: Path
) -> None:
    """One run writes images/s for each policy x batch, the leaf agreement with float32,
    and the decode rates, as JSON and as a Markdown page."""
    output = tmp_path / "out" / "gpu_speed.json"
    main([str(model_dir), "--batches", "2", "8", "--policies", "float32", "mixed_bfloat16",
          "--rounds", "1", "--decode-repeat", "1", "--output", str(output)])  # fmt: skip
    report = json.loads(output.read_text())
    rows = report["inference"]
    assert [(r["policy"], r["batch"]) for r in rows] == [
        ("float32", 2), ("float32", 8), ("mixed_bfloat16", 2), ("mixed_bfloat16", 8)
    ]  # fmt: skip
    assert all(r["images_per_s"] > 0 for r in rows)
    assert all(r["leaf_agreement_with_float32"] == 1.0 for r in rows if r["policy"] == "float32")
    assert report["decode"]["one_core_images_per_s"] > 0
    assert report["decode"]["all_cores_images_per_s"] > 0
    assert "| mixed_bfloat16 | 8 |" in output.with_suffix(".md").read_text()


def test_a_batch_below_one_is_refused(model_dir: Path) -> None:
    """--batches 0 stops with a usage error before anything is measured."""
    with pytest.raises(SystemExit) as stopped:
        main([str(model_dir), "--batches", "0"])
    assert stopped.value.code == 2
