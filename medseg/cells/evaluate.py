"""Segmentation metrics against ground truth: pixel IoU/Dice, object matching, AP@0.5, Rand error.

Object matching is one-to-one and optimal (Hungarian, ``scipy.optimize.linear_sum_assignment``):
it maximises the number of pairs above the IoU threshold, then their total IoU (as StarDist's
``matching``). Above IoU 0.5 a match is unique anyway; below it a greedy "highest IoU first"
matching can pair away an object that had no other partner, which the assignment does not.
AP@t = TP / (TP + FP + FN) as in the cell-tracking and DSB 2018 challenges; ``map_50_95`` is its
mean over t = 0.5, 0.55, ..., 0.95 (as StarDist and Cellpose report).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medseg.results import FAILED, ItemResult, RunResult

log = logging.getLogger("medseg.cells")

AP_THRESHOLDS = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))  # 0.5:0.95


@dataclass
class EvalConfig:
    iou_threshold: float = 0.5  # a predicted object matches a true one above this IoU
    out: str | Path | None = None  # write the result (per image and pooled) as JSON here
    overwrite: bool = False
    progress: bool = False
    group_by: str | None = None  # "FILE.csv:column" (first column: image name); else the truth's index.tsv


def iou_matrix(truth: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """IoU between every true object (rows, labels 1..) and predicted object (columns)."""
    t, p = truth.ravel().astype(np.int64), pred.ravel().astype(np.int64)
    nt, np_ = int(t.max(initial=0)) + 1, int(p.max(initial=0)) + 1
    inter = np.bincount(t * np_ + p, minlength=nt * np_).reshape(nt, np_).astype(np.float64)
    area_t, area_p = inter.sum(1, keepdims=True), inter.sum(0, keepdims=True)
    union = area_t + area_p - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, inter / union, 0.0)
    return iou[1:, 1:]


def present_iou(truth: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """IoU matrix restricted to the labels present in each image (true rows, predicted columns)."""
    iou = iou_matrix(truth, pred)
    present_t = np.bincount(truth.ravel(), minlength=iou.shape[0] + 1)[1:] > 0
    present_p = np.bincount(pred.ravel(), minlength=iou.shape[1] + 1)[1:] > 0
    return iou[present_t][:, present_p]


def matched_ious(iou: np.ndarray, threshold: float) -> np.ndarray:
    """IoUs of the optimal one-to-one matching: most pairs with IoU > ``threshold``, then most IoU."""
    from scipy.optimize import linear_sum_assignment

    if not iou.size:
        return np.zeros(0)
    good = iou > threshold
    n = max(int(good.sum()), 1)
    # one unit per pair above the threshold dominates any IoU sum (each IoU term < 1 / (2n))
    cost = -(good.astype(np.float64) + good * iou / (2 * n))
    rows, cols = linear_sum_assignment(cost)
    keep = good[rows, cols]
    return iou[rows, cols][keep]


def match_objects(
    truth: np.ndarray, pred: np.ndarray, *, threshold: float = 0.5, iou: np.ndarray | None = None
) -> dict[str, Any]:
    """One-to-one matching; returns TP/FP/FN counts and the mean matched IoU."""
    iou = present_iou(truth, pred) if iou is None else iou
    n_true, n_pred = iou.shape
    matched = matched_ious(iou, threshold)
    tp = int(matched.size)
    return {
        "n_true": n_true,
        "n_pred": n_pred,
        "tp": tp,
        "fp": n_pred - tp,
        "fn": n_true - tp,
        "mean_matched_iou": float(matched.mean()) if tp else float("nan"),
    }


def evaluate_labels(truth: np.ndarray, pred: np.ndarray, config: EvalConfig | None = None) -> dict[str, Any]:
    """All metrics for one image (instance label arrays of the same shape)."""
    from skimage.metrics import adapted_rand_error

    cfg = config or EvalConfig()
    if truth.shape != pred.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from ground truth {truth.shape}")
    t_fg, p_fg = truth > 0, pred > 0
    inter, union = np.logical_and(t_fg, p_fg).sum(), np.logical_or(t_fg, p_fg).sum()
    total = t_fg.sum() + p_fg.sum()
    iou = present_iou(truth, pred)
    m = match_objects(truth, pred, threshold=cfg.iou_threshold, iou=iou)
    n_obj = iou.shape[0] + iou.shape[1]
    tps = {t: int(matched_ious(iou, t).size) for t in AP_THRESHOLDS}
    aps = {t: tp_t / (n_obj - tp_t) if n_obj - tp_t else 1.0 for t, tp_t in tps.items()}
    tp, fp, fn = m["tp"], m["fp"], m["fn"]
    precision = tp / (tp + fp) if tp + fp else float("nan")
    recall = tp / (tp + fn) if tp + fn else float("nan")
    f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else float("nan")
    are = adapted_rand_error(truth.astype(np.int64), pred.astype(np.int64))[0] if t_fg.any() else float("nan")
    return {
        "pixel_iou": float(inter / union) if union else 1.0,
        "pixel_dice": float(2 * inter / total) if total else 1.0,
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "ap50": tp / (tp + fp + fn) if tp + fp + fn else 1.0,
        "map_50_95": float(np.mean(list(aps.values()))),
        "ap_at": {f"{t:.2f}": round(v, 6) for t, v in aps.items()},
        "tp_at": {f"{t:.2f}": v for t, v in tps.items()},
        "adapted_rand_error": float(are),
        "count_true": m["n_true"],
        "count_pred": m["n_pred"],
        "count_rel_error": (m["n_pred"] - m["n_true"]) / m["n_true"] if m["n_true"] else float("nan"),
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "mean_matched_iou": m["mean_matched_iou"],
    }


def _nanmean(values: list[float]) -> float:
    finite = [v for v in values if np.isfinite(v)]
    return float(np.mean(finite)) if finite else float("nan")


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Pooled object counts (dataset-level AP/F1 from TP/FP/FN summed over the images: ``ap50``,
    ``map_50_95``) and the mean of per-image values (``mean_image_ap50``, ``mean_image_map_50_95``,
    pixel IoU/Dice, Rand error)."""
    if not rows:
        return {}
    keys = ["pixel_iou", "pixel_dice", "adapted_rand_error"]
    # a metric undefined on every image (no true cell anywhere: Rand error) is NaN, without numpy's warning
    out: dict[str, Any] = {f"mean_{k}": _nanmean([r[k] for r in rows]) for k in keys}
    tp, fp, fn = (sum(r[k] for r in rows) for k in ("tp", "fp", "fn"))
    out.update(
        {
            "images": len(rows),
            "tp": tp,
            "fp": fp,
            "fn": fn,
            "precision": tp / (tp + fp) if tp + fp else float("nan"),
            "recall": tp / (tp + fn) if tp + fn else float("nan"),
            "f1": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else float("nan"),
            "ap50": tp / (tp + fp + fn) if tp + fp + fn else float("nan"),
            "count_true": sum(r["count_true"] for r in rows),
            "count_pred": sum(r["count_pred"] for r in rows),
        }
    )
    pooled = []
    for t in rows[0].get("tp_at", {}):
        tp_t = sum(r["tp_at"][t] for r in rows)
        n_obj = sum(r["count_true"] + r["count_pred"] for r in rows)
        pooled.append(tp_t / (n_obj - tp_t) if n_obj - tp_t else float("nan"))
    out["map_50_95"] = float(np.mean(pooled)) if pooled else float("nan")
    out["ap_at"] = {t: round(v, 6) for t, v in zip(rows[0].get("tp_at", {}), pooled)}
    # the mean of per-image AP weighs a 5-nucleus image like a 300-nucleus one (the dataset AP above
    # pools TP/FP/FN over images, the StarDist / Kaggle definition): both are reported
    out["mean_image_ap50"] = float(np.mean([r["ap50"] for r in rows]))
    out["mean_image_map_50_95"] = float(np.mean([r["map_50_95"] for r in rows]))
    out["count_rel_error"] = (
        (out["count_pred"] - out["count_true"]) / out["count_true"] if out["count_true"] else float("nan")
    )
    return out


def summarise_groups(rows: list[dict[str, Any]], groups: list[str | None]) -> dict[str, dict[str, Any]]:
    """:func:`summarise` per group (rows without a group are left out)."""
    names = sorted({g for g in groups if g is not None})
    return {g: summarise([r for r, gg in zip(rows, groups) if gg == g]) for g in names}


def read_groups(group_by: str | None, truth_dir: Path) -> tuple[dict[str, str], str | None]:
    """Image name -> group, and where it came from.

    ``group_by`` is ``FILE:column`` (CSV, or TSV when the file ends in .tsv; the first column holds
    the image name, with or without extension). Without it, an ``index.tsv`` in the truth folder or
    its parent (as the DSB 2018 folder has: ``id``, ``kind``) gives the ``kind`` column.
    """
    import csv

    from medseg.errors import InputError

    if group_by:
        file, sep, column = group_by.rpartition(":")
        if not sep or not file or not column:
            raise InputError(f"--group-by wants FILE.csv:column, got {group_by!r}")
        path = Path(file)
    else:
        found = [d / "index.tsv" for d in (truth_dir, truth_dir.parent) if (d / "index.tsv").is_file()]
        if not found:
            return {}, None
        path, column = found[0], "kind"
    if not path.is_file():
        raise InputError("--group-by: file not found", path=path)
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f, delimiter="\t" if path.suffix.lower() == ".tsv" else ",")
            fields = reader.fieldnames or []
            if column not in fields[1:]:
                if not group_by:
                    return {}, None
                raise InputError(
                    f"--group-by: no column {column!r} (columns: {', '.join(fields)})", path=path
                )
            groups = {Path(row[fields[0]]).stem: row[column] for row in reader if row.get(fields[0])}
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"--group-by: cannot read the table ({exc})", path=path) from None
    return groups, f"{path}:{column}"


def pages_side_by_side(labels: np.ndarray, per_page: Any = None) -> np.ndarray:
    """A stack's labels (P, H, W) as one (H, P * W) image whose pages' cells stay apart (each page's
    labels shifted past the previous page's), so a stack is scored as all its pages' cells pooled;
    ``per_page`` (e.g. binary mask -> components) is applied to each page first. 2D labels pass as they are."""
    if labels.ndim == 2:
        return per_page(labels) if per_page else labels
    pages, offset = [], 0
    for page in labels:
        page = (per_page(page) if per_page else page).astype(np.int64)
        pages.append(np.where(page > 0, page + offset, 0))
        offset = int(pages[-1].max(initial=offset))
    return np.concatenate(pages, axis=1)


def _stem(path: Path) -> str:
    name = path.name
    for suffix in ("_labels.tif", "_labels.tiff", ".tif", ".tiff", ".png"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def _find_truth(pred_path: Path, truth_dir: Path) -> Path | None:
    """The truth mask for a predicted label image, by name: ``NAME_mask``/``_labels``/``_gt``... before
    a bare ``NAME`` (a folder holding the images next to their masks: the image is not the truth), never
    the predicted file itself; then names as ``cells-segment`` rewrites them (spaces, accents)."""
    from medseg.io.atomic import safe_name

    stem = pred_path.name
    for suffix in ("_labels.tif", "_labels.tiff", ".tif", ".tiff", ".png"):
        if stem.endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    found: list[tuple[str, bool, Path]] = []  # (base name, carries a mask tag, file)
    for cand in sorted(truth_dir.iterdir()):
        if cand.suffix.lower() not in (".png", ".tif", ".tiff") or cand.name.startswith("."):
            continue
        if cand.resolve() == pred_path.resolve():
            continue
        base = cand.stem
        for tag in ("_mask", "_masks", "_labels", "_label", "_gt"):
            if base.endswith(tag):
                base = base[: -len(tag)]
        found.append((base, base != cand.stem, cand))
    # cells-segment names its outputs after the image with spaces and other characters replaced
    # ("slide 1 é.png" -> "slide_1_labels.tif"): the truth "slide 1 é_mask.tif" is the same image
    for same in (lambda b: b == stem, lambda b: safe_name(b) == stem):
        for tagged in (True, False):
            hits = [cand for base, t, cand in found if t == tagged and same(base)]
            if hits:
                return hits[0]
    return None


def evaluate_folders(
    pred: list[str | Path], truth_dir: str | Path, config: EvalConfig | None = None
) -> RunResult:
    """Evaluate predicted label images against a folder of ground-truth masks (matched by name).

    One item per predicted image (failed: no matching mask, unreadable, other size); the summary
    pools the object counts of the images that could be evaluated.
    """
    from medseg.cells.io import list_images, read_mask
    from medseg.cells.weights import instances_from_mask
    from medseg.engine.progress import progress_bar
    from medseg.errors import InputError
    from medseg.io.atomic import check_apart, check_output, write_text

    cfg = config or EvalConfig()
    truth_dir = Path(truth_dir)
    if not truth_dir.is_dir():
        raise InputError("ground-truth folder not found", path=truth_dir)
    if cfg.out is not None:  # not into the predictions' folder (its summary.json) nor the truth
        check_apart(cfg.out, [truth_dir, *(q if Path(q).is_dir() else Path(q).parent for q in pred)])
        check_output(cfg.out, overwrite=cfg.overwrite)
    paths = [p for p in list_images(pred) if p.suffix.lower() in (".tif", ".tiff", ".png")]
    if any(p.name.endswith(("_labels.tif", "_labels.tiff")) for p in paths):
        # a cells-segment output folder: only its label images (not overlays / probabilities)
        paths = [p for p in paths if p.name.endswith(("_labels.tif", "_labels.tiff"))]
    if not paths:
        raise InputError(f"no predicted label images (.tif/.png) in {', '.join(map(str, pred))}")
    groups, table = read_groups(cfg.group_by, truth_dir)
    result = RunResult(command="cells-eval")
    rows: list[dict[str, Any]] = []
    row_groups: list[str | None] = []
    for path in progress_bar(paths, desc="cells-eval", enabled=cfg.progress, unit="image"):
        try:
            gt_path = _find_truth(path, truth_dir)
            if gt_path is None:
                raise InputError(f"no ground-truth mask with a matching name in {truth_dir}")
            truth, predicted = read_mask(gt_path, allow_stack=True), read_mask(path, allow_stack=True)
            if truth.shape != predicted.shape:
                raise InputError(
                    f"size {'x'.join(map(str, predicted.shape))} differs from the ground truth "
                    f"{gt_path.name} ({'x'.join(map(str, truth.shape))})"
                )
            truth = pages_side_by_side(truth, instances_from_mask)
            # a binary prediction (another tool's foreground mask) is split into its cells as the truth is
            row = evaluate_labels(truth, pages_side_by_side(predicted, instances_from_mask), cfg)
        except InputError as exc:
            reason = exc.message if exc.path in (None, path) else str(exc)
            log.info("%s: failed: %s", path.name, reason)
            result.add(ItemResult(name=str(path), status=FAILED, reason=reason))
            continue
        rows.append(row)
        row_groups.append(groups.get(_stem(path)) if table else None)
        group = {"group": row_groups[-1]} if table else {}
        result.add(ItemResult(name=str(path), metrics={"truth": gt_path.name, **group, **row}))
    result.summary = {"iou_threshold": cfg.iou_threshold, "truth": str(truth_dir), **summarise(rows)}
    if table:
        result.summary["group_by"] = table
        result.summary["groups"] = summarise_groups(rows, row_groups)
    if cfg.out is not None:
        result.outputs["metrics"] = str(cfg.out)
        write_text(cfg.out, json.dumps(result.to_dict(), indent=2) + "\n")
    return result


def _fmt(value: Any, digits: int) -> str:
    return "n/a" if value is None or not np.isfinite(value) else f"{value:.{digits}f}"


def human_summary(result: RunResult) -> str:
    """One line for the terminal (no numbers when no image could be evaluated)."""
    s = result.summary
    if not s.get("images"):
        return "no image could be evaluated"
    text = (
        f"{s['images']} image(s): pixel IoU {_fmt(s['mean_pixel_iou'], 4)}, Dice {_fmt(s['mean_pixel_dice'], 4)}, "
        f"dataset AP@{s['iou_threshold']:g} {_fmt(s['ap50'], 4)}, mAP@0.5:0.95 {_fmt(s['map_50_95'], 4)} "
        f"(mean per image {_fmt(s['mean_image_ap50'], 4)}, {_fmt(s['mean_image_map_50_95'], 4)}), "
        f"precision {_fmt(s['precision'], 3)}, recall {_fmt(s['recall'], 3)}, F1 {_fmt(s['f1'], 3)}, adapted Rand "
        f"error {_fmt(s['mean_adapted_rand_error'], 4)}, cells found {s['count_pred']} of {s['count_true']}"
    )
    for name, g in (s.get("groups") or {}).items():
        text += (
            f"\n  {name}: {g['images']} image(s), dataset AP@{s['iou_threshold']:g} {_fmt(g['ap50'], 4)}, "
            f"mAP@0.5:0.95 {_fmt(g['map_50_95'], 4)} (mean per image {_fmt(g['mean_image_ap50'], 4)}, "
            f"{_fmt(g['mean_image_map_50_95'], 4)}), cells found {g['count_pred']} of {g['count_true']}"
        )
    return text
