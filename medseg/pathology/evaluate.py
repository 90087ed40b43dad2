"""Detection metrics (precision, recall, F1 per class at IoU 0.5) and slide-category agreement.

Ground-truth PTC outlines are turned into boxes with the same per-class enlargement margins the
detector was trained with (stored in its weights), so predictions and truth follow one convention.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from medseg.errors import InputError, MedsegError
from medseg.pathology.labels import CLASS_NAMES, LABELS, NEGATIVE, POSITIVE, class_of
from medseg.results import FAILED, SKIPPED, ItemResult, RunResult

log = logging.getLogger("medseg.pathology")


@dataclass
class EvalConfig:
    """How detections are matched to the truth."""

    iou: float = 0.5  # a detection matches a truth box of its class at this IoU or more
    # QuPath points (PTC centres) in the truth: boxes of this diameter (um), as in slide-prepare
    point_diameter_um: float = 15.0
    class_map: dict[str, str] = field(default_factory=dict)  # user class name -> C4d+ / C4d-

    def check(self) -> None:
        if not 0 < self.iou < 1:
            raise InputError(f"--iou must be between 0 and 1, got {self.iou:g}")
        if not (math.isfinite(self.point_diameter_um) and self.point_diameter_um > 0):
            raise InputError(f"--point-size must be > 0 um, got {self.point_diameter_um:g}")


def match_class(
    pred: np.ndarray, scores: np.ndarray, gt: np.ndarray, *, iou: float = 0.5
) -> tuple[int, int, int]:
    """Greedy one-to-one matching by score: (true positives, false positives, false negatives)."""
    import torch
    from torchvision.ops import box_iou

    pred, gt = np.asarray(pred, float).reshape(-1, 4), np.asarray(gt, float).reshape(-1, 4)
    if len(pred) == 0 or len(gt) == 0:
        return 0, len(pred), len(gt)
    ious = np.nan_to_num(box_iou(torch.from_numpy(pred), torch.from_numpy(gt)).numpy(), nan=0.0)
    used = np.zeros(len(gt), bool)
    tp = 0
    for i in np.argsort(-np.asarray(scores), kind="stable"):
        cand = np.where(used, -1.0, ious[i])
        j = int(cand.argmax())
        if cand[j] >= iou:
            used[j] = True
            tp += 1
    return tp, len(pred) - tp, len(gt) - tp


def aggregate(per_class: dict[int, list[tuple[int, int, int]]]) -> dict:
    """Summed counts per class -> precision, recall, F1 per class and their mean F1."""
    out: dict = {}
    f1s = []
    for c, rows in per_class.items():
        tp, fp, fn = (int(sum(r[k] for r in rows)) for k in range(3))
        p = tp / (tp + fp) if tp + fp else 0.0
        r = tp / (tp + fn) if tp + fn else 0.0
        f1 = 2 * p * r / (p + r) if p + r else 0.0
        name = CLASS_NAMES[c]
        out.update(
            {
                f"{name}_tp": tp,
                f"{name}_fp": fp,
                f"{name}_fn": fn,
                f"{name}_precision": p,
                f"{name}_recall": r,
                f"{name}_f1": f1,
            }
        )
        f1s.append(f1)
    out["f1_mean"] = float(np.mean(f1s)) if f1s else 0.0
    return out


def read_detections(path: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A slide-score GeoJSON -> enlarged boxes (level-0), labels (1/2) and scores."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read the detections: {exc}", path=path) from None
    boxes, labels, scores = [], [], []
    for index, f in enumerate(data.get("features", [])):
        props = f.get("properties", {})
        name = class_of((props.get("classification") or {}).get("name"))
        if name is None or "detection_box" not in props:
            continue
        try:
            box = np.asarray(props["detection_box"], float).reshape(4)
        except (TypeError, ValueError):
            raise InputError(f"feature index {index}: detection_box is not 4 numbers", path=path) from None
        if not np.isfinite(box).all():
            raise InputError(f"feature index {index}: detection_box has NaN or infinite values", path=path)
        boxes.append(box)
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


def _category(text: str) -> str:
    """A category without its PTC count: "not assessable (12 PTCs)" and "(20 PTCs)" agree."""
    return "not assessable" if text.startswith("not assessable") else text


def evaluate_slide(
    detections: str | Path,
    truth: str | Path,
    *,
    margins: dict[str, int],
    scale: float,
    iou: float = 0.5,
    summary: dict | None = None,
    point_size: float | None = None,
    class_map: dict[str, str] | None = None,
) -> dict:
    """Metrics of one slide: ``scale`` = level-0 px per target px (margins are in target px).

    With ``summary`` (slide-score's), detection metrics count only truth inside the scored
    tiles; the category agreement always uses every truth PTC of the slide.
    """
    from medseg.pathology.prepare import (
        check_inside,
        enlarge_boxes,
        load_features,
        outside_slide,
        read_geojson_boxes,
    )
    from medseg.pathology.score import banff_category

    pos_id, neg_id = LABELS[POSITIVE], LABELS[NEGATIVE]
    # points need a size (level-0 px): without one, a truth of QuPath points was read as no PTC at all
    all_rows = read_geojson_boxes(truth, point_size=point_size, class_map=class_map)
    if len(all_rows) == 0 and load_features(Path(truth)):  # features, none a C4d+/C4d- PTC
        raise InputError(
            f"no {POSITIVE}/{NEGATIVE} PTC in the truth (other class names or shapes): every detection "
            "would count as false; map your class names with --class-map, e.g. Positive=C4d+,Negative=C4d-",
            path=truth,
        )
    if summary is not None and summary.get("slide_size"):
        w, h = (int(v) for v in summary["slide_size"])
        if check_inside(all_rows, w, h, Path(truth)):  # all outside: InputError, the slide fails
            all_rows = all_rows[~outside_slide(all_rows, w, h)]
    rows = analysed_truth(all_rows, summary) if summary is not None else all_rows
    labels = rows[:, 4].astype(int)
    big = 1e12
    gt = enlarge_boxes(rows[:, :4], labels, {k: v * scale for k, v in margins.items()}, big, big)
    pb, pl, ps = read_detections(detections)
    per_class = {c: [match_class(pb[pl == c], ps[pl == c], gt[labels == c], iou=iou)] for c in CLASS_NAMES}
    metrics = aggregate(per_class)
    n_pos, n_neg = int((all_rows[:, 4] == pos_id).sum()), int((all_rows[:, 4] == neg_id).sum())
    d_pos, d_neg = int((pl == pos_id).sum()), int((pl == neg_id).sum())
    # the rule slide-score applied: below min_ptcs PTCs a slide has no category, truth included
    min_ptcs = int((summary or {}).get("min_ptcs") or 1)
    metrics.update(
        {
            "truth_category": banff_category(n_pos, n_neg, min_ptcs)[0],
            "predicted_category": banff_category(d_pos, d_neg, min_ptcs)[0],
            f"truth_{POSITIVE}": n_pos,
            f"truth_{NEGATIVE}": n_neg,
            f"pred_{POSITIVE}": d_pos,
            f"pred_{NEGATIVE}": d_neg,
        }
    )
    metrics["category_agrees"] = _category(metrics["truth_category"]) == _category(
        metrics["predicted_category"]
    )
    metrics["_counts"] = {c: per_class[c][0] for c in per_class}
    return metrics


def _truth_files(truths: list[str | Path]) -> list[Path]:
    """The truth GeoJSON files: folders give their ``*.geojson``; a file given twice counts once
    (it would be counted twice in the pooled metrics)."""
    out: list[Path] = []
    seen: set[Path] = set()
    for t in map(Path, truths):
        files = sorted(t.glob("*.geojson")) if t.is_dir() else [t]
        if t.is_dir() and not files:
            raise InputError("folder without .geojson truth files", path=t)
        for f in files:
            key = f.resolve()
            if key in seen:
                log.warning("%s: given twice, evaluated once", f)
                continue
            seen.add(key)
            out.append(f)
    if not out:
        raise InputError("no truth GeoJSON files given")
    return out


def evaluate_results(
    results_dir: str | Path, truths: list[str | Path], config: EvalConfig | None = None
) -> RunResult:
    """slide-eval: match each ``<name>.geojson`` truth to ``results_dir/<name>/`` of slide-score.

    One item per truth file; a truth without slide-score results (or unreadable) is a failed item
    and the others are still evaluated. ``summary`` holds the pooled metrics of the evaluated slides.
    """
    from medseg.io.atomic import safe_name
    from medseg.pathology.slide import slide_stem

    cfg = config or EvalConfig()
    cfg.check()
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        raise InputError("no slide-score results folder here", path=results_dir)
    files = _truth_files(truths)
    from medseg.pathology.prepare import check_annotation_files

    check_annotation_files(files, cfg.class_map)  # NaN or zero-area truth PTCs: exit 2, before any work
    run = RunResult("slide-eval")
    per_class: dict[int, list] = {c: [] for c in CLASS_NAMES}
    agree = []
    for truth in files:
        name = safe_name(slide_stem(truth))
        summary_path, det_path = (
            results_dir / name / "summary.json",
            results_dir / name / "detections.geojson",
        )
        try:
            if not truth.is_file():
                raise InputError("truth file not found", path=truth)
            if not summary_path.is_file() or not det_path.is_file():
                raise InputError(f"no slide-score results for {name} in {results_dir}")
            summary = json.loads(summary_path.read_text(encoding="utf-8"))
            if summary.get("status") == "qc_failed":  # never scored: no detections to judge
                run.add(ItemResult(name, SKIPPED, f"not scored by slide-score: {summary.get('reason', '')}"))
                log.warning("%s: skipped: not scored (stain QC)", name)
                continue
            m = evaluate_slide(
                det_path,
                truth,
                margins=summary["margins"],
                scale=summary["target_mpp"] / summary["slide_mpp"],
                iou=cfg.iou,
                summary=summary,
                point_size=cfg.point_diameter_um / summary["slide_mpp"],
                class_map=cfg.class_map,
            )
        except (MedsegError, OSError, ValueError, KeyError) as exc:
            reason = exc.message if isinstance(exc, MedsegError) else f"unreadable slide-score results: {exc}"
            run.add(ItemResult(name, FAILED, reason))
            log.warning("%s: failed: %s", name, reason)
            continue
        for c, counts in m.pop("_counts").items():
            per_class[c].append(counts)
        agree.append(m["category_agrees"])
        run.add(ItemResult(name, metrics=m, outputs={"truth": str(truth), "detections": str(det_path)}))
    overall = aggregate(per_class)
    overall["category_agreement"] = float(np.mean(agree)) if agree else float("nan")
    overall["slides"] = len(agree)
    run.summary = {"overall": overall, "config": asdict(cfg)}
    return run
