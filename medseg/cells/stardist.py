"""Star-convex polygons (Schmidt et al. 2018, StarDist) as a cell instance representation: groundwork.

Issue 18 names star-convex polygons on the same U-Net backbone as one of the instance methods to
compare: on the DSB 2018 validation images most lost nuclei are touching pairs merged into one object
(docs/cells.md), and a polygon per pixel, kept by non-maximum suppression, separates touching convex
nuclei without any boundary class. This module holds the parts that do not depend on training:

- :func:`star_distances`: the regression target, per object pixel the distance to its object's edge
  along ``n_rays`` equally spaced directions;
- :func:`polygons_to_labels`: the decoder, object probability + ray distances -> instance labels by
  greedy non-maximum suppression of the candidate polygons;
- :func:`ceiling_labels`: both together on true labels, i.e. how well the representation itself can
  describe a set of annotated nuclei (``scripts/stardist_ceiling.py`` measures it on real data).

Not yet a ``cells-train`` target: docs/cells.md says what was measured and what is left.
"""

from __future__ import annotations

import numpy as np

N_RAYS = 32


def ray_angles(n_rays: int = N_RAYS) -> np.ndarray:
    return np.arange(n_rays) * (2 * np.pi / n_rays)


def star_distances(labels: np.ndarray, n_rays: int = N_RAYS, max_dist: int | None = None) -> np.ndarray:
    """(n_rays, H, W) float32: for each object pixel, how far its object extends along each ray.

    A ray is walked in unit steps from the pixel centre; the distance is that of the first sample
    (rounded to the nearest pixel) outside the pixel's own object (another object, background or the
    image border count alike). Background pixels get 0. ``max_dist`` caps the walk (default: the
    image's larger side).
    """
    labels = np.asarray(labels)
    h, w = labels.shape
    limit = max_dist or max(h, w)
    ys, xs = np.nonzero(labels)
    own = labels[ys, xs]
    out = np.zeros((n_rays, h, w), np.float32)
    for k, phi in enumerate(ray_angles(n_rays)):
        dy, dx = np.sin(phi), np.cos(phi)
        dist = np.zeros(ys.shape, np.float32)
        alive = np.ones(ys.shape, bool)
        for step in range(1, limit + 1):
            idx = np.flatnonzero(alive)
            if idx.size == 0:
                break
            yy = np.rint(ys[idx] + step * dy).astype(np.int64)
            xx = np.rint(xs[idx] + step * dx).astype(np.int64)
            inside = (yy >= 0) & (yy < h) & (xx >= 0) & (xx < w)
            same = np.zeros(idx.shape, bool)
            same[inside] = labels[yy[inside], xx[inside]] == own[idx[inside]]
            ended = idx[~same]
            dist[ended] = step
            alive[ended] = False
        dist[alive] = limit
        out[k, ys, xs] = dist
    return out


def polygon_vertices(y: float, x: float, dists: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(rows, cols) of the polygon of ray lengths ``dists`` around the pixel (y, x)."""
    phi = ray_angles(len(dists))
    return y + dists * np.sin(phi), x + dists * np.cos(phi)


def polygons_to_labels(
    prob: np.ndarray,
    dist: np.ndarray,
    *,
    prob_thresh: float = 0.5,
    nms_thresh: float = 0.4,
    min_area: int = 4,
) -> np.ndarray:
    """Instance labels from an object probability map (H, W) and ray distances (n_rays, H, W).

    Candidates are the pixels above ``prob_thresh``, most probable first. A candidate whose pixel is
    already inside a kept polygon is skipped; otherwise its polygon is drawn and kept unless more than
    ``nms_thresh`` of its area is covered by polygons kept before (greedy NMS, the overlap measured on
    the painted label image). A kept polygon labels only its uncovered pixels.
    """
    from skimage.draw import polygon as draw_polygon

    h, w = prob.shape
    out = np.zeros((h, w), np.int32)
    cand = np.flatnonzero(prob.ravel() > prob_thresh)
    cand = cand[np.argsort(-prob.ravel()[cand], kind="stable")]
    next_label = 1
    flat = out.ravel()
    for c in cand:
        if flat[c]:
            continue
        y, x = divmod(int(c), w)
        rr, cc = draw_polygon(*polygon_vertices(y, x, dist[:, y, x]), shape=(h, w))
        if rr.size < min_area:
            continue
        covered = out[rr, cc] > 0
        if covered.mean() > nms_thresh:
            continue
        out[rr[~covered], cc[~covered]] = next_label
        next_label += 1
    return out


def ceiling_labels(labels: np.ndarray, n_rays: int = N_RAYS, nms_thresh: float = 0.4) -> np.ndarray:
    """The instances the decoder gives from perfect maps of ``labels`` (the representation's ceiling)."""
    from medseg.cells.targets import normalised_distance

    return polygons_to_labels(
        normalised_distance(labels), star_distances(labels, n_rays), prob_thresh=0.5, nms_thresh=nms_thresh
    )
