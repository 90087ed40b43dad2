"""Instance targets a cell U-Net can be trained on, and what its output channels mean at inference.

Touching nuclei are where instance AP is lost, so the same backbone can learn one of three targets
(recorded in the weights' ``meta.config["instance_target"]``; weights without the key are "borders"):

* ``borders`` (2 channels, softmax): background / cell with the line where two cells touch removed,
  trained with the 2015 border weight map (``medseg.cells.weights``); instances by thresholding and
  a solidity-gated watershed (``instances_from_probability``).
* ``3class`` (3 channels, softmax): background / cell interior / cell boundary (every instance's
  inner contour, so a touching pair is split by a 2 px boundary band), cross-entropy (optionally
  class-balanced: ``MAX_CLASS_WEIGHT``);
  instances = interior components grown by a watershed into the cell mask (interior + boundary).
* ``dist`` (2 softmax channels + 1 sigmoid regression channel): background / cell, plus each
  instance's distance transform normalised to 0..1 (1 at its centre, falling to 0 at its border,
  including a touching border); loss CE + ``dist_weight`` x L1 inside cells; instances = watershed on
  the negated predicted distance inside the cell mask, seeded by its h-maxima (DIST / StarDist-like).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from medseg.cells.weights import (
    WeightMapConfig,
    border_weight_map,
    class_weights,
    separate_touching,
    touching_borders,
)

BORDERS, THREE_CLASS, DIST = "borders", "3class", "dist"
TARGETS = (BORDERS, THREE_CLASS, DIST)
# class balancing of the 3-class target (cap of N / (3 N_class)); 1 = plain CE. The shipped weights were
# trained with 10 on the 520 DSB images; fine-tuned with it on 60 nuclei, outlines grew (boundary
# predicted outside the cells) and AP fell, so fine-tuning defaults to plain CE (docs/cells.md)
MAX_CLASS_WEIGHT = 1.0
DIST_WEIGHT = 1.0  # lambda of the L1 distance term (the CE of a trained net is about 0.1-0.2)


def check_target(kind: str) -> str:
    if kind not in TARGETS:
        raise ValueError(f"unknown instance target {kind!r} (one of {', '.join(TARGETS)})")
    return kind


def target_of(meta_config: dict[str, Any] | None) -> str:
    """The target kind a weights file was trained for; files without the key are ``borders``."""
    return check_target(str((meta_config or {}).get("instance_target") or BORDERS))


def class_count(kind: str) -> int:
    """Softmax (class) channels of the net's output for ``kind``."""
    return 3 if check_target(kind) == THREE_CLASS else 2


def out_channels(kind: str) -> int:
    """All output channels: the class channels plus, for ``dist``, the regression channel."""
    return 3 if check_target(kind) in (THREE_CLASS, DIST) else 2


def inner_boundary(labels: np.ndarray) -> np.ndarray:
    """Pixels of a cell with a 4-neighbour of another label (background or another cell).

    Between two touching cells both sides are marked (2 px); at an outer edge 1 px inside the cell.
    Cells too small to keep an interior pixel keep their pixels as interior (they need a seed).
    """
    labels = np.asarray(labels)
    edge = np.zeros(labels.shape, dtype=bool)
    for axis in (0, 1):
        a = labels.swapaxes(0, axis)
        differ = a[1:] != a[:-1]
        e = edge.swapaxes(0, axis)
        e[1:] |= differ
        e[:-1] |= differ
    # the image border is not a cell border: nothing marked there beyond the differences above
    edge &= labels > 0
    interior_count = np.bincount(labels[~edge & (labels > 0)].ravel(), minlength=int(labels.max()) + 1)
    no_interior = interior_count == 0
    no_interior[0] = False
    edge &= ~no_interior[labels]
    return edge


def three_class_target(labels: np.ndarray) -> np.ndarray:
    """uint8 map: 0 background, 1 cell interior, 2 cell boundary (inner contour, incl. touching)."""
    target = (np.asarray(labels) > 0).astype(np.uint8)
    target[inner_boundary(labels)] = 2
    return target


def balanced_weights(target: np.ndarray, n_classes: int, max_weight: float = MAX_CLASS_WEIGHT) -> np.ndarray:
    """Per-pixel weight N / (K N_class) of its class, clipped to [1/max, max] (absent classes: 1)."""
    counts = np.bincount(target.ravel(), minlength=n_classes).astype(np.float64)
    w = np.where(counts > 0, target.size / (n_classes * np.maximum(counts, 1)), 1.0)
    return np.clip(w, 1 / max_weight, max_weight).astype(np.float32)[target]


def normalised_distance(labels: np.ndarray) -> np.ndarray:
    """Per-instance Euclidean distance to the instance's border (other cells count as outside),
    divided by the instance's maximum: 1 at the centre, about 0 at the edge; 0 in background."""
    labels = np.asarray(labels)
    out = np.zeros(labels.shape, dtype=np.float32)
    for index, sl in enumerate(ndimage.find_objects(labels), start=1):
        if sl is None:
            continue
        grown = tuple(slice(max(s.start - 1, 0), s.stop + 1) for s in sl)
        inside = labels[grown] == index
        d = ndimage.distance_transform_edt(np.pad(inside, 1))[1:-1, 1:-1]
        peak = d.max()
        if peak > 0:
            region = out[grown]
            region[inside] = (d[inside] / peak).astype(np.float32)
    return out


def make_targets(
    labels: np.ndarray,
    kind: str,
    weight_map: WeightMapConfig | None = None,
    max_class_weight: float = MAX_CLASS_WEIGHT,
    touch_weight: float = 0.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(class target uint8, pixel weights float32, extra regression target or None) for ``kind``.

    ``touch_weight`` (3class): added to the weight of the boundary pixels where two cells touch, the
    pixels whose misreading merges two nuclei (the 2015 paper's border term, for this target)."""
    kind = check_target(kind)
    if kind == BORDERS:
        separated = separate_touching(labels)
        return (separated > 0).astype(np.uint8), border_weight_map(separated, weight_map), None
    if kind == THREE_CLASS:
        target = three_class_target(labels)
        weights = balanced_weights(target, 3, max_class_weight)
        if touch_weight > 0:
            weights[touching_borders(labels)] += np.float32(touch_weight)
        return target, weights, None
    fg = (np.asarray(labels) > 0).astype(np.uint8)
    return fg, class_weights(labels), normalised_distance(labels)


def instance_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor,
    extra: torch.Tensor | None,
    kind: str,
    dist_weight: float = DIST_WEIGHT,
) -> torch.Tensor:
    """Weighted cross-entropy over the class channels, plus for ``dist`` the L1 distance inside cells."""
    if logits.shape[-2:] != target.shape[-2:]:
        raise ValueError(f"logits {tuple(logits.shape)} and target {tuple(target.shape)} differ in size")
    k = class_count(kind)
    logits = logits.float()
    loss = (F.cross_entropy(logits[:, :k], target, reduction="none") * weight).mean()
    if kind == DIST:
        if extra is None:
            raise ValueError("the dist target needs the distance map")
        inside = (target > 0).float()
        err = (torch.sigmoid(logits[:, k]) - extra).abs() * inside
        loss = loss + dist_weight * err.sum() / inside.sum().clamp(min=1.0)
    return loss


class OutputPost:
    """Predictor postprocess: softmax over the class channels, sigmoid on the regression channels.

    (A plain softmax over every channel would mix the distance into the class probabilities.)
    A class, not a closure, so that a predictor can be pickled to Ray workers.
    """

    def __init__(self, n_classes: int) -> None:
        self.n_classes = n_classes

    def __call__(self, y: Any) -> np.ndarray:
        y = torch.as_tensor(y).float()
        k = self.n_classes
        return torch.cat([torch.softmax(y[:, :k], dim=1), torch.sigmoid(y[:, k:])], dim=1).cpu().numpy()


def postprocess_for(kind: str) -> str | OutputPost:
    """What the engine Predictor applies to a net trained for ``kind``."""
    return OutputPost(class_count(kind)) if check_target(kind) == DIST else "softmax"


def foreground_probability(maps: np.ndarray, kind: str) -> np.ndarray:
    """(H, W) probability that a pixel belongs to a cell, from the (K, H, W) output maps."""
    if check_target(kind) == THREE_CLASS:
        return maps[1] + maps[2]
    return maps[1]


def adapt_head(weight: torch.Tensor, bias: torch.Tensor | None, kind: str) -> tuple[torch.Tensor, Any]:
    """A new last 1x1 conv for ``kind`` from a 2-class (bg, cell) head: rows bg and cell are copied;
    3class's boundary row starts between bg and cell (the edge is where the net was unsure); dist's
    regression row starts as half the cell-minus-bg logit (confident inside, about 0.5 at edges)."""
    if weight.shape[0] != 2:
        raise ValueError(f"can only adapt a 2-class head, this one has {weight.shape[0]} rows")
    extra_w = (weight[0] + weight[1]) / 2 if kind == THREE_CLASS else (weight[1] - weight[0]) / 2
    new_w = torch.cat([weight, extra_w[None]], dim=0)
    new_b = None
    if bias is not None:
        extra_b = (bias[0] + bias[1]) / 2 if kind == THREE_CLASS else (bias[1] - bias[0]) / 2
        new_b = torch.cat([bias, extra_b[None]])
    return new_w, new_b
