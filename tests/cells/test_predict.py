"""Cell inference through the engine Predictor: overlap-tile output == one whole-image pass for
both architectures (valid unet2015 and padded BasicUNet), in channels_last, with softmax."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medseg.cells.model import (
    CellModelConfig,
    build_model,
    model_align,
    model_margin,
    unet2015_valid_input,
    valid_tile,
)
from medseg.cells.predict import make_predictor, predict_image
from medseg.engine.tiling import plan_tiles


def _whole_image(model, image, margin, valid_size):
    """Reference: mirror-pad by the margin (plus extra at bottom/right up to a size the net
    accepts), one plain forward pass (contiguous, fp32), crop back to the image."""
    h, w = image.shape
    ph, pw = valid_size(h + 2 * margin), valid_size(w + 2 * margin)
    padded = np.pad(image, ((margin, ph - h - margin), (margin, pw - w - margin)), mode="reflect")
    with torch.no_grad():
        y = model(torch.from_numpy(padded)[None, None].float().contiguous())[0].numpy()
    shrink = (ph - y.shape[1]) // 2
    off = margin - shrink
    return y[:, off : off + h, off : off + w]


def _model(arch):
    torch.manual_seed(0)
    config = CellModelConfig(arch=arch, base_channels=4)
    model = build_model(config=config).eval()
    if arch == "basicunet":  # non-trivial BN running stats so eval-mode BN is not identity
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return config, model


@pytest.mark.parametrize(
    "arch,shape", [("unet2015", (150, 203)), ("unet2015", (61, 47)), ("basicunet", (150, 203))]
)
def test_overlap_tile_equals_whole_image(arch, shape):
    torch.set_num_threads(2)
    config, model = _model(arch)
    margin = model_margin(config)
    image = np.random.default_rng(3).random(shape).astype(np.float32)
    tile = valid_tile(config, 2 * margin + 60)
    valid = unet2015_valid_input if arch == "unet2015" else (lambda s: -(-s // 16) * 16)
    ref = _whole_image(model, image, margin, valid)
    predictor = make_predictor(model, device="cpu", postprocess="float")
    assert predictor.channels_last and predictor.amp_name == "fp32"  # channels_last on CPU, no AMP
    tiled = predict_image(predictor, config, image, tile=tile, batch_size=3)
    assert (
        len(plan_tiles(shape, tile=tile, margin=margin, align=model_align(config)).origins) > 1
        or min(shape) < 70
    )
    np.testing.assert_allclose(tiled, ref, rtol=1e-4, atol=1e-4 * float(np.abs(ref).max()))
    if arch == "unet2015":  # the default post-processing: class probabilities
        probs = predict_image(make_predictor(model, device="cpu"), config, image, tile=tile, batch_size=2)
        np.testing.assert_allclose(probs, torch.softmax(torch.from_numpy(ref), 0).numpy(), atol=1e-5)


def test_tile_grows_to_cover_the_image_in_one_pass():
    """The tile is grown so that its core is ``tile`` px (or the whole image): a 512^2 image is one
    700^2 tile of the valid-convolution U-Net, not four 524^2 ones; a larger image uses cores of
    ``tile`` px. The predictor here crops the margin and returns the centre, so any tiling must give
    back the image itself."""
    from medseg.cells.model import model_margin

    config = CellModelConfig(arch="unet2015", base_channels=8, batch_norm=True)
    m = model_margin(config)
    seen = []

    def centre(batch):
        seen.append(batch.shape)
        return batch[:, :, m:-m, m:-m]

    image = np.random.default_rng(0).random((512, 512)).astype(np.float32)
    out = predict_image(centre, config, image, tile=512)
    np.testing.assert_array_equal(out[0], image)
    assert [s[0] for s in seen] == [1] and seen[0][-2:] == (700, 700)
    seen.clear()
    big = np.random.default_rng(1).random((1100, 900)).astype(np.float32)
    np.testing.assert_array_equal(predict_image(centre, config, big, tile=512)[0], big)
    assert sum(s[0] for s in seen) == 6 and {s[-1] for s in seen} == {700}  # 3 x 2 cores of 516 px
