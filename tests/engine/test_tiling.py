"""Overlap-tile engine: predictors of known output, mirroring, and real nets vs whole-image passes."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from medseg.engine.tiling import extract_tile, mirror_index, overlap_tile_predict, plan_tiles

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


def test_mirror_index_matches_numpy_pad():
    for size in (1, 2, 5):
        a = np.arange(size)
        for mode in ("reflect", "symmetric"):
            expected = np.pad(a, 23, mode=mode)
            got = a[mirror_index(np.arange(-23, size + 23), size, mode)]
            np.testing.assert_array_equal(got, expected)


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


# --- real nets: overlap-tile == one whole-image pass ---------------------------------------------

def _whole_image(model, image, margin, valid_size):
    """Reference: mirror-pad by the margin (plus extra at bottom/right up to a size the net
    accepts), one forward pass, crop back to the image."""
    import torch

    h, w = image.shape
    ph, pw = valid_size(h + 2 * margin), valid_size(w + 2 * margin)
    padded = np.pad(image, ((margin, ph - h - margin), (margin, pw - w - margin)), mode="reflect")
    with torch.no_grad():
        y = model(torch.from_numpy(padded)[None, None].float())[0].numpy()
    shrink = (ph - y.shape[1]) // 2
    off = margin - shrink
    return y[:, off:off + h, off:off + w]


@pytest.mark.parametrize("arch", ["unet2015", "basicunet"])
@pytest.mark.parametrize("shape", [(150, 203), (61, 47)])
def test_net_overlap_tile_equals_whole_image(arch, shape):
    import torch

    from medseg.cells.model import (
        CellModelConfig,
        build_model,
        model_align,
        model_margin,
        unet2015_valid_input,
        valid_tile,
    )
    from medseg.cells.predict import TorchTilePredictor

    torch.manual_seed(0)
    torch.set_num_threads(2)
    config = CellModelConfig(arch=arch, base_channels=4)
    model = build_model(config=config).eval()
    if arch == "basicunet":  # non-trivial BN running stats so eval-mode BN is not identity
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    margin = model_margin(config)
    image = np.random.default_rng(3).random(shape).astype(np.float32)
    tile = valid_tile(config, 2 * margin + 60)
    predictor = TorchTilePredictor(model, torch.device("cpu"), softmax=False)
    tiled = overlap_tile_predict(predictor, image, tile=tile, margin=margin, align=model_align(config),
                                 batch_size=3)
    if arch == "unet2015":
        ref = _whole_image(model, image, margin, unet2015_valid_input)
    else:
        ref = _whole_image(model, image, margin, lambda s: -(-s // 16) * 16)
    assert len(plan_tiles(shape, tile=tile, margin=margin, align=16).origins) > 1 or min(shape) < 70
    np.testing.assert_allclose(tiled, ref, rtol=1e-4, atol=1e-4 * float(np.abs(ref).max()))


def test_writes_into_preallocated_memmap(tmp_path):
    """Large outputs can go to a memory-mapped array instead of RAM."""
    image = np.random.default_rng(4).random((130, 70)).astype(np.float32)
    out = np.lib.format.open_memmap(tmp_path / "out.npy", mode="w+", dtype=np.float32, shape=(1, 130, 70))
    result = overlap_tile_predict(lambda b: b * 3, image, tile=48, margin=4, out=out)
    assert result is out
    np.testing.assert_allclose(np.load(tmp_path / "out.npy")[0], image * 3, rtol=1e-6)
