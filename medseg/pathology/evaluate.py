"""Detection metrics (precision, recall, F1 per class at IoU 0.5) and slide-category agreement.

Ground-truth PTC outlines are turned into boxes with the same per-class enlargement margins the
detector was trained with (stored in its weights), so predictions and truth follow one convention.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from medseg.errors import InputError

log = logging.getLogger("medseg.pathology")

CLASS_IDS = {1: "C4d+", 2: "C4d-"}


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = np.asarray(a, float).reshape(-1, 4), np.asarray(b, float).reshape(-1, 4)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clip(0).prod(-1)
    area_a = (a[:, 2:] - a[:, :2]).clip(0).prod(-1)
    area_b = (b[:, 2:] - b[:, :2]).clip(0).prod(-1)
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)


def match_class(pred: np.ndarray, scores: np.ndarray, gt: np.ndarray, *, iou: float = 0.5) -> tuple[int, int, int]:
    """Greedy one-to-one matching by score: (true positives, false positives, false negatives)."""
    pred, gt = np.asarray(pred, float).reshape(-1, 4), np.asarray(gt, float).reshape(-1, 4)
    if len(pred) == 0 or len(gt) == 0:
        return 0, len(pred), len(gt)
    ious = box_iou(pred, gt)
    used = np.zeros(len(gt), bool)
    tp = 0
    for i in np.argsort(-np.asarray(scores)):
        cand = np.where(used, -1.0, ious[i])
        j = int(cand.argmax())
        if cand[j] >= iou:
            used[j] = True
            tp += 1
    return tp, len(pred) - tp, len(gt) - tp


def aggregate(per_class: dict[int, list[tuple[int, int, int]]]) -> dict:
    out: dict = {}
    f1s = []
    for c, rows in per_class.items():
        tp, fp, fn = (int(sum(r[k] for r in rows)) for k in range(3))
        p = tp / (tp + fp) if tp + fp else 0.0
        r = tp / (tp + fn) if tp + fn else 0.0
        f1 = 2 * p * r / (p + r) if p + r else 0.0
        name = CLASS_IDS[c]
        out.update({f"{name}_tp": tp, f"{name}_fp": fp, f"{name}_fn": fn, f"{name}_precision": p,
                    f"{name}_recall": r, f"{name}_f1": f1})
        f1s.append(f1)
    out["f1_mean"] = float(np.mean(f1s)) if f1s else 0.0
    return out


def read_detections(path: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A slide-score GeoJSON -> enlarged boxes (level-0), labels (1/2) and scores."""
    from medseg.pathology.prepare import LABELS, class_of

    data = json.loads(Path(path).read_text(encoding="utf-8"))
    boxes, labels, scores = [], [], []
    for f in data.get("features", []):
        props = f.get("properties", {})
        name = class_of((props.get("classification") or {}).get("name"))
        if name is None or "detection_box" not in props:
            continue
        boxes.append(props["detection_box"])
        labels.append(LABELS[name])
        scores.append(float(props.get("score", 1.0)))
    return np.array(boxes, float).reshape(-1, 4), np.array(labels, int), np.array(scores, float)


def analysed_truth(rows: np.ndarray, summary: dict) -> np.ndarray:
    """Truth PTCs whose centre lies in the core of a tile that was scored (feasible ROI)."""
    from medseg.pathology.tiling import TileGrid

    g = summary.get("grid")
    if not g or len(rows) == 0:
        return rows
    scale = summary["target_mpp"] / summary["slide_mpp"]
    w, h = (int(v / scale) for v in summary["slide_size"])
    grid = TileGrid(summary["slide_mpp"], summary["target_mpp"], g["tile"], g["overlap"], w, h)
    r, c = grid.owner((rows[:, 0] + rows[:, 2]) / 2 / scale, (rows[:, 1] + rows[:, 3]) / 2 / scale)
    analysed = {tuple(t) for t in g["analysed_tiles"]}
    return rows[np.array([(a, b) in analysed for a, b in zip(r, c)], bool)]


def evaluate_slide(detections: str | Path, truth: str | Path, *, margins: dict[str, int], scale: float,
                   iou: float = 0.5, summary: dict | None = None) -> dict:
    """Metrics of one slide: ``scale`` = level-0 px per target px (margins are in target px).

    With ``summary`` (slide-score's), detection metrics count only truth inside the scored
    tiles; the category agreement always uses every truth PTC of the slide.
    """
    from medseg.pathology.prepare import enlarge_boxes, read_geojson_boxes
    from medseg.pathology.score import banff_category

    all_rows = read_geojson_boxes(truth)
    rows = analysed_truth(all_rows, summary) if summary is not None else all_rows
    labels = rows[:, 4].astype(int)
    big = 1e12
    gt = enlarge_boxes(rows[:, :4], labels, {k: v * scale for k, v in margins.items()}, big, big)
    pb, pl, ps = read_detections(detections)
    per_class = {c: [match_class(pb[pl == c], ps[pl == c], gt[labels == c], iou=iou)] for c in (1, 2)}
    metrics = aggregate(per_class)
    n_pos, n_neg = int((all_rows[:, 4] == 1).sum()), int((all_rows[:, 4] == 2).sum())
    d_pos, d_neg = int((pl == 1).sum()), int((pl == 2).sum())
    metrics.update({"truth_category": banff_category(n_pos, n_neg)[0], "predicted_category": banff_category(d_pos, d_neg)[0],
                    "truth_C4d+": n_pos, "truth_C4d-": n_neg, "pred_C4d+": d_pos, "pred_C4d-": d_neg})
    metrics["category_agrees"] = metrics["truth_category"] == metrics["predicted_category"]
    metrics["_counts"] = {c: per_class[c][0] for c in per_class}
    return metrics


def evaluate_results(results_dir: str | Path, truths: list[Path], *, iou: float = 0.5) -> dict:
    """slide-eval: match each ``<name>.geojson`` truth to ``results_dir/<name>/`` of slide-score."""
    from medseg.io.atomic import safe_name

    results_dir = Path(results_dir)
    per_slide, per_class = [], {1: [], 2: []}
    for truth in truths:
        name = safe_name(Path(truth).name.split(".")[0])
        summary_path = results_dir / name / "summary.json"
        det_path = results_dir / name / "detections.geojson"
        if not summary_path.is_file() or not det_path.is_file():
            raise InputError(f"no slide-score results for {name} in {results_dir}", path=truth)
        summary = json.loads(summary_path.read_text(encoding="utf-8"))
        m = evaluate_slide(det_path, truth, margins=summary["margins"], scale=summary["target_mpp"] / summary["slide_mpp"],
                           iou=iou, summary=summary)
        for c, counts in m.pop("_counts").items():
            per_class[c].append(counts)
        per_slide.append({"slide": name, **m})
    overall = aggregate(per_class)
    agree = [s["category_agrees"] for s in per_slide]
    overall["category_agreement"] = float(np.mean(agree)) if agree else float("nan")
    overall["slides"] = len(per_slide)
    return {"overall": overall, "slides": per_slide}
