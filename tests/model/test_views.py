"""Tests of model.views: the fixed augmentation views cached for transfer learning."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest

from model.errors import ModelError
from model.feature_cache import FeatureCache
from model.transfer import _cached_features
from model.views import VIEWS, ZOOM_KEEP, check_views, view, view_settings, zoom


def _images(count: int = 3, size: int = 16) -> np.ndarray:
    return np.random.default_rng(7).integers(0, 255, (count, size, size, 3), dtype=np.uint8)


def test_views_zero_and_one_are_the_image_and_its_mirror() -> None:
    """View 0 is the batch itself and view 1 flips every image left to right."""
    images = _images()
    np.testing.assert_array_equal(view(images, 0), images)
    np.testing.assert_array_equal(view(images, 1), images[:, :, ::-1, :])


def test_zoom_enlarges_the_centre_and_keeps_shape_and_dtype() -> None:
    """A centred square grows by 1 / ZOOM_KEEP; the batch keeps its shape and uint8 pixels."""
    images = np.zeros((2, 64, 64, 3), dtype=np.uint8)
    images[:, 24:40, 24:40, :] = 255  # a 16-pixel white square in the centre
    zoomed = zoom(images)
    assert zoomed.shape == images.shape
    assert zoomed.dtype == np.uint8
    side = int((zoomed[0, 32, :, 0] > 127).sum())
    assert side == pytest.approx(16 / ZOOM_KEEP, abs=1.5)
    assert side > 16
    assert (zoomed[:, 0, 0, :] == 0).all()  # the corners stay background


def test_view_three_is_the_mirror_of_view_two() -> None:
    """The fourth view is the zoom's mirror image, and differs from the plain mirror."""
    images = _images(size=32)
    np.testing.assert_array_equal(view(images, 3), view(images, 2)[:, :, ::-1, :])
    assert not np.array_equal(view(images, 3), view(images, 1))


def test_an_empty_batch_has_every_view() -> None:
    """No images in, no images out, for each view."""
    empty = np.zeros((0, 16, 16, 3), dtype=np.uint8)
    for number in range(len(VIEWS)):
        assert view(empty, number).shape == empty.shape


@pytest.mark.parametrize(("count", "ok"), [(0, False), (1, True), (4, True), (5, False)])
def test_check_views_accepts_one_to_four(count: int, ok: bool) -> None:
    """One to four views are valid; anything else is a ModelError naming the range."""
    if ok:
        assert check_views(count) == count
    else:
        with pytest.raises(ModelError, match="1 to 4"):
            check_views(count)


def test_an_unknown_view_number_is_a_model_error() -> None:
    """Asking for a view that does not exist says which exist."""
    with pytest.raises(ModelError, match="no view 4"):
        view(_images(), 4)


def test_zoom_views_carry_the_zoom_in_their_cache_key() -> None:
    """Changing the zoom must invalidate the cached zoom views, not the plain ones."""
    assert view_settings(0) == {"view": 0}
    assert view_settings(1) == {"view": 1}
    assert view_settings(2) == {"view": 2, "zoom": ZOOM_KEEP}
    assert view_settings(3)["zoom"] == ZOOM_KEEP


def test_four_cached_views_are_each_computed_once(tmp_path: Path) -> None:
    """Every view's features are those of its pixels, and a second pass reads them all."""
    inputs = keras.Input(shape=(16, 16, 3))
    model = keras.Model(inputs, keras.layers.Flatten()(inputs))
    images = _images()
    cache = FeatureCache(tmp_path / "cache")
    settings = {"backbone": "flatten"}
    features, hits = _cached_features(
        model, images, 4, cache=cache, settings=settings, cut=None, progress=False
    )
    assert features.shape == (4, 3, 16 * 16 * 3)
    assert hits == 0
    for number in range(4):
        expected = view(images, number).reshape(3, -1).astype("float32")
        np.testing.assert_allclose(features[number], expected)
    again, hits = _cached_features(
        model, images, 4, cache=cache, settings=settings, cut=None, progress=False
    )
    assert hits == 4 * len(images)
    np.testing.assert_array_equal(again, features)
