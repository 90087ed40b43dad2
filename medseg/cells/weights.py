"""The U-Net border weight map (Ronneberger et al. 2015, eq. 2).

    w(x) = w_c(x) + w0 * exp(-(d1(x) + d2(x))^2 / (2 sigma^2))

``w_c`` balances class frequencies (background vs cell, "balanced": N / (2 N_class)); d1 and
d2 are the distances to the nearest and second-nearest cell. The border term is applied to
background pixels only (inside a cell d1 = 0 is meaningless), so the loss pushes hard on the
thin background gaps that separate touching cells.

Distances are computed per cell inside its bounding box grown by the radius beyond which the
border term is below 1e-6 of w0, so the cost grows with the number of cells, not cells x image.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage


@dataclass
class WeightMapConfig:
    w0: float = 10.0
    sigma: float = 5.0
    balance_classes: bool = True
    tolerance: float = 1e-6  # border term ignored below tolerance * w0


def class_weights(labels: np.ndarray, *, balance: bool = True) -> np.ndarray:
    """Per-pixel w_c: N / (2 N_class) for background and cells (1 everywhere if not balancing)."""
    fg = labels > 0
    if not balance or fg.all() or not fg.any():
        return np.ones(labels.shape, dtype=np.float32)
    n = fg.size
    w_fg, w_bg = n / (2.0 * fg.sum()), n / (2.0 * (~fg).sum())
    return np.where(fg, w_fg, w_bg).astype(np.float32)


def nearest_two_distances(labels: np.ndarray, *, reach: float = np.inf) -> tuple[np.ndarray, np.ndarray]:
    """d1, d2: Euclidean distance from every pixel to the nearest and second-nearest cell.

    Distances beyond ``reach`` are reported as ``inf`` (only their absence matters).
    """
    shape = labels.shape
    d1 = np.full(shape, np.inf, dtype=np.float64)
    d2 = np.full(shape, np.inf, dtype=np.float64)
    pad = int(np.ceil(reach)) if np.isfinite(reach) else max(shape)
    for index, sl in enumerate(ndimage.find_objects(labels), start=1):
        if sl is None:
            continue
        y0, y1 = max(sl[0].start - pad, 0), min(sl[0].stop + pad, shape[0])
        x0, x1 = max(sl[1].start - pad, 0), min(sl[1].stop + pad, shape[1])
        crop = labels[y0:y1, x0:x1] != index
        dist = ndimage.distance_transform_edt(crop)
        if np.isfinite(reach):
            dist[dist > reach] = np.inf
        a, b = d1[y0:y1, x0:x1], d2[y0:y1, x0:x1]
        closer = dist < a
        b[...] = np.where(closer, a, np.minimum(b, dist))
        a[...] = np.where(closer, dist, a)
    return d1, d2


def border_weight_map(labels: np.ndarray, config: WeightMapConfig | None = None) -> np.ndarray:
    """Weight map w(x) for an instance label image (0 = background)."""
    cfg = config or WeightMapConfig()
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"weight map needs a 2D label image, got shape {labels.shape}")
    weights = class_weights(labels, balance=cfg.balance_classes).astype(np.float64)
    if labels.max() > 0 and cfg.w0 > 0:
        # (d1 + d2) beyond this makes the term negligible; d2 <= d1 + d2 bounds the reach
        reach = cfg.sigma * np.sqrt(2 * np.log(1 / cfg.tolerance))
        d1, d2 = nearest_two_distances(labels.astype(np.int64), reach=reach)
        with np.errstate(invalid="ignore"):
            term = cfg.w0 * np.exp(-((d1 + d2) ** 2) / (2 * cfg.sigma**2))
        term[~np.isfinite(term)] = 0
        weights += np.where(labels == 0, term, 0)
    return weights.astype(np.float32)


def touching_borders(labels: np.ndarray) -> np.ndarray:
    """Pixels of a cell that touch a *different* cell (4-neighbourhood), on both sides."""
    labels = np.asarray(labels)
    border = np.zeros(labels.shape, dtype=bool)
    for axis in (0, 1):
        a = labels.swapaxes(0, axis)
        edge = (a[1:] > 0) & (a[:-1] > 0) & (a[1:] != a[:-1])
        b = border.swapaxes(0, axis)
        b[1:] |= edge
        b[:-1] |= edge
    return border


def separate_touching(labels: np.ndarray) -> np.ndarray:
    """Copy of ``labels`` with the pixels where two cells touch set to background.

    The training target then has a thin background line between touching cells, which is
    what the border term of the weight map emphasises; segmentation grows the cells back.
    """
    out = np.array(labels, copy=True)
    out[touching_borders(labels)] = 0
    return out


def instances_from_mask(mask: np.ndarray) -> np.ndarray:
    """Instance labels from a binary or instance mask (binary masks: connected components)."""
    mask = np.asarray(mask)
    if mask.dtype == bool or np.unique(mask).size <= 2:
        return ndimage.label(mask > 0)[0].astype(np.int32)
    return mask.astype(np.int32)
