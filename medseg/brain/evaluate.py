"""Dice, HD95 (mm), sensitivity, specificity and volumes (mL, prediction and truth) for whole tumour,
tumour core and enhancing tumour, per case and summary, the way the BraTS challenge reports them.

HD95 is the larger of the two directed 95th percentiles of the surface distances (surface = mask minus
its 6-connected erosion; distances in mm from the voxel spacing; linear percentile), which is what
MONAI's ``compute_hausdorff_distance(percentile=95)`` computes (tested equal); computed here with a
KD-tree on the cropped surfaces, so brain-eval does not import MONAI (~8 CPU-s).

Empty regions, BraTS convention (the BraTS 2018-2021 evaluation): truth and prediction both empty ->
Dice 1, HD95 0; exactly one empty -> Dice 0 and HD95 = the grid's diagonal in mm (373.13 mm on the
240x240x155 1 mm BraTS grid, BraTS's penalty), so a missed or invented region weighs in the mean
instead of being left out. Sensitivity is undefined (NaN, counted as such in the summary) when the
truth region is empty; specificity is over every voxel of the grid, as BraTS computes it.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medseg.brain.io import (
    CaseFiles,
    Geometry,
    error_reason,
    find_case_files,
    integer_labels,
    labels_to_internal,
    read_image,
)
from medseg.brain.segment import REGIONS, region_masks, region_volumes_ml
from medseg.errors import InputError
from medseg.results import FAILED, ItemResult, RunResult

log = logging.getLogger("medseg.brain")

REPORT_FILES = ("report.html", "metrics.json", "metrics.csv")
# a prediction is <pred>/<case>_seg, <case> or <case>/<case>_seg with one of these (brain-segment writes any)
PRED_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha")
# label values of each convention (BraTS 2018-2021 share 1 NCR/NET, 2 ED, 4 ET; BraTS 2023+ writes ET as 3)
LABEL_ALIASES = {"2018": "brats2021", "brats2018": "brats2021", "2021": "brats2021", "2023": "brats2023"}


def resolve_labels(values: set[int], labels: str, *, path: Path | None = None) -> str:
    """The label convention to read a map with: ``labels`` itself, or detected from its values (``auto``).

    Detection: 4 and 3 present -> havaei (3 non-enhancing, 4 enhancing); 4 -> BraTS 2018-2021; 3 ->
    BraTS 2023+; neither -> BraTS 2018-2021 (0, 1, 2 mean the same in both BraTS conventions).
    A map of only 0 and 1 is refused: it is a binary tumour mask far more often than a tumour that is
    all necrosis without edema, and scoring it as label 1 (NCR/NET) would report a tumour-core Dice
    against a whole-tumour outline and an enhancing-tumour score against nothing; ``--labels 2018``
    (given, not ``auto``) reads it as NCR/NET.
    """
    labels = LABEL_ALIASES.get(labels, labels)
    if labels != "auto":
        return labels
    bad = sorted(values - {0, 1, 2, 3, 4})
    if bad:
        raise InputError(
            f"label values {bad} are in no BraTS convention (2018-2021: 0, 1, 2, 4; 2023: 0, 1, 2, 3)",
            path=path,
        )
    if values == {0, 1} or values == {1}:
        raise InputError(
            "holds only labels 0 and 1: a binary tumour mask, not a BraTS label map (1 NCR/NET, 2 edema, "
            "4 or 3 enhancing), so tumour core and enhancing tumour cannot be scored against it; give the "
            "BraTS label map, or --labels 2018 (--pred-labels 2018 for a prediction) if 1 really is "
            "necrotic/non-enhancing core alone",
            path=path,
        )
    if 3 in values and 4 in values:
        return "havaei"
    return "brats2023" if 3 in values else "brats2021"


def _surface(mask: np.ndarray) -> np.ndarray:
    """Surface voxels: the mask minus its erosion (6-connected; voxels on the grid's border count)."""
    from scipy import ndimage as ndi

    return mask & ~ndi.binary_erosion(mask, border_value=0)


def hd95(pred: np.ndarray, truth: np.ndarray, spacing: tuple[float, ...]) -> float:
    """95th-percentile Hausdorff distance in mm between two non-empty masks (symmetric, MONAI's way)."""
    from scipy.spatial import cKDTree

    both = pred | truth
    lo = [
        max(0, int(np.flatnonzero(both.any(axis=tuple(a for a in range(3) if a != ax))).min()) - 1)
        for ax in range(3)
    ]
    hi = [
        int(np.flatnonzero(both.any(axis=tuple(a for a in range(3) if a != ax))).max()) + 2 for ax in range(3)
    ]
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    sp = np.asarray(spacing, float)
    pts = [np.argwhere(_surface(m[box])) * sp for m in (pred, truth)]
    d_pt = cKDTree(pts[1]).query(pts[0])[0]
    d_tp = cKDTree(pts[0]).query(pts[1])[0]
    return float(max(np.percentile(d_pt, 95), np.percentile(d_tp, 95)))


def empty_penalty_mm(shape: tuple[int, ...], spacing: tuple[float, ...]) -> float:
    """HD95 of a region present in only one of prediction and truth: the grid's diagonal (BraTS: 373.13)."""
    return float(np.sqrt(sum((n * s) ** 2 for n, s in zip(shape, spacing))))


def region_metrics(
    pred: np.ndarray, truth: np.ndarray, spacing: tuple[float, float, float]
) -> dict[str, float]:
    """Dice, HD95 (mm), sensitivity, specificity per region for two internal label maps on one grid."""
    out: dict[str, float] = {}
    pm, tm = region_masks(pred), region_masks(truth)
    penalty = empty_penalty_mm(truth.shape, spacing)
    for r in REGIONS:
        p, t = pm[r], tm[r]
        n_p, n_t = int(p.sum()), int(t.sum())
        tp = int(np.count_nonzero(p & t))
        negatives = t.size - n_t
        out[f"sensitivity_{r}"] = tp / n_t if n_t else math.nan
        out[f"specificity_{r}"] = (negatives - (n_p - tp)) / negatives if negatives else math.nan
        if not n_p and not n_t:
            out[f"dice_{r}"], out[f"hd95_{r}"] = 1.0, 0.0
        elif not n_p or not n_t:
            out[f"dice_{r}"], out[f"hd95_{r}"] = 0.0, penalty
        else:
            out[f"dice_{r}"] = 2.0 * tp / (n_p + n_t)
            out[f"hd95_{r}"] = hd95(p, t, spacing)
    return out


@dataclass
class EvalPair:
    name: str
    pred: Path
    truth: Path
    image: Path | None = None  # FLAIR, background of the overlay figures
    truth_geometry: Geometry | None = None  # the truth's grid, set by evaluate_pair (for the figures)


def find_pair(pred_dir: Path, case_dir: Path) -> EvalPair:
    """Match a ground-truth case folder with ``<pred_dir>/<case>_seg.nii.gz`` (or ``<case>.nii.gz``)."""
    files: CaseFiles = find_case_files(case_dir)
    if files.seg is None:
        raise InputError("case has no ground-truth segmentation", path=case_dir)
    stems = [f"{files.name}_seg", files.name, f"{files.name}/{files.name}_seg"]
    cands = [pred_dir / f"{stem}{suffix}" for stem in stems for suffix in PRED_SUFFIXES]
    found = [c for c in cands if c.is_file()]
    if not found:
        tried = ", ".join(f"{stem}{PRED_SUFFIXES[0]}" for stem in stems)
        raise InputError(
            f"no prediction for case {files.name} (looked for {tried}, also as {', '.join(PRED_SUFFIXES[1:])})",
            path=pred_dir,
        )
    pred = found[0]
    if len(found) > 1:
        log.info(
            "%s: several predictions (%s); scoring %s",
            files.name,
            ", ".join(f.name for f in found),
            pred.name,
        )
    return EvalPair(files.name, pred, files.seg, files.modalities["flair"])


def evaluate_pair(
    pair: EvalPair, *, labels: str = "auto", pred_labels: str | None = None
) -> tuple[dict[str, float], np.ndarray, np.ndarray, dict[str, str]]:
    """Metrics of one case, its internal prediction and truth maps (for the overlays), and the label
    conventions read (``pred_labels`` None: the truth's when given, else detected per file)."""
    pred, pgeo = read_image(pair.pred)
    truth, tgeo = read_image(pair.truth)
    pair.truth_geometry = tgeo
    diff = pgeo.same_grid(tgeo)
    if diff:
        pred = _same_voxels_in_other_order(pred, pgeo, tgeo)
        if pred is None:
            raise InputError(f"prediction and ground truth grids differ ({diff})", path=pair.pred)
        log.info("%s: prediction stored in another voxel order than the truth; reordered onto it", pair.name)
    pred_i, truth_i = integer_labels(pred, path=pair.pred), integer_labels(truth, path=pair.truth)
    t_conv = resolve_labels(set(np.unique(truth_i).tolist()), labels, path=pair.truth)
    p_conv = resolve_labels(set(np.unique(pred_i).tolist()), pred_labels or labels, path=pair.pred)
    p = labels_to_internal(pred_i, labels=p_conv, path=pair.pred)
    t = labels_to_internal(truth_i, labels=t_conv, path=pair.truth)
    metrics = {**region_metrics(p, t, tgeo.spacing), **volume_metrics(p, t, tgeo.spacing)}
    return metrics, p, t, {"truth_labels": t_conv, "pred_labels": p_conv}


def _same_voxels_in_other_order(pred: np.ndarray, pgeo, tgeo) -> np.ndarray | None:
    """``pred`` on the truth's grid when its grid is the truth's with the axes permuted or flipped
    (the same voxels stored in another order, e.g. RAS vs LPS), else None."""
    from medseg.brain.orientation import to_training_orientation

    p, pg, _ = to_training_orientation(pred[None], pgeo)
    t_shape = np.zeros((1, *tgeo.shape), np.uint8)
    _, tg, to_truth = to_training_orientation(t_shape, tgeo)
    return to_truth(p[0]) if pg.same_grid(tg) == "" else None


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
    labels: str = "auto"  # ground-truth label convention (auto: detected per file, see resolve_labels)
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
    from medseg.io.atomic import check_apart, check_output

    cfg = config or EvalConfig()
    out_dir = Path(out_dir)
    check_apart(out_dir, [pred_dir, *case_dirs])  # the report never lands among predictions or cases
    for name in REPORT_FILES:
        check_output(out_dir / name, overwrite=cfg.overwrite)
    pred_dir = Path(pred_dir)
    if not pred_dir.is_dir():
        raise InputError("prediction folder not found", path=pred_dir)
    dirs = expand_case_dirs(case_dirs, exclude=[pred_dir, out_dir])
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
            metrics, p, t, conventions = evaluate_pair(pair, labels=cfg.labels, pred_labels=cfg.pred_labels)
        except InputError as exc:
            if len(pairs) == 1:
                raise
            result.add(ItemResult(name=pair.name, status=FAILED, reason=error_reason(exc)))
            continue
        rows.append({"case": pair.name, **metrics})
        overlays.append((pair.name, pair.image, p, t, pair.truth_geometry))
        result.add(ItemResult(name=pair.name, metrics={**metrics, **conventions}))
        log.info(
            "%s: Dice WT %.3f TC %.3f ET %.3f; WT %.1f mL predicted, %.1f mL true (labels: truth %s, "
            "prediction %s)",
            pair.name,
            metrics["dice_WT"],
            metrics["dice_TC"],
            metrics["dice_ET"],
            metrics["pred_WT_ml"],
            metrics["truth_WT_ml"],
            conventions["truth_labels"],
            conventions["pred_labels"],
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
                report,
                out_dir,
                inputs=[str(pred_dir), *map(str, case_dirs)],
                overlays=overlays,
                warnings=result.warnings,
            )
        except BaseException:  # no half report that would block the corrected rerun
            for name in REPORT_FILES:
                (out_dir / name).unlink(missing_ok=True)
            raise
        result.outputs = {k: str(v) for k, v in paths.items()}
    return result
