"""From a foreground probability map to separated cell instances.

1. threshold the cell probability (``threshold``) and fill holes up to ``max_hole`` px;
2. remove objects smaller than ``min_size`` pixels;
3. split what is still merged: components whose solidity (area / convex-hull area) is below
   ``solidity`` - two cells joined by a neck are not convex - go through a watershed on the
   negated distance transform seeded by its h-maxima (``h`` px deep); convex components stay
   whole (a watershed would over-split irregular single cells);
4. remove fragments smaller than ``min_size`` again (they merge into no neighbour: dropped);
5. grow instances by ``grow`` px into the thin background lines between two cells: the net was
   trained to leave such a line where cells touch (weight map); this gives those pixels back.
   Outer cell edges are not grown.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage


@dataclass
class InstanceConfig:
    threshold: float = 0.6  # cell probability above which a pixel is foreground
    min_size: int = 40  # px; smaller objects are noise
    watershed: bool = True  # split remaining merges on the distance transform
    h: float = 2.0  # px; depth of distance-transform maxima that seed separate cells
    solidity: float = 0.85  # only components less convex than this (area / convex hull) are split
    grow: int = 2  # px; give back the separating border the net was taught to leave out
    max_hole: int = 12  # px; holes up to this area inside a cell are filled (0 = off)


def _remove_small(labels: np.ndarray, min_size: int) -> np.ndarray:
    """Drop labelled objects of fewer than ``min_size`` pixels (skimage; labels stay as they are)."""
    import warnings

    from skimage.morphology import remove_small_objects

    if min_size <= 1 or labels.max() == 0:
        return labels
    with warnings.catch_warnings():  # one object in the image is fine, not a bool-array mix-up
        warnings.filterwarnings("ignore", message="Only one label was provided")
        return remove_small_objects(labels, max_size=min_size - 1)


def _convex_mask(components: np.ndarray, solidity: float) -> np.ndarray:
    """Pixels of components whose solidity (area / convex-hull area) is at least ``solidity``."""
    from skimage.measure import regionprops

    if solidity <= 0:
        return components > 0
    if solidity > 1:
        return np.zeros(components.shape, dtype=bool)
    convex = np.zeros(int(components.max()) + 1, dtype=bool)
    for r in regionprops(components):
        convex[r.label] = r.solidity >= solidity
    return convex[components]


def _relabel(labels: np.ndarray) -> np.ndarray:
    from skimage.segmentation import relabel_sequential

    out, _, _ = relabel_sequential(labels)
    return out.astype(np.int32)


def instances_from_probability(prob: np.ndarray, config: InstanceConfig | None = None) -> np.ndarray:
    """Instance labels (int32, 0 = background) from a (H, W) cell-probability map."""
    from skimage.morphology import h_maxima, remove_small_holes
    from skimage.segmentation import expand_labels, watershed

    cfg = config or InstanceConfig()
    if prob.ndim != 2:
        raise ValueError(f"expected a 2D probability map, got shape {prob.shape}")
    fg = prob > cfg.threshold
    if cfg.max_hole > 0:  # small holes only: gaps enclosed by a ring of cells are real background
        fg = remove_small_holes(fg, max_size=cfg.max_hole)
    components, n = ndimage.label(fg)
    components = _remove_small(components, cfg.min_size)
    fg = components > 0
    if n == 0 or not fg.any():
        return np.zeros(prob.shape, dtype=np.int32)
    if cfg.watershed:
        dist = ndimage.distance_transform_edt(fg)
        markers, _ = ndimage.label(h_maxima(dist, cfg.h) > 0)
        labels = watershed(-dist, markers, mask=fg).astype(np.int64)
        # convex components are single cells: keep them whole (the watershed would over-split
        # irregular cells); so do components too thin to own an h-maximum
        whole = fg & ((labels == 0) | _convex_mask(components, cfg.solidity))
        labels = np.where(whole, components + labels.max(), labels)
        labels = _remove_small(labels, cfg.min_size)
    else:
        labels = components
    if cfg.grow > 0:
        labels = _fill_gaps(labels, cfg.grow, expand_labels)
    return _relabel(labels)


def _fill_gaps(labels: np.ndarray, grow: int, expand_labels) -> np.ndarray:
    """Grow instances by ``grow`` px, but only into background pixels that have two different
    cells within ``grow`` px (the separating lines), not across the outer cell edges."""
    size = 2 * grow + 1
    labels = labels.astype(np.int64)
    big = int(labels.max()) + 1
    hi = ndimage.maximum_filter(labels, size=size)
    lo = ndimage.minimum_filter(np.where(labels > 0, labels, big), size=size)
    gap = (labels == 0) & (hi > 0) & (lo < big) & (hi != lo)
    grown = expand_labels(labels, distance=grow)
    return np.where(gap, grown, labels)
