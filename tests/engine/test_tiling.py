"""Overlap-tile engine: predictors of known output, mirroring, and real nets vs whole-image passes."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from medseg.engine.tiling import extract_tile, overlap_tile_predict, plan_tiles

SIZES = [(1, 1), (7, 300), (97, 131), (256, 256), (300, 65)]


@pytest.mark.parametrize("shape", SIZES)
def test_padded_predictor_plus_one(shape):
    rng = np.random.default_rng(0)
    image = rng.normal(size=(2, *shape)).astype(np.float32)
    calls = []

    def predictor(batch):
        calls.append(batch.shape)
        return batch + 1

    out = overlap_tile_predict(predictor, image, tile=64, margin=8, align=16, batch_size=3)
    assert out.shape == image.shape
    np.testing.assert_array_equal(out, image + 1)
    assert all(c[0] <= 3 and c[2:] == (64, 64) for c in calls)


@pytest.mark.parametrize("shape", SIZES)
def test_valid_predictor_shrinks_by_margin(shape):
    """A valid 'net' returning the centre crop of 2*x: output must be 2*image exactly."""
    rng = np.random.default_rng(1)
    image = rng.normal(size=shape).astype(np.float32)
    m = 10

    def predictor(batch):
        return 2 * batch[:, :, m:-m, m:-m]

    out = overlap_tile_predict(predictor, image, tile=(50, 61), margin=m, batch_size=2)
    assert out.shape == (1, *shape)
    np.testing.assert_array_equal(out[0], 2 * image)


@pytest.mark.parametrize("shape", [(5, 9), (40, 77), (129, 64)])
def test_border_context_is_mirrored(shape):
    """A valid 9x9 box filter sees mirrored context at the border, like np.pad(mode='reflect')."""
    rng = np.random.default_rng(2)
    image = rng.random(shape).astype(np.float32)
    k = 4

    def predictor(batch):
        smoothed = ndimage.uniform_filter(batch.astype(np.float64), size=(1, 1, 2 * k + 1, 2 * k + 1))
        return smoothed[:, :, k:-k, k:-k].astype(np.float32)

    out = overlap_tile_predict(predictor, image, tile=32, margin=k, batch_size=5)[0]
    padded = np.pad(image.astype(np.float64), k, mode="reflect")
    expected = ndimage.uniform_filter(padded, size=2 * k + 1)[k:-k, k:-k]
    np.testing.assert_allclose(out, expected, atol=1e-5)


def test_extract_tile_mirrors_like_numpy_pad_at_any_distance():
    image = np.arange(5 * 7, dtype=np.float32).reshape(5, 7)
    for mode in ("reflect", "symmetric"):
        padded = np.pad(image, 23, mode=mode)
        for y0, x0 in ((-23, -23), (-3, 2), (4, 6), (-23, 10), (10, -20)):
            tile = extract_tile(image, y0, x0, (9, 11), mode=mode)
            np.testing.assert_array_equal(tile, padded[y0 + 23 : y0 + 32, x0 + 23 : x0 + 34])


def test_extract_tile_inside_is_a_view_copy():
    image = np.arange(100, dtype=np.float32).reshape(10, 10)
    np.testing.assert_array_equal(extract_tile(image, 2, 3, (4, 5)), image[2:6, 3:8])


def test_plan_aligned_and_covering():
    plan = plan_tiles((1000, 333), tile=252, margin=92, align=16)
    assert plan.core == (68, 68) and plan.step == (64, 64)
    ys = sorted({o[0] for o in plan.origins})
    assert all(y % 16 == 0 for y in ys)
    assert ys[-1] + 68 >= 1000 and ys[-2] + 68 < 1000
    with pytest.raises(ValueError):
        plan_tiles((10, 10), tile=20, margin=10)


def test_bad_predictor_shape_raises():
    with pytest.raises(ValueError, match="does not fit"):
        overlap_tile_predict(lambda b: b[:, :, :3, :3], np.zeros((40, 40), np.float32), tile=16, margin=2)


def test_writes_into_preallocated_memmap(tmp_path):
    """Large outputs can go to a memory-mapped array instead of RAM."""
    image = np.random.default_rng(4).random((130, 70)).astype(np.float32)
    out = np.lib.format.open_memmap(tmp_path / "out.npy", mode="w+", dtype=np.float32, shape=(1, 130, 70))
    result = overlap_tile_predict(lambda b: b * 3, image, tile=48, margin=4, out=out)
    assert result is out
    np.testing.assert_allclose(np.load(tmp_path / "out.npy")[0], image * 3, rtol=1e-6)
