"""A 3-D region net beside the Havaei slice nets: MONAI's SegResNet (Myronenko 2018), issue 19.

Why a second kind of net: on the real validation cases the mean of the InputCascadeCNN's and a
SegResNet's region probabilities beats either net alone (docs/brain.md, "The two nets together").
The 3-D net predicts the three BraTS regions directly as sigmoid maps in the order
``models.REGION_ORDER`` (tumour core, whole tumour, enhancing tumour: MONAI's BraTS recipe); the slice
nets' five-class softmax is brought to the same regions by ``models.softmax_regions``, so any set of
brain nets averages in one space and :func:`regions_to_labels` turns the mean into nested labels.

Inference slides Gaussian-weighted windows of the size the weights record over the brain's bounding
box (:func:`sliding_window`, MONAI's ``sliding_window_inference`` rule and weights, tested equal to
it; own code because ``import monai`` costs 3.3 s of the 30 s per-case budget, see
:mod:`medseg.brain.segresnet`): GroupNorm statistics depend on the input size, so windows of the
validated size are used even when the whole brain would fit in one (docs/brain.md measured the
whole-box pass 0.02-0.07 Dice worse). Memory is bounded by one window plus the box's outputs.
A case whose voxel spacing differs from the training spacing by more than ``spacing.SPACING_TOLERANCE``
on any axis is resampled to it (linear, anti-aliased), and the probabilities are brought back.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from medseg.brain.models import N_MODALITIES, REGION_ORDER
from medseg.brain.spacing import resize_linear

if TYPE_CHECKING:
    from torch import nn

    from medseg.engine.predictor import Predictor

VOLUME_ARCHS = ("segresnet",)
REGION_THRESHOLD = 0.5  # a region is called where its (mean) probability exceeds this
__all__ = [
    "VOLUME_ARCHS",
    "Volume3DConfig",
    "build_segresnet",
    "predict_regions_volume",
    "regions_to_labels",
    "sliding_window",
]


@dataclass
class Volume3DConfig:
    """Enough to rebuild a 3-D region net and run it as it was validated (stored in the weights)."""

    arch: str = "segresnet"
    in_channels: int = N_MODALITIES
    out_channels: int = len(REGION_ORDER)
    init_filters: int = 8
    blocks_down: list[int] = field(default_factory=lambda: [1, 2, 2, 4])
    blocks_up: list[int] = field(default_factory=lambda: [1, 1, 1])
    roi: int = 96  # sliding-window edge in voxels at inference
    overlap: float = 0.25

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Volume3DConfig:
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})

    @property
    def divisor(self) -> int:
        """Input sizes must be multiples of this (one halving per down level after the first)."""
        return 2 ** (len(self.blocks_down) - 1)


def build_segresnet(*, config: Volume3DConfig) -> nn.Module:
    """SegResNet from its config (random weights; MONAI's parameter names, plain PyTorch)."""
    if config.arch not in VOLUME_ARCHS:
        raise ValueError(f"unknown 3-D architecture {config.arch!r}; choose from {', '.join(VOLUME_ARCHS)}")
    from medseg.brain.segresnet import SegResNet

    return SegResNet(
        in_channels=config.in_channels,
        out_channels=config.out_channels,
        init_filters=config.init_filters,
        blocks_down=tuple(config.blocks_down),
        blocks_up=tuple(config.blocks_up),
    )


def _window_starts(size: int, roi: int, overlap: float) -> list[int]:
    """Window origins along one axis, as MONAI's ``dense_patch_slices`` lays them out."""
    if roi >= size:
        return [0]
    step = max(int(roi * (1 - overlap)), 1)
    starts, start = [], 0
    while True:
        starts.append(min(start, size - roi))
        if start + roi >= size:
            return starts
        start += step


def _gaussian_weights(roi: tuple[int, ...]) -> np.ndarray:
    """MONAI's Gaussian importance map (sigma 0.125 x window per axis), floored at 1e-3."""
    w = np.ones((), np.float32)
    for n in roi:
        x = (np.arange(n) - (n - 1) / 2.0).astype(np.float32)
        w = np.multiply.outer(w, np.exp(x**2 / np.float32(-2 * (0.125 * n) ** 2)))
    return np.maximum(w, max(float(w.min()), 1e-3)).astype(np.float32)


def sliding_window(predictor, volume: np.ndarray, roi: tuple[int, ...], overlap: float) -> np.ndarray:
    """(K, z, y, x) outputs of ``predictor`` on Gaussian-blended windows of a (C, z, y, x) volume.

    ``predictor`` maps a (1, C, *roi) float32 array to (1, K, *roi) outputs (NumPy or a tensor); every
    window has the same shape, so a compiled runtime builds once. Each window must fit the volume.
    """
    import torch

    weights = _gaussian_weights(roi)
    out: np.ndarray | None = None
    norm = np.zeros(volume.shape[1:], np.float32)
    axes = [_window_starts(n, r, overlap) for n, r in zip(volume.shape[1:], roi)]
    for z in axes[0]:
        for y in axes[1]:
            for x in axes[2]:
                box = (slice(z, z + roi[0]), slice(y, y + roi[1]), slice(x, x + roi[2]))
                pred = predictor(np.ascontiguousarray(volume[(slice(None), *box)][None], np.float32))
                pred = pred.float().cpu().numpy() if isinstance(pred, torch.Tensor) else np.asarray(pred)
                if out is None:
                    out = np.zeros((pred.shape[1], *volume.shape[1:]), np.float32)
                out[(slice(None), *box)] += pred[0] * weights
                norm[box] += weights
    assert out is not None
    return out / norm


def regions_to_labels(regions: np.ndarray, threshold: float = REGION_THRESHOLD) -> np.ndarray:
    """Internal labels from (3, ...) region probabilities, nested as BraTS defines the regions.

    Whole tumour -> edema (2); inside it, core -> necrosis/core (1); inside it, enhancing (4).
    """
    tc, wt, et = regions > threshold
    out = np.zeros(wt.shape, np.uint8)
    out[wt] = 2
    out[tc & wt] = 1
    out[et & wt] = 4
    return out


def predict_regions_volume(
    predictor: Predictor,
    norm: np.ndarray,
    mask: np.ndarray,
    *,
    config: Volume3DConfig,
    zoom: tuple[float, float, float] | None = None,
) -> np.ndarray:
    """(3, z, y, x) region probabilities of a normalised (4, z, y, x) stack, inside the brain's box.

    ``predictor`` returns raw logits (``postprocess="none"``); windows are blended as logits and the
    sigmoid taken after, as the weights were validated. Outside the brain's box the probabilities
    are 0.
    """
    out = np.zeros((len(REGION_ORDER), *mask.shape), np.float32)
    if not mask.any():
        return out
    idx = np.argwhere(mask)
    lo, hi = idx.min(0), idx.max(0) + 1
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    crop = np.ascontiguousarray(norm[(slice(None), *box)], np.float32)
    shape = crop.shape[1:]
    if zoom is not None:
        crop = resize_linear(crop, tuple(max(1, round(n * f)) for n, f in zip(shape, zoom)), antialias=True)
    # windows of config.roi where the box is larger (as validated); a smaller axis is one window,
    # zero-padded to a size SegResNet takes (it halves each axis len(blocks_down) - 1 times)
    div = config.divisor
    pads = [(0, 0)] + [(0, (-n) % div if n < config.roi else 0) for n in crop.shape[1:]]
    padded = np.pad(crop, pads)
    roi = tuple(min(config.roi, n) for n in padded.shape[1:])
    logits = sliding_window(predictor, padded, roi, config.overlap)
    probs = 1.0 / (1.0 + np.exp(-logits[(slice(None), *(slice(0, n) for n in crop.shape[1:]))]))
    if zoom is not None:
        probs = np.clip(resize_linear(np.ascontiguousarray(probs), shape, antialias=False), 0.0, 1.0)
    out[(slice(None), *box)] = probs
    return out
