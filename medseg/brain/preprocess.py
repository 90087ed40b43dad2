"""Havaei preprocessing: 1 % intensity clipping, N4 on T1/T1c, per-channel z-score inside the brain.

The brain mask is where any modality is non-zero: BraTS inputs are skull-stripped with a zero
background. Outside the mask the normalised channels are 0, which is also the value the networks
see in the zero padding around a slice, so borders behave the same in training and inference.

Clipping and z-scoring are MONAI's ``ClipIntensityPercentiles`` and ``NormalizeIntensity`` applied
channel-wise to the *brain voxels* (a (4, n) array): statistics over the brain mask, exactly as the
method says. ``NormalizeIntensity(nonzero=True)`` on the whole volume would use each channel's own
non-zero voxels instead, which differs wherever one modality is 0 inside the brain.

N4 dominates preprocessing time on full-size volumes (tens of seconds per modality); it runs on a
``n4_shrink``-times downsampled image (the fitted bias field is smooth, so little is lost) and
can be switched off (``n4=False``, CLI ``--no-n4``) for already bias-corrected data and tests.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field

import numpy as np

from medseg.brain.io import MODALITIES
from medseg.errors import InputError

log = logging.getLogger("medseg.brain")

N4_MODALITIES = (0, 1)  # T1 and T1c


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


def n4_correct(
    channel: np.ndarray,
    mask: np.ndarray,
    spacing: tuple[float, float, float],
    *,
    shrink: int = 4,
    iterations: list[int] | None = None,
) -> np.ndarray:
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


def preprocess(
    stack: np.ndarray, spacing: tuple[float, float, float], config: PreprocessConfig | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(4, z, y, x) raw intensities -> normalised float32 stack and the brain mask."""
    from monai.transforms import ClipIntensityPercentiles, NormalizeIntensity

    cfg = config or PreprocessConfig()
    if stack.ndim != 4 or stack.shape[0] != 4:
        shape = " x ".join(map(str, stack.shape))
        raise InputError(
            f"expected a 4 x z x y x x stack of T1, T1c, T2, FLAIR, got an array of shape {shape}"
        )
    if not np.all(np.isfinite(stack)):
        raise InputError("input contains NaN/Inf voxels")
    for c, name in enumerate(MODALITIES):
        if not np.any(stack[c]):
            raise InputError(f"{name} channel is all zero")
    mask = brain_mask(stack)
    brain = np.asarray(stack[:, mask], np.float32)  # (4, n brain voxels)
    if cfg.clip_percent > 0:
        clip = ClipIntensityPercentiles(
            lower=cfg.clip_percent, upper=100.0 - cfg.clip_percent, channel_wise=True
        )
        brain = np.asarray(clip(brain), np.float32)
    if cfg.n4:
        for c in N4_MODALITIES:
            volume = np.zeros(mask.shape, np.float32)
            volume[mask] = np.maximum(brain[c], 1e-3)
            brain[c] = n4_correct(volume, mask, spacing, shrink=cfg.n4_shrink, iterations=cfg.n4_iterations)[
                mask
            ]
    for c, name in enumerate(MODALITIES):
        if brain[c].max() <= brain[c].min():
            raise InputError(f"{name} channel is constant inside the brain")
    out = np.zeros(stack.shape, np.float32)
    out[:, mask] = np.asarray(NormalizeIntensity(channel_wise=True)(brain), np.float32)
    return out, mask
