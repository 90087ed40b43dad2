"""Dice and HD95 (mm) for whole tumour, tumour core and enhancing tumour, per case and summary.

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

from medseg.brain.io import CaseFiles, find_case_files, labels_to_internal, read_image
from medseg.brain.segment import REGIONS, region_masks
from medseg.errors import InputError

log = logging.getLogger("medseg.brain")


def region_metrics(pred: np.ndarray, truth: np.ndarray, spacing: tuple[float, float, float]) -> dict[str, float]:
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
            hd = compute_hausdorff_distance(pt, tt, include_background=True, percentile=95,
                                            spacing=[float(s) for s in spacing])
        out[f"hd95_{r}"] = float(hd[0, 0])
    return out


@dataclass
class EvalPair:
    name: str
    pred: Path
    truth: Path
    image: Path | None = None  # FLAIR, background of the overlay figures


def find_pairs(pred_dir: Path, truth_dirs: list[Path]) -> list[EvalPair]:
    """Match ground-truth case folders with predictions ``<pred_dir>/<case>_seg.nii.gz`` (or ``<case>.nii.gz``)."""
    pairs = []
    for d in truth_dirs:
        files: CaseFiles = find_case_files(d)
        if files.seg is None:
            raise InputError("case has no ground-truth segmentation", path=d)
        cands = [pred_dir / f"{files.name}_seg.nii.gz", pred_dir / f"{files.name}.nii.gz",
                 pred_dir / files.name / f"{files.name}_seg.nii.gz"]
        pred = next((c for c in cands if c.is_file()), None)
        if pred is None:
            raise InputError(f"no prediction for case {files.name} (looked for {cands[0].name})", path=pred_dir)
        pairs.append(EvalPair(files.name, pred, files.seg, files.modalities["flair"]))
    return pairs


def evaluate_pairs(pairs: list[EvalPair], *, labels: str = "brats2021", pred_labels: str | None = None,
                   with_images: bool = True) -> dict:
    """Per-case metrics and a summary (mean, SD, median per metric)."""
    rows, overlays = [], []
    for pair in pairs:
        pred, pgeo = read_image(pair.pred)
        truth, tgeo = read_image(pair.truth)
        diff = pgeo.same_grid(tgeo)
        if diff:
            raise InputError(f"prediction and ground truth grids differ ({diff})", path=pair.pred)
        p = labels_to_internal(np.rint(pred).astype(np.int64), labels=pred_labels or labels, path=pair.pred)
        t = labels_to_internal(np.rint(truth).astype(np.int64), labels=labels, path=pair.truth)
        row = {"case": pair.name, **region_metrics(p, t, tgeo.spacing)}
        rows.append(row)
        if with_images:
            overlays.append((pair.name, pair.image, p, t))
        log.info("%s: Dice WT %.3f TC %.3f ET %.3f", pair.name, row["dice_WT"], row["dice_TC"], row["dice_ET"])
    summary: dict[str, dict[str, float]] = {}
    for key in (k for k in (rows[0] if rows else {}) if k != "case"):
        vals = np.array([r[key] for r in rows], float)
        ok = vals[np.isfinite(vals)]
        summary[key] = {"mean": float(ok.mean()) if ok.size else math.nan,
                        "sd": float(ok.std(ddof=1)) if ok.size > 1 else math.nan,
                        "median": float(np.median(ok)) if ok.size else math.nan,
                        "n": int(ok.size), "n_undefined": int(vals.size - ok.size)}
    return {"cases": rows, "summary": summary, "_overlays": overlays}


def evaluate_cases(pred_dir: str | Path, case_dirs: list[str | Path], out_dir: str | Path, *,
                   labels: str = "brats2021", pred_labels: str | None = None, overwrite: bool = False) -> dict:
    """brain-eval: metrics of predictions in ``pred_dir`` against case folders; HTML report in ``out_dir``."""
    from medseg.brain.io import expand_case_dirs
    from medseg.brain.report import write_eval_report
    from medseg.io.atomic import check_output

    out_dir = Path(out_dir)
    check_output(out_dir / "report.html", overwrite=overwrite)
    pred_dir = Path(pred_dir)
    if not pred_dir.is_dir():
        raise InputError("prediction folder not found", path=pred_dir)
    pairs = find_pairs(pred_dir, expand_case_dirs(case_dirs))
    result = evaluate_pairs(pairs, labels=labels, pred_labels=pred_labels)
    paths = write_eval_report(result, out_dir, inputs=[str(pred_dir), *map(str, case_dirs)])
    result.pop("_overlays", None)
    result["outputs"] = {k: str(v) for k, v in paths.items()}
    return result
