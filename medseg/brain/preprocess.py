"""Havaei preprocessing: 1 % intensity clipping, N4 on T1/T1c, per-channel z-score inside the brain.

The brain mask is where any modality is non-zero: BraTS inputs are skull-stripped with a zero
background. Outside the mask the normalised channels are 0, which is also the value the networks
see in the zero padding around a slice, so borders behave the same in training and inference.

N4 dominates preprocessing time on full-size volumes (tens of seconds per modality); it runs on a
``n4_shrink``-times downsampled image (the fitted bias field is smooth, so little is lost) and
can be switched off (``n4=False``, CLI ``--no-n4``) for already bias-corrected data and tests.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field

import numpy as np

from medseg.errors import InputError

log = logging.getLogger("medseg.brain")

N4_MODALITIES = (0, 1)  # T1 and T1c in the (t1, t1c, t2, flair) stack


@dataclass
class PreprocessConfig:
    """Preprocessing options (saved in the weights so inference matches training)."""

    clip_percent: float = 1.0  # remove this % of lowest and highest intensities inside the brain
    n4: bool = True
    n4_shrink: int = 4
    n4_iterations: list[int] = field(default_factory=lambda: [50, 50, 30])

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> PreprocessConfig:
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


def brain_mask(stack: np.ndarray) -> np.ndarray:
    """Voxels where any modality is non-zero (skull-stripped input)."""
    mask = np.any(stack != 0, axis=0)
    if not mask.any():
        raise InputError("all channels are zero: no brain voxels")
    return mask


def clip_intensities(channel: np.ndarray, mask: np.ndarray, percent: float) -> np.ndarray:
    """Clip to the [percent, 100 - percent] percentiles of the brain voxels."""
    if percent <= 0:
        return channel
    lo, hi = np.percentile(channel[mask], [percent, 100.0 - percent])
    return np.clip(channel, lo, hi)


def n4_correct(channel: np.ndarray, mask: np.ndarray, spacing: tuple[float, float, float], *, shrink: int = 4,
               iterations: list[int] | None = None) -> np.ndarray:
    """N4 bias-field correction (SimpleITK), fitted on a shrunk image, applied at full resolution."""
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(np.ascontiguousarray(channel, np.float32))
    image.SetSpacing(tuple(float(s) for s in spacing[::-1]))
    mask_img = sitk.GetImageFromArray(mask.astype(np.uint8))
    mask_img.CopyInformation(image)
    # shrink only along axes large enough for it
    factors = [max(1, min(shrink, n // 8)) for n in image.GetSize()]
    small = sitk.Shrink(image, factors)
    small_mask = sitk.Shrink(mask_img, factors)
    corrector = sitk.N4BiasFieldCorrectionImageFilter()
    corrector.SetMaximumNumberOfIterations(list(iterations or [50, 50, 30]))
    corrector.Execute(small, small_mask)
    log_bias = corrector.GetLogBiasFieldAsImage(image)
    corrected = np.asarray(channel, np.float32) / np.exp(sitk.GetArrayFromImage(log_bias)).astype(np.float32)
    return np.where(mask, corrected, 0.0).astype(np.float32)


def preprocess(stack: np.ndarray, spacing: tuple[float, float, float],
               config: PreprocessConfig | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(4, z, y, x) raw intensities -> normalised float32 stack and the brain mask."""
    cfg = config or PreprocessConfig()
    if stack.ndim != 4 or stack.shape[0] != 4:
        raise InputError(f"expected a (4, z, y, x) stack of T1, T1c, T2, FLAIR, got shape {stack.shape}")
    if not np.all(np.isfinite(stack)):
        raise InputError("input contains NaN/Inf voxels")
    for c, name in enumerate(("t1", "t1c", "t2", "flair")):
        if not np.any(stack[c]):
            raise InputError(f"{name} channel is all zero")
    mask = brain_mask(stack)
    out = np.zeros(stack.shape, np.float32)
    for c in range(4):
        ch = np.where(mask, stack[c], 0).astype(np.float32)
        ch = clip_intensities(ch, mask, cfg.clip_percent)
        if cfg.n4 and c in N4_MODALITIES:
            ch = n4_correct(np.maximum(ch, 1e-3), mask, spacing, shrink=cfg.n4_shrink, iterations=cfg.n4_iterations)
        vals = ch[mask]
        std = float(vals.std())
        if std < 1e-8:
            raise InputError(f"{('t1', 't1c', 't2', 'flair')[c]} channel is constant inside the brain")
        out[c] = np.where(mask, (ch - float(vals.mean())) / std, 0.0)
    return out, mask
