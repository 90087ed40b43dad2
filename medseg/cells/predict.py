"""Cell probabilities for an image of any size: the engine Predictor behind overlap-tile inference.

Both architectures run through :func:`medseg.engine.tiling.overlap_tile_predict`: the
valid-convolution U-Net needs it (its output is smaller than its input), and for the padded
BasicUNet it is what keeps tiled output equal to whole-image output. MONAI's
``sliding_window_inference`` would blend overlapping windows whose edges saw the net's zero
padding, which differs from a whole-image pass near every window border.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from medseg.cells.model import CellModelConfig, ModelConfig, model_align, model_margin, valid_tile
from medseg.engine.tiling import overlap_tile_predict

if TYPE_CHECKING:
    import torch

    from medseg.engine.predictor import Predictor


def make_predictor(
    model: torch.nn.Module,
    *,
    device: str | torch.device = "auto",
    amp: str = "auto",
    postprocess: str | Callable[[Any], Any] = "softmax",
    runtime: str | None = None,
    config: ModelConfig | None = None,
) -> Predictor:
    """The engine Predictor for a cell model: channels_last (CPU and CUDA), softmax probabilities.

    A net with a regression channel (the ``dist`` target) needs
    ``postprocess=medseg.cells.targets.postprocess_for(kind)``: softmax over the class channels only.

    ``runtime`` None: --runtime / auto. With ``config`` OpenVINO converts at construction (on a
    small valid tile; batch and tile size stay dynamic), else at the first batch.
    """
    from medseg.engine.predictor import Predictor

    example = None
    if config is not None:
        edge = valid_tile(config, 2 * model_margin(config) + 16)
        example = (1, int(config.in_channels), edge, edge)
    return Predictor(
        model,
        device=device,
        amp=amp,
        channels_last=True,
        postprocess=postprocess,
        runtime=runtime,
        example_shape=example,
    )


def predict_image(
    predictor: Predictor, config: ModelConfig, image: np.ndarray, *, tile: int = 512, batch_size: int = 4
) -> np.ndarray:
    """Class probabilities (K, H, W) for a normalised (H, W) or (C, H, W) image, by overlap-tile.

    The tile is grown so that its output core is ``tile`` px (or the whole image when smaller), not a
    core between margins: for the valid-convolution U-Net (92 px margins) a 512^2 image is one 700^2
    tile (0.49 Mpx through the net) instead of four 524^2 tiles (1.10 Mpx), and a 128^2 image one
    316^2 tile instead of a 524^2 one; the padded nets' context margins (264 px for pspnet) likewise.
    """
    core = min(tile, max(image.shape[-2:]))
    need = 2 * model_margin(config) + core
    # the U-Nets' output does not depend on the tile (pooling grids aligned): a small image (or the
    # 1/2-scale pass of --diameter auto) gets a tile just big enough; the padded archs' global
    # context (SE, ASPP, pyramid pooling) sees the whole tile, so they keep at least ``tile``
    tile = need if isinstance(config, CellModelConfig) else max(tile, need)
    return overlap_tile_predict(
        predictor,
        image,
        tile=valid_tile(config, tile),
        margin=model_margin(config),
        align=model_align(config),
        batch_size=batch_size,
    )
