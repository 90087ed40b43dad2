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

Nets trained for the ``3class`` or ``dist`` targets (``medseg.cells.targets``) are decoded by
:func:`instances_from_maps`: the cell mask is ``mask_threshold`` on the cell probability, seeds are
interior components (3class, interior probability above ``interior_threshold``; a component whose
interior holds two or more substantial cores above ``split_threshold`` is seeded by those cores
instead) or h-maxima of the predicted distance (dist, ``seed_h`` deep and above ``seed_threshold``),
and a seeded watershed fills the mask; mask components without a seed stay whole; then holes and
small objects as above.
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
    # 3class / dist nets only (``instances_from_maps``)
    # cell probability (3class: interior + boundary) above which = cell; 0.6 chosen on the 20 held-out
    # training images with the averaged shipped nets (session 14: AP@0.5 0.737 -> 0.738, mAP 0.427 ->
    # 0.457; the whole default path on validation 0.713 -> 0.746, mAP 0.427 -> 0.496; 0.65 and above lose);
    # tighter outlines, fewer bridges. dist nets share it (0.5 when dist was tuned; none is shipped)
    mask_threshold: float = 0.6
    interior_threshold: float = 0.7  # 3class: interior probability of seeds (held-out tuned)
    # 3class: a seed whose interior splits into >= 2 cores above split_threshold, each at least
    # split_fraction of the seed's area, is replaced by its cores: touching nuclei whose interiors meet
    # at 0.7 but not at 0.9. Chosen in session 15 on the averaged shipped nets' maps (held-out 20:
    # AP@0.5 0.728 -> 0.729; validation 60: 0.746 -> 0.770, fluorescence 0.807 -> 0.836); None = off
    split_threshold: float | None = 0.9
    split_fraction: float = 0.2
    seed_threshold: float = 0.5  # dist: least predicted distance (0..1) of a seed (held-out tuned)
    seed_h: float = 0.1  # dist: depth of predicted-distance maxima (0..1 scale) that seed a cell


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
    from skimage.morphology import remove_small_holes
    from skimage.segmentation import expand_labels

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
        convex = _convex_mask(components, cfg.solidity)
        labels = _split_merged(components, fg & ~convex, cfg.h)
        # convex components are single cells: keep them whole (the watershed would over-split
        # irregular cells); so do components too thin to own an h-maximum
        whole = fg & ((labels == 0) | convex)
        labels = np.where(whole, components + labels.max(), labels)
        labels = _remove_small(labels, cfg.min_size)
    else:
        labels = components
    if cfg.grow > 0:
        labels = _fill_gaps(labels, cfg.grow, expand_labels)
    return _relabel(labels)


def _split_merged(components: np.ndarray, candidates: np.ndarray, h: float) -> np.ndarray:
    """Watershed on the negated distance transform, seeded by its ``h``-maxima, of the candidate
    (non-convex) components only, each in its own bounding box: the same split as one whole-image
    pass (components are separated by background), at a fraction of the cost when most cells are
    convex (whole-image ``h_maxima`` was 0.24 s of a 0.9 s 512^2 image)."""
    from skimage.morphology import h_maxima
    from skimage.segmentation import watershed

    labels = np.zeros(components.shape, dtype=np.int64)
    if not candidates.any():
        return labels
    cand = np.where(candidates, components, 0)
    next_label = 1
    for lab, box in enumerate(ndimage.find_objects(cand), start=1):
        if box is None:
            continue
        box = tuple(slice(max(s.start - 1, 0), s.stop + 1) for s in box)
        mask = cand[box] == lab
        dist = ndimage.distance_transform_edt(mask)
        markers, n = ndimage.label(h_maxima(dist, h) > 0)
        if n == 0:
            continue
        sub = watershed(-dist, markers, mask=mask)
        labels[box] = np.where(sub > 0, sub + (next_label - 1), labels[box])
        next_label += n
    return labels


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


def instances_from_maps(maps: np.ndarray, kind: str, config: InstanceConfig | None = None) -> np.ndarray:
    """Instance labels from a net's (K, H, W) output maps, decoded as its target ``kind`` says."""
    from medseg.cells.targets import BORDERS, THREE_CLASS, check_target

    cfg = config or InstanceConfig()
    if maps.ndim != 3:
        raise ValueError(f"expected (K, H, W) output maps, got shape {maps.shape}")
    if check_target(kind) == BORDERS:
        return instances_from_probability(maps[1], cfg)
    if kind == THREE_CLASS:
        interior = maps[1]
        min_seed = max(cfg.min_size // 4, 1)  # specks of interior would split a cell
        seeds, _ = ndimage.label(interior > cfg.interior_threshold)
        seeds = _remove_small(seeds, min_seed)
        if cfg.split_threshold is not None and cfg.split_threshold > cfg.interior_threshold:
            seeds = _split_seeds(seeds, interior > cfg.split_threshold, min_seed, cfg.split_fraction)
        return _seeded(interior, maps[1] + maps[2], seeds > 0, cfg)
    dist = np.where(maps[1] > cfg.mask_threshold, maps[2], 0).astype(np.float32)
    return _seeded(dist, maps[1], _distance_peaks(dist, cfg), cfg)


def _split_seeds(seeds: np.ndarray, core: np.ndarray, min_seed: int, fraction: float) -> np.ndarray:
    """Replace each seed that holds >= 2 cores (components of ``core`` of >= ``min_seed`` px and >=
    ``fraction`` of the seed's area) by all its cores; other seeds stay. Cores are disjoint components,
    so the replaced seeds stay separate markers."""
    cores = _remove_small(ndimage.label(core)[0], min_seed)
    ids = np.unique(cores[cores > 0])
    if ids.size < 2:
        return seeds
    parent = ndimage.maximum(seeds, cores, ids).astype(np.int64)  # cores lie inside one seed each
    core_area = np.bincount(cores.ravel())[ids]
    seed_area = np.bincount(seeds.ravel(), minlength=int(seeds.max()) + 1)
    big = (core_area >= fraction * seed_area[parent]) & (parent > 0)
    per_seed = np.bincount(parent[big], minlength=seed_area.size)
    split = np.nonzero(per_seed >= 2)[0]
    if split.size == 0:
        return seeds
    out = np.where(np.isin(seeds, split), 0, seeds)
    keep = np.isin(cores, ids[np.isin(parent, split)])
    return np.where(keep, cores + int(out.max()), out)


def _distance_peaks(dist: np.ndarray, cfg: InstanceConfig) -> np.ndarray:
    """Seeds of the dist decoder: h-maxima of the (lightly smoothed) distance above seed_threshold."""
    from skimage.morphology import h_maxima

    smooth = ndimage.gaussian_filter(dist, 1.0)
    if cfg.seed_h <= 0:
        return smooth > cfg.seed_threshold
    # h_maxima on a fixed-point copy: float maxima of nearly equal height are unstable
    peaks = h_maxima((smooth * 1000).astype(np.int32), max(int(round(cfg.seed_h * 1000)), 1)) > 0
    return peaks & (smooth > cfg.seed_threshold)


def _seeded(height: np.ndarray, cell_prob: np.ndarray, seeds: np.ndarray, cfg: InstanceConfig) -> np.ndarray:
    """Watershed on ``-height`` from the seed components, inside the cell mask; unseeded mask
    components become instances of their own; small holes filled, small objects removed."""
    from skimage.morphology import remove_small_holes
    from skimage.segmentation import watershed

    fg = cell_prob > cfg.mask_threshold
    if cfg.max_hole > 0:
        fg = remove_small_holes(fg, max_size=cfg.max_hole)
    if not fg.any():
        return np.zeros(fg.shape, dtype=np.int32)
    markers, _ = ndimage.label(seeds & fg)
    labels = watershed(-height, markers, mask=fg).astype(np.int64)
    components, _ = ndimage.label(fg & (labels == 0))
    labels = np.where(components > 0, components + labels.max(), labels)
    return _relabel(_remove_small(labels, cfg.min_size))
