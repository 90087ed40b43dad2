"""Havaei preprocessing: 1 % intensity clipping, N4 on T1/T1c, per-channel z-score inside the brain.

The brain mask is where any modality is non-zero: BraTS inputs are skull-stripped with a zero
background. Outside the mask the normalised channels are 0, which is also the value the networks
see in the zero padding around a slice, so borders behave the same in training and inference.

Clipping and z-scoring compute what MONAI's ``ClipIntensityPercentiles`` and ``NormalizeIntensity``
give channel-wise on the *brain voxels* (a (4, n) array; tested equal), in NumPy: importing MONAI
costs ~8 CPU-s per ``brain-segment`` call, more than the two operations themselves. Statistics are
over the brain mask, as the method says (``NormalizeIntensity(nonzero=True)`` on the volume would
use each channel's own non-zero voxels instead, which differs wherever one modality is 0 inside).

N4 dominated preprocessing time on full-size volumes; it is fitted *and* its bias field evaluated on
a downsampled image (the field is smooth, so little is lost; tested against full-resolution N4), then
the log field is upsampled and divided out. ``n4=False`` (CLI ``--no-n4``) skips it for already
bias-corrected data and tests.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field

import numpy as np

from medseg.brain.io import MODALITIES
from medseg.errors import InputError

log = logging.getLogger("medseg.brain")

N4_MODALITIES = (0, 1)  # T1 and T1c
N4_MAX_AXIS = 32  # N4 fits on at most this many voxels per axis (BraTS 240x240x155: shrink 8, 8, 5)


@dataclass
class PreprocessConfig:
    """Preprocessing options (saved in the weights so inference matches training)."""

    clip_percent: float = 1.0  # remove this % of lowest and highest intensities inside the brain
    n4: bool = True
    n4_shrink: int = 4
    n4_iterations: list[int] = field(default_factory=lambda: [50, 50])  # per fitting level

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
    """N4 bias-field correction (SimpleITK), fitted and evaluated on a shrunk image.

    The bias field is smooth (a B-spline with a few control points), so both the N4 fit and the
    evaluation of its log field run on the image shrunk ``shrink`` times per axis; the log field is
    then resampled linearly to full resolution and divided out inside ``mask``. Evaluating the
    B-spline on every full-resolution voxel (``GetLogBiasFieldAsImage(full image)``) costs more
    than the fit itself on BraTS-size volumes and changes the result by less than the fit's own
    error (tested against full-resolution N4 on a known field).
    """
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(np.ascontiguousarray(channel, np.float32))
    image.SetSpacing(tuple(float(s) for s in spacing[::-1]))
    mask_img = sitk.GetImageFromArray(mask.astype(np.uint8))
    mask_img.CopyInformation(image)
    # at least ``shrink``, and enough to bring every axis to <= N4_MAX_AXIS voxels (the fit's cost
    # grows with the voxel count, its B-spline resolution does not); never below 8 voxels per axis
    factors = [max(1, min(max(shrink, -(-n // N4_MAX_AXIS)), n // 8)) for n in image.GetSize()]
    small = sitk.Shrink(image, factors)
    small_mask = sitk.Shrink(mask_img, factors)
    corrector = sitk.N4BiasFieldCorrectionImageFilter()
    corrector.SetMaximumNumberOfIterations(list(iterations or [50, 50]))
    corrector.Execute(small, small_mask)
    small_log_bias = corrector.GetLogBiasFieldAsImage(small)
    # linear upsampling; voxels beyond the shrunk grid's outer centres take the nearest value
    log_bias = sitk.Resample(
        small_log_bias, image, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32, True
    )
    bias = np.exp(sitk.GetArrayViewFromImage(log_bias)).astype(np.float32)
    out = np.zeros(mask.shape, np.float32)
    out[mask] = np.asarray(channel, np.float32)[mask] / bias[mask]
    return out


def preprocess(
    stack: np.ndarray, spacing: tuple[float, float, float], config: PreprocessConfig | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(4, z, y, x) raw intensities -> normalised float32 stack and the brain mask."""
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
    if cfg.clip_percent > 0:  # = MONAI ClipIntensityPercentiles(channel_wise=True), tested
        for c in range(len(brain)):
            lo, hi = np.percentile(brain[c], [cfg.clip_percent, 100.0 - cfg.clip_percent])
            np.clip(brain[c], lo, hi, out=brain[c])
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
    for c in range(len(brain)):  # = MONAI NormalizeIntensity(channel_wise=True), tested
        vals = brain[c]
        out[c][mask] = (vals - vals.mean(dtype=np.float64)) / vals.std(dtype=np.float64)
    return out, mask
