"""Mask R-CNN PTC detector (He et al. 2017, torchvision): the light detector plus a small mask head.

It predicts each PTC's outline as well as its box. Training masks follow the box convention of
Kim et al. 2019: the PTC polygon is enlarged by the per-class margin (50 px C4d+, 40 px C4d-, a
disc dilation, so the enlarged mask's box is exactly the enlarged box) and clipped to the tile.
At scoring the outline is read from the 28 x 28 mask of each box (never pasted into a tile-sized
image: 300 detections x 1024^2 floats would be over 1 GB) and kept *enlarged*; the GeoJSON export
(:mod:`medseg.pathology.outputs`) takes the margin off again, as it does for boxes.

Detections travel as one array per tile: columns 0-3 the box (x0, y0, x1, y1), then
:data:`OUTLINE_VERTICES` (x, y) pairs of the enlarged outline, so tile merging, NMS and the
cascade handle them like boxes (:func:`split_detections` takes them apart).
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np

log = logging.getLogger("medseg.pathology")

ARCH = "maskrcnn"
OUTLINE_VERTICES = 32  # outline resampled to this many vertices (PTCs are convex-ish rings)
MASK_CHANNELS = (32, 32)  # the mask head's conv layers (torchvision's default is 4 x 256)
# small demo Mask R-CNN trained on synthetic slides (scripts/compare_pathology_detectors.py
# --ship-maskrcnn); not for clinical use. Resolve with medseg.engine.weights.demo_weights_path.
DEMO_WEIGHTS = "pathology/c4d_maskrcnn_demo.safetensors"


def detection_columns(arch: str) -> int:
    """Columns of a detections array of this architecture (4 for a box, more with an outline)."""
    return 4 + 2 * OUTLINE_VERTICES if arch == ARCH else 4


def split_detections(dets: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """(N, 4 [+ 2K]) detections -> boxes (N, 4) and outlines (N, K, 2), or None for box-only ones."""
    dets = np.asarray(dets, float)
    if dets.ndim != 2 or dets.shape[1] <= 4:
        return dets.reshape(-1, 4), None
    return dets[:, :4], dets[:, 4:].reshape(len(dets), -1, 2)


def build_light_maskrcnn(*, config):
    """The light detector (:func:`medseg.pathology.detector.build_light_detector`) with a mask branch:
    14 x 14 RoIAlign, two 32-channel convs, a 28 x 28 mask per class (about 30 k extra parameters)."""
    from torchvision.models.detection import MaskRCNN
    from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
    from torchvision.ops import MultiScaleRoIAlign

    from medseg.pathology.detector import _fixed_scale_transform, light_rcnn_parts

    backbone, kwargs = light_rcnn_parts(config)
    model = MaskRCNN(
        backbone,
        mask_roi_pool=MultiScaleRoIAlign(featmap_names=["0"], output_size=14, sampling_ratio=2),
        mask_head=MaskRCNNHeads(backbone.out_channels, list(MASK_CHANNELS), 1),
        mask_predictor=MaskRCNNPredictor(MASK_CHANNELS[-1], MASK_CHANNELS[-1], config.num_classes),
        **kwargs,
    )
    model.transform = _fixed_scale_transform(config.input_scale, config.image_mean, config.image_std)
    return model


def resample_ring(ring: np.ndarray, k: int = OUTLINE_VERTICES) -> np.ndarray:
    """A closed (M, 2) ring -> ``k`` vertices evenly spaced along its length (counter-clockwise start
    at the first vertex); a degenerate ring gives ``k`` copies of its mean."""
    ring = np.asarray(ring, float).reshape(-1, 2)
    if len(ring) < 3:
        return np.repeat(ring.mean(0, keepdims=True) if len(ring) else np.zeros((1, 2)), k, 0)
    closed = np.vstack([ring, ring[:1]])
    seg = np.hypot(*np.diff(closed, axis=0).T)
    cum = np.concatenate([[0.0], np.cumsum(seg)])
    if cum[-1] <= 0:
        return np.repeat(ring[:1], k, 0)
    t = np.linspace(0, cum[-1], k, endpoint=False)
    return np.stack([np.interp(t, cum, closed[:, 0]), np.interp(t, cum, closed[:, 1])], 1)


def _largest_contour(mask: np.ndarray, level: float = 0.5) -> np.ndarray | None:
    """Outer contour (rows, cols) of the largest region of ``mask`` >= level, or None."""
    from skimage.measure import find_contours

    padded = np.pad(np.asarray(mask, float), 1)
    contours = find_contours(padded, level)
    if not contours:
        return None
    best = max(contours, key=lambda c: abs(_area(c)))
    return best - 1.0  # undo the padding


def _area(c: np.ndarray) -> float:
    y, x = c[:, 0], c[:, 1]
    return 0.5 * float(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1)))


def mask_outline(mask: np.ndarray, box: np.ndarray, k: int = OUTLINE_VERTICES) -> np.ndarray:
    """A box's M x M mask probabilities -> its outline (k, 2) in the box's pixel frame.

    Mask cell (i, j) covers ``box`` split into M x M cells (as torchvision's paste does); without
    a region above 0.5 the outline is the box itself (the detection is kept, its shape unknown).
    """
    x0, y0, x1, y1 = (float(v) for v in box)
    m = np.asarray(mask, float)
    c = _largest_contour(m)
    if c is None or len(c) < 3:
        ring = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]])
        return resample_ring(ring, k)
    h, w = m.shape
    xs = x0 + (c[:, 1] + 0.5) * (x1 - x0) / w
    ys = y0 + (c[:, 0] + 0.5) * (y1 - y0) / h
    return resample_ring(np.stack([xs, ys], 1), k)


def maskrcnn_to_numpy(outputs: list[dict[str, Any]]) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Predictor ``postprocess``: torchvision's list of dicts (boxes + raw 28 x 28 masks) -> per tile
    NumPy (detections (N, 4 + 2K): box then enlarged outline, labels, scores)."""
    result = []
    for out in outputs:
        boxes = out["boxes"].float().cpu().numpy()
        masks = out["masks"].float().cpu().numpy().reshape(len(boxes), *out["masks"].shape[-2:])
        outlines = (
            np.stack([mask_outline(m, b).ravel() for m, b in zip(masks, boxes)]) if len(boxes) else None
        )
        dets = (
            np.hstack([boxes, outlines]) if outlines is not None else np.zeros((0, detection_columns(ARCH)))
        )
        result.append((dets, out["labels"].cpu().numpy(), out["scores"].float().cpu().numpy()))
    return result


def polygon_mask(poly: np.ndarray, x0: int, y0: int, w: int, h: int) -> np.ndarray:
    """Boolean (h, w) raster of a polygon (pixel centres inside), for the window at (x0, y0)."""
    from skimage.draw import polygon as fill

    mask = np.zeros((h, w), bool)
    poly = np.asarray(poly, float).reshape(-1, 2)
    if len(poly) >= 3:
        rr, cc = fill(poly[:, 1] - y0 - 0.5, poly[:, 0] - x0 - 0.5, shape=(h, w))
        mask[rr, cc] = True
    return mask


def enlarged_mask(poly: np.ndarray, margin: float, width: int, height: int) -> np.ndarray:
    """The PTC polygon dilated by a disc of radius ``margin`` and clipped to the (height, width) tile:
    the instance mask target of one PTC (uint8). Computed in the enlarged box only (distance transform)."""
    from scipy import ndimage as ndi

    out = np.zeros((height, width), np.uint8)
    poly = np.asarray(poly, float).reshape(-1, 2)
    if len(poly) < 3:
        return out
    x0 = max(0, math.floor(poly[:, 0].min() - margin) - 1)
    y0 = max(0, math.floor(poly[:, 1].min() - margin) - 1)
    x1 = min(width, math.ceil(poly[:, 0].max() + margin) + 1)
    y1 = min(height, math.ceil(poly[:, 1].max() + margin) + 1)
    if x1 <= x0 or y1 <= y0:
        return out
    # the polygon is rasterised on a window padded by the margin on every side, so pixels outside
    # the tile still count as PTC when measuring distances (a PTC cut by the tile edge)
    pad = int(math.ceil(margin)) + 2
    wx0, wy0 = x0 - pad, y0 - pad
    inside = polygon_mask(poly, wx0, wy0, (x1 - x0) + 2 * pad, (y1 - y0) + 2 * pad)
    if not inside.any():
        return out
    near = ndi.distance_transform_edt(~inside) <= margin
    out[y0:y1, x0:x1] = near[pad : pad + (y1 - y0), pad : pad + (x1 - x0)]
    return out


def instance_masks(
    polygons: list, labels: np.ndarray, margins: dict[str, int], size: tuple[int, int]
) -> np.ndarray:
    """Enlarged instance masks (N, H, W) uint8 of a tile's PTC polygons (tile pixels) and labels."""
    from medseg.pathology.labels import CLASS_NAMES

    h, w = size
    if not len(polygons):
        return np.zeros((0, h, w), np.uint8)
    return np.stack(
        [
            enlarged_mask(np.asarray(p, float), margins.get(CLASS_NAMES.get(int(lab), ""), 0), w, h)
            for p, lab in zip(polygons, labels)
        ]
    )


def shrink_outline(outline: np.ndarray, margin: float, step: float = 1.0) -> np.ndarray | None:
    """Take the training margin off an enlarged outline (the inverse of :func:`enlarged_mask`).

    The outline is rasterised at ``step`` (units per pixel: level-0 px per target px), eroded by
    ``margin`` with a distance transform and traced again; None when nothing is left (the caller
    then falls back to the shrunk box, as for Faster R-CNN). Returns a closed (K + 1, 2) ring.
    """
    from scipy import ndimage as ndi

    outline = np.asarray(outline, float).reshape(-1, 2)
    if margin <= 0:
        return np.vstack([outline, outline[:1]])
    step = max(float(step), 1e-6)
    x0, y0 = outline.min(0) - 2 * step
    w = int(math.ceil((outline[:, 0].max() - x0) / step)) + 3
    h = int(math.ceil((outline[:, 1].max() - y0) / step)) + 3
    inside = polygon_mask(outline / step, x0 / step, y0 / step, w, h)
    core = ndi.distance_transform_edt(inside) * step > margin - 0.5 * step
    if core.sum() < 4:
        return None
    c = _largest_contour(core.astype(float))
    if c is None:
        return None
    ring = resample_ring(np.stack([x0 + (c[:, 1] + 0.5) * step, y0 + (c[:, 0] + 0.5) * step], 1))
    return np.vstack([ring, ring[:1]])
