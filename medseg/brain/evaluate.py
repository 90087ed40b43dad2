"""Dice, HD95 (mm) and volumes (mL, prediction and truth) for whole tumour, tumour core and
enhancing tumour, per case and summary.

Metrics come from MONAI (``DiceMetric``, ``HausdorffDistanceMetric`` with ``percentile=95`` and
the voxel spacing) so numbers are comparable with the BraTS literature. Conventions for empty
regions: both empty -> Dice 1, HD95 0; one empty -> Dice 0, HD95 NaN (reported as n/a and left
out of the mean, with the count of such cases).
"""

from __future__ import annotations

import logging
import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medseg.brain.io import CaseFiles, error_reason, find_case_files, labels_to_internal, read_image
from medseg.brain.segment import REGIONS, region_masks, region_volumes_ml
from medseg.errors import InputError
from medseg.results import FAILED, ItemResult, RunResult

log = logging.getLogger("medseg.brain")

REPORT_FILES = ("report.html", "metrics.json", "metrics.csv")


def region_metrics(
    pred: np.ndarray, truth: np.ndarray, spacing: tuple[float, float, float]
) -> dict[str, float]:
    """Dice and HD95 (mm) per region for two internal label maps on the same grid."""
    import torch
    from monai.metrics import compute_dice, compute_hausdorff_distance

    out: dict[str, float] = {}
    pm, tm = region_masks(pred), region_masks(truth)
    for r in REGIONS:
        p, t = pm[r], tm[r]
        if not p.any() and not t.any():
            out[f"dice_{r}"], out[f"hd95_{r}"] = 1.0, 0.0
            continue
        if not p.any() or not t.any():
            out[f"dice_{r}"], out[f"hd95_{r}"] = 0.0, math.nan
            continue
        pt = torch.from_numpy(p[None, None].astype(np.float32))
        tt = torch.from_numpy(t[None, None].astype(np.float32))
        out[f"dice_{r}"] = float(compute_dice(pt, tt, include_background=True)[0, 0])
        with warnings.catch_warnings():  # MONAI 1.5 deprecation noise inside its own helpers
            warnings.simplefilter("ignore", FutureWarning)
            hd = compute_hausdorff_distance(
                pt, tt, include_background=True, percentile=95, spacing=[float(s) for s in spacing]
            )
        out[f"hd95_{r}"] = float(hd[0, 0])
    return out


@dataclass
class EvalPair:
    name: str
    pred: Path
    truth: Path
    image: Path | None = None  # FLAIR, background of the overlay figures


def find_pair(pred_dir: Path, case_dir: Path) -> EvalPair:
    """Match a ground-truth case folder with ``<pred_dir>/<case>_seg.nii.gz`` (or ``<case>.nii.gz``)."""
    files: CaseFiles = find_case_files(case_dir)
    if files.seg is None:
        raise InputError("case has no ground-truth segmentation", path=case_dir)
    cands = [
        pred_dir / f"{files.name}_seg.nii.gz",
        pred_dir / f"{files.name}.nii.gz",
        pred_dir / files.name / f"{files.name}_seg.nii.gz",
    ]
    pred = next((c for c in cands if c.is_file()), None)
    if pred is None:
        raise InputError(f"no prediction for case {files.name} (looked for {cands[0].name})", path=pred_dir)
    return EvalPair(files.name, pred, files.seg, files.modalities["flair"])


def evaluate_pair(
    pair: EvalPair, *, labels: str = "brats2021", pred_labels: str | None = None
) -> tuple[dict[str, float], np.ndarray, np.ndarray]:
    """Metrics of one case, and its internal prediction and truth maps (for the overlays)."""
    pred, pgeo = read_image(pair.pred)
    truth, tgeo = read_image(pair.truth)
    diff = pgeo.same_grid(tgeo)
    if diff:
        raise InputError(f"prediction and ground truth grids differ ({diff})", path=pair.pred)
    p = labels_to_internal(np.rint(pred).astype(np.int64), labels=pred_labels or labels, path=pair.pred)
    t = labels_to_internal(np.rint(truth).astype(np.int64), labels=labels, path=pair.truth)
    return {**region_metrics(p, t, tgeo.spacing), **volume_metrics(p, t, tgeo.spacing)}, p, t


def volume_metrics(
    pred: np.ndarray, truth: np.ndarray, spacing: tuple[float, float, float]
) -> dict[str, float]:
    """Region volumes in mL of prediction and truth (``pred_WT_ml``, ``truth_WT_ml`` ...).

    Over- or under-calling (e.g. normal tissue called edema) shows here even where Dice is middling.
    """
    vp, vt = region_volumes_ml(pred, spacing), region_volumes_ml(truth, spacing)
    return {f"{who}_{r}_ml": v[f"{r}_ml"] for who, v in (("pred", vp), ("truth", vt)) for r in REGIONS}


def summarise(rows: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    """Mean, SD, median per metric over cases; undefined values (NaN) are counted, not averaged."""
    summary: dict[str, dict[str, float]] = {}
    for key in (k for k in (rows[0] if rows else {}) if k != "case"):
        vals = np.array([r[key] for r in rows], float)
        ok = vals[np.isfinite(vals)]
        summary[key] = {
            "mean": float(ok.mean()) if ok.size else math.nan,
            "sd": float(ok.std(ddof=1)) if ok.size > 1 else math.nan,
            "median": float(np.median(ok)) if ok.size else math.nan,
            "n": int(ok.size),
            "n_undefined": int(vals.size - ok.size),
        }
    return summary


@dataclass
class EvalConfig:
    labels: str = "brats2021"  # ground-truth label convention
    pred_labels: str | None = None  # prediction convention (default: ``labels``)
    overwrite: bool = False
    progress: bool = False


def evaluate_cases(
    pred_dir: str | Path, case_dirs: list[str | Path], out_dir: str | Path, config: EvalConfig | None = None
) -> RunResult:
    """brain-eval: metrics of predictions in ``pred_dir`` against case folders; HTML report in ``out_dir``.

    One item per case. In a batch, a case without a prediction, ground truth or matching grid is
    recorded as failed and the others are evaluated; a single case that fails raises InputError.
    The report (``report.html``, ``metrics.json``, ``metrics.csv``) describes this run and is
    written when at least one case was evaluated.
    """
    from medseg.brain.io import expand_case_dirs
    from medseg.brain.report import write_eval_report
    from medseg.engine.progress import progress_bar
    from medseg.io.atomic import check_output

    cfg = config or EvalConfig()
    out_dir = Path(out_dir)
    for name in REPORT_FILES:
        check_output(out_dir / name, overwrite=cfg.overwrite)
    pred_dir = Path(pred_dir)
    if not pred_dir.is_dir():
        raise InputError("prediction folder not found", path=pred_dir)
    dirs = expand_case_dirs(case_dirs)
    result = RunResult(command="brain-eval")
    pairs: list[EvalPair | ItemResult] = []
    for d in dirs:  # pre-flight: every case has ground truth and a prediction
        try:
            pairs.append(find_pair(pred_dir, d))
        except InputError as exc:
            if len(dirs) == 1:
                raise
            pairs.append(ItemResult(name=d.name, status=FAILED, reason=error_reason(exc)))
    rows, overlays = [], []
    for pair in progress_bar(pairs, total=len(pairs), desc="evaluating", enabled=cfg.progress, unit="case"):
        if isinstance(pair, ItemResult):
            result.add(pair)
            continue
        try:
            metrics, p, t = evaluate_pair(pair, labels=cfg.labels, pred_labels=cfg.pred_labels)
        except InputError as exc:
            if len(pairs) == 1:
                raise
            result.add(ItemResult(name=pair.name, status=FAILED, reason=error_reason(exc)))
            continue
        rows.append({"case": pair.name, **metrics})
        overlays.append((pair.name, pair.image, p, t))
        result.add(ItemResult(name=pair.name, metrics=metrics))
        log.info(
            "%s: Dice WT %.3f TC %.3f ET %.3f; WT %.1f mL predicted, %.1f mL true",
            pair.name,
            metrics["dice_WT"],
            metrics["dice_TC"],
            metrics["dice_ET"],
            metrics["pred_WT_ml"],
            metrics["truth_WT_ml"],
        )
    for item in result.failed:
        log.error("%s: failed: %s", item.name, item.reason)
    result.summary = summarise(rows)
    if rows:
        report = {
            "cases": rows,
            "summary": result.summary,
            "failed": [{"case": i.name, "reason": i.reason} for i in result.failed],
        }
        try:
            paths = write_eval_report(
                report, out_dir, inputs=[str(pred_dir), *map(str, case_dirs)], overlays=overlays
            )
        except BaseException:  # no half report that would block the corrected rerun
            for name in REPORT_FILES:
                (out_dir / name).unlink(missing_ok=True)
            raise
        result.outputs = {k: str(v) for k, v in paths.items()}
    return result
