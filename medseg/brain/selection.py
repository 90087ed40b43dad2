"""Epoch selection by Dice on held-out cases, cheap enough to run after every epoch (issue 19).

Havaei's phase 1 trains on class-balanced patches; its class-balanced validation loss was lowest after
epoch 1 in every real-data run, so choosing phase 1's epoch by that loss handed phase 2 an under-trained
net. Here each epoch is scored the way the weights are used: whole axial slices (fully convolutional,
as ``brain-segment`` runs them) of held-out cases, mean Dice of WT / TC / ET.

* The slices: ``n`` axial slices evenly spaced through each held-out case's tumour (its z-extent in
  the truth), cropped in-plane to their brain box; fixed for the whole run, so epochs are compared on
  the same voxels. For a cascade the frozen first stage's maps are already computed for these cases
  (:meth:`~medseg.brain.sampling.TrainingCase.set_first_stage`), so scoring runs only the trained net.
* Phase 1 (class-balanced net): the logits are first shifted by the log of the natural class
  frequencies inside the brain (Bayes' prior correction from balanced to natural priors: what
  phase 2 mostly learns), so the Dice measures how well the net separates the classes, not how much
  a balanced softmax over-calls tumour. Phase 2: the plain argmax.
* The score is the mean over cases of the mean of the three regions' Dice (a region absent from
  both prediction and truth of a case scores 1, as in ``brain-eval``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from medseg.brain.models import N_CLASSES, is_cascade
from medseg.brain.sampling import TrainingCase

REGIONS = ("WT", "TC", "ET")
SCORE = "val_dice"  # the metric name in the trainer's history


def tumour_slices(labels: np.ndarray, mask: np.ndarray, n: int) -> np.ndarray:
    """``n`` axial slice indices evenly spaced through the tumour's z-extent (all of them if fewer);
    the brain's z-extent for a case without tumour."""
    zs = np.flatnonzero((labels > 0).any(axis=(1, 2)))
    if zs.size == 0:
        zs = np.flatnonzero(mask.any(axis=(1, 2)))
    if zs.size <= n:
        return zs
    return np.unique(np.round(np.linspace(zs[0], zs[-1], n)).astype(np.int64))


def natural_log_prior(cases: list[TrainingCase]) -> np.ndarray:
    """Log of each class's frequency inside the brain over ``cases`` (add-one smoothed): the shift that
    turns a class-balanced net's logits into natural-prior ones."""
    counts = np.zeros(N_CLASSES, np.float64)
    for c in cases:
        counts += np.bincount(c.labels[c.mask].ravel(), minlength=N_CLASSES)[:N_CLASSES]
    return np.log((counts + 1.0) / (counts.sum() + N_CLASSES))


@dataclass
class SliceSet:
    """One held-out case's fixed scoring slices: net input, first-stage maps (cascades), truth, brain."""

    name: str
    x: np.ndarray  # (n, 4, h + 32, w + 32) padded input slices
    probs: np.ndarray | None  # (n, 5, h + probs_size - 1, w + probs_size - 1)
    labels: np.ndarray  # (n, h, w) internal labels
    mask: np.ndarray  # (n, h, w) brain


def build_slice_sets(cases: list[TrainingCase], n: int, *, probs_size: int | None) -> list[SliceSet]:
    """The scoring slices of each case (see the module doc); cascades need ``case.probs`` set."""
    sets = []
    for c in cases:
        zs = tumour_slices(c.labels, c.mask, n)
        brain = c.mask[zs]
        ys, xs = np.flatnonzero(brain.any(axis=(0, 2))), np.flatnonzero(brain.any(axis=(0, 1)))
        if ys.size == 0:
            continue
        y0, y1, x0, x1 = int(ys[0]), int(ys[-1]) + 1, int(xs[0]), int(xs[-1]) + 1
        x = c.padded[:, zs, y0 : y1 + 32, x0 : x1 + 32].transpose(1, 0, 2, 3)
        probs = None
        if probs_size is not None:
            if c.probs is None:
                raise ValueError(f"{c.name}: the first stage's maps are not computed")
            e = probs_size - 1
            probs = c.probs[:, zs, y0 : y1 + e, x0 : x1 + e].transpose(1, 0, 2, 3)
        sets.append(
            SliceSet(
                c.name,
                np.ascontiguousarray(x),
                None if probs is None else np.ascontiguousarray(probs),
                c.labels[zs, y0:y1, x0:x1],
                brain[:, y0:y1, x0:x1],
            )
        )
    return sets


def region_dice(pred: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Dice of WT / TC / ET between two internal label maps (1 where both are empty)."""
    masks = {
        "WT": (pred > 0, truth > 0),
        "TC": (np.isin(pred, (1, 3, 4)), np.isin(truth, (1, 3, 4))),
        "ET": (pred == 4, truth == 4),
    }
    out = {}
    for r, (p, t) in masks.items():
        n = int(p.sum()) + int(t.sum())
        out[r] = 1.0 if n == 0 else 2.0 * int(np.count_nonzero(p & t)) / n
    return out


@torch.inference_mode()
def slice_logits(model: nn.Module, s: SliceSet, device: torch.device, *, batch: int = 4) -> np.ndarray:
    """(n, 5, h, w) logits of ``model`` (in eval mode) on the case's scoring slices."""
    outs = []
    for i in range(0, len(s.x), batch):
        x = torch.from_numpy(s.x[i : i + batch]).to(device)
        if is_cascade(model):
            assert s.probs is not None
            y = model.combine(x, torch.from_numpy(s.probs[i : i + batch]).to(device))
        else:
            y = model(x)
        outs.append(y.float().cpu().numpy())
    return np.concatenate(outs)


def dice_scores(
    model: nn.Module, sets: list[SliceSet], device: torch.device, *, log_prior: np.ndarray | None = None
) -> dict[str, float]:
    """``val_dice`` (mean over cases of the WT/TC/ET mean) and the per-region means, for the history.

    ``log_prior``: added to the logits before the argmax (phase 1, see the module doc)."""
    rows = []
    for s in sets:
        logits = slice_logits(model, s, device)
        if log_prior is not None:
            logits = logits + log_prior.astype(np.float32)[None, :, None, None]
        pred = logits.argmax(1).astype(np.uint8)
        pred[~s.mask] = 0
        rows.append(region_dice(pred, s.labels))
    if not rows:
        return {SCORE: float("nan")}
    out = {f"{SCORE}_{r}": float(np.mean([row[r] for row in rows])) for r in REGIONS}
    out[SCORE] = float(np.mean([np.mean([row[r] for r in REGIONS]) for row in rows]))
    return out


def best_epoch(history: list[dict], metric: str, mode: str) -> tuple[float | None, int]:
    """(best value, its epoch) of ``metric`` in a trainer history (the first epoch wins a tie)."""
    values = [(h[metric], h["epoch"]) for h in history if isinstance(h.get(metric), (int, float))]
    values = [(v, e) for v, e in values if np.isfinite(v)]
    if not values:
        return None, 0
    pick = min(values, key=lambda t: (t[0] if mode == "min" else -t[0], t[1]))
    return pick[0], pick[1]
