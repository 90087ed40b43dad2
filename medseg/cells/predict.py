"""Glue between a torch cell model and the NumPy overlap-tile engine."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from medseg.cells.model import CellModelConfig, model_align, model_margin, valid_tile
from medseg.engine.runtime import autocast
from medseg.engine.tiling import overlap_tile_predict


@dataclass
class TorchTilePredictor:
    """Callable (N, C, h, w) float32 -> (N, K, h', w') softmax probabilities (float32, CPU).

    On CUDA the batch goes through pinned memory, channels_last and autocast (AMP).
    """

    model: torch.nn.Module
    device: torch.device
    amp_dtype: torch.dtype | None = None
    channels_last: bool = False
    softmax: bool = True

    def __post_init__(self) -> None:
        self.model.eval().to(self.device)
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)

    @torch.inference_mode()
    def __call__(self, batch: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))
        if self.device.type == "cuda":
            x = x.pin_memory().to(self.device, non_blocking=True)
        else:
            x = x.to(self.device)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(self.device, self.amp_dtype):
            y = self.model(x)
        y = y.float()
        if self.softmax:
            y = torch.softmax(y, dim=1)
        return y.cpu().numpy()


def predict_image(model: torch.nn.Module, config: CellModelConfig, image: np.ndarray, *, device: torch.device,
                  tile: int = 512, batch_size: int = 4, amp_dtype: torch.dtype | None = None,
                  softmax: bool = True) -> np.ndarray:
    """Class probabilities (K, H, W) for a normalised (H, W) or (C, H, W) image, by overlap-tile."""
    channels_last = device.type == "cuda"
    predictor = TorchTilePredictor(model, device, amp_dtype=amp_dtype, channels_last=channels_last,
                                   softmax=softmax)
    size = valid_tile(config, tile)
    return overlap_tile_predict(predictor, image, tile=size, margin=model_margin(config),
                                align=model_align(config), batch_size=batch_size)
