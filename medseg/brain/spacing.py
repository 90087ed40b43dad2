"""Run the slice nets at the in-plane spacing they were trained at (issue 12).

The nets have a fixed receptive field in voxels (33/65): a 1 mm case shown to weights trained on
3 mm phantoms presents tumours at a third of the learnt scale (false edema, 9x the compute). The
weights record ``train_spacing_mm``; a case more than ``SPACING_TOLERANCE`` off is resampled
in-plane per brain box, and the class probabilities are brought back to its grid before argmax.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING

import numpy as np

from medseg.brain.models import N_CLASSES, REGION_ORDER, softmax_regions
from medseg.brain.sampling import brain_boxes, predict_slices, slice_padding

if TYPE_CHECKING:
    from medseg.engine.predictor import Predictor

SPACING_TOLERANCE = (
    0.15  # relative spacing difference (any axis) that triggers resampling to the training grid
)
# What the slice-net loops return: the argmax labels (z, y, x), the (3, z, y, x) TC / WT / ET
# probabilities, or the (5, z, y, x) class softmax (what test-time views are averaged as)
OUTPUTS = {"labels": 0, "regions": len(REGION_ORDER), "softmax": N_CLASSES}
__all__ = [
    "OUTPUTS",
    "SPACING_TOLERANCE",
    "check_output_kind",
    "inference_zoom",
    "predict_in_brain_resampled",
    "resize_linear",
    "train_spacing",
    "training_zoom",
]


def check_output_kind(output: str) -> int:
    """Channels of ``output`` (0: a label map); a kind not in :data:`OUTPUTS` is a programming error."""
    if output not in OUTPUTS:
        raise ValueError(f"output must be one of {', '.join(OUTPUTS)}, not {output!r}")
    return OUTPUTS[output]


def train_spacing(meta, dims: int = 2) -> tuple[float, ...] | None:
    """Spacing in mm the weights were trained at: in-plane (row, col) for the slice nets (``dims`` 2),
    (z, y, x) for a 3-D net (``dims`` 3); None when not recorded (older weights)."""
    value = (meta.config or {}).get("train_spacing_mm")
    if not value or len(value) != dims:
        return None
    return tuple(float(v) for v in value)


def training_zoom(spacing: tuple[float, ...], trained: tuple[float, ...] | None) -> tuple[float, ...] | None:
    """Zoom per axis from ``spacing`` to the ``trained`` spacing; None within ``SPACING_TOLERANCE``."""
    if trained is None:
        return None
    ratios = tuple(float(s) / float(t) for s, t in zip(spacing, trained))
    if all(abs(r - 1.0) <= SPACING_TOLERANCE for r in ratios):
        return None
    return ratios


def inference_zoom(
    spacing: tuple[float, float, float], trained: tuple[float, float] | None
) -> tuple[float, float] | None:
    """In-plane zoom (row, col) from the case's grid to the training grid; None to run at the case's own.

    The slice nets have a fixed receptive field in voxels (33/65): a case at another in-plane
    spacing shows them tissue at another scale than they learnt. Within ``SPACING_TOLERANCE`` the
    case is run as it is.
    """
    return training_zoom(spacing[1:], trained)  # type: ignore[return-value]


def resize_linear(array: np.ndarray, shape: tuple[int, ...], *, antialias: bool) -> np.ndarray:
    """Linear resize of a (C, *spatial) array to (C, *shape), corners aligned, float32.

    Downsampling first smooths with a Gaussian (sigma = half the step) so thin bright structures
    are averaged as in a coarser acquisition instead of aliased.
    """
    from scipy import ndimage as ndi

    factors = [n / o for n, o in zip(shape, array.shape[1:])]
    if antialias and any(f < 1 for f in factors):
        sigma = (0, *(max(0.0, (1 / f - 1) / 2) for f in factors))
        array = ndi.gaussian_filter(array, sigma=sigma, mode="constant")
    out = ndi.zoom(array, (1, *factors), order=1, mode="nearest", grid_mode=False)
    if out.shape[1:] != tuple(shape):  # zoom rounds; guard the exact size
        raise AssertionError(f"resize gave {out.shape[1:]}, expected {tuple(shape)}")
    return out.astype(np.float32, copy=False)


def predict_in_brain_resampled(
    predictor: Predictor,
    norm: np.ndarray,
    mask: np.ndarray,
    zoom: tuple[float, float],
    *,
    arch: str,
    batch_size: int = 8,
    progress: bool = False,
    desc: str = "",
    output: str = "labels",
    rows: np.ndarray | None = None,
) -> np.ndarray:
    """Class map (z, y, x) with the net run at the training spacing, per brain box.

    Each batch's brain box is resampled in-plane by ``zoom`` (z untouched: the nets are 2D), the
    class probabilities are computed there and brought back to the box linearly, then argmax:
    the labels are on the case's own grid. Memory is bounded by one box of ``batch_size`` slices.
    ``output``: see :data:`OUTPUTS` (probabilities are 0 outside the boxes). ``rows``: a (z,) bool
    mask; only the batches of slices holding one of them run (the others stay 0).
    """
    from medseg.engine.progress import progress_bar

    channels = check_output_kind(output)
    soft = copy.copy(predictor)  # same model, probabilities instead of classes
    soft.postprocess = "softmax"
    seg = np.zeros((channels, *mask.shape), np.float32) if channels else np.zeros(mask.shape, np.uint8)
    pad = slice_padding(arch)
    boxes = brain_boxes(mask, batch_size)
    if rows is not None:  # only the boxes holding a wanted slice (the same boxes as a full run)
        boxes = [b for b in boxes if rows[b[0]].any()]
    for box in progress_bar(boxes, total=len(boxes), desc=desc, enabled=progress, unit="batch"):
        crop = norm[(slice(None), *box)]
        h, w = crop.shape[2:]
        small = (max(1, round(h * zoom[0])), max(1, round(w * zoom[1])))
        nz = crop.shape[1]
        resampled = resize_linear(crop, (nz, *small), antialias=True)  # in-plane only: the nets are 2D
        probs = predict_slices(soft, resampled, pad=pad, batch_size=batch_size)  # (K, z, h', w')
        probs = resize_linear(probs, (nz, h, w), antialias=False)
        if output == "regions":
            seg[(slice(None), *box)] = softmax_regions(probs)
        elif output == "softmax":
            seg[(slice(None), *box)] = probs
        else:
            seg[box] = probs.argmax(0).astype(np.uint8)
    return seg
