"""``medseg ct-report``: RMSE and emphysema agreement of converted vs reference series.

Per exam: RMSE (HU, whole image) of original vs reference and converted vs reference and the %
reduction; LAA-950 (% lung voxels <= -950 HU) and Perc15 for original, converted and reference,
all inside ONE lung mask computed automatically on the reference series (so the three differ
only by kernel, not by segmentation). Across the cohort: Bland-Altman of LAA-950 (original vs
reference, converted vs reference). Outputs: CSV, JSON, HTML and PDF QA report.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from medseg.ct.metrics import bland_altman, laa_percent, lung_mask, perc15, rmse
from medseg.errors import BatchFailures, InputError, MedsegError
from medseg.io.atomic import check_output, safe_name, write_text

log = logging.getLogger("medseg.ct")

NOTICE = ("Research use only. Demo weights and phantoms are synthetic and not for clinical use. "
          "LAA-950 = % of lung voxels <= -950 HU inside one automatic lung mask from the reference series.")
CSV_COLUMNS = ["exam", "status", "slices", "lung_volume_ml", "rmse_original_hu", "rmse_converted_hu",
               "rmse_reduction_pct", "laa950_original", "laa950_converted", "laa950_reference",
               "perc15_original", "perc15_converted", "perc15_reference", "error"]


@dataclass
class ExamMetrics:
    exam: str
    status: str = "ok"
    slices: int = 0
    lung_volume_ml: float = float("nan")
    rmse_original_hu: float = float("nan")
    rmse_converted_hu: float = float("nan")
    rmse_reduction_pct: float = float("nan")
    laa950_original: float = float("nan")
    laa950_converted: float = float("nan")
    laa950_reference: float = float("nan")
    perc15_original: float = float("nan")
    perc15_converted: float = float("nan")
    perc15_reference: float = float("nan")
    error: str = ""


def evaluate_exam(name: str, original: np.ndarray, converted: np.ndarray, reference: np.ndarray,
                  spacing_zyx: tuple[float, float, float]) -> tuple[ExamMetrics, np.ndarray]:
    """All per-exam numbers, plus the lung mask they used."""
    if not (original.shape == converted.shape == reference.shape):
        raise InputError(f"{name}: original {original.shape}, converted {converted.shape} and reference "
                         f"{reference.shape} differ in shape")
    mask, _airways = lung_mask(reference, spacing_zyx)
    r_orig, r_conv = rmse(original, reference), rmse(converted, reference)
    m = ExamMetrics(
        exam=name, slices=int(original.shape[0]),
        lung_volume_ml=float(mask.sum() * np.prod(spacing_zyx) / 1000.0),
        rmse_original_hu=r_orig, rmse_converted_hu=r_conv,
        rmse_reduction_pct=100.0 * (r_orig - r_conv) / r_orig if r_orig > 0 else float("nan"),
        laa950_original=laa_percent(original, mask), laa950_converted=laa_percent(converted, mask),
        laa950_reference=laa_percent(reference, mask),
        perc15_original=perc15(original, mask), perc15_converted=perc15(converted, mask),
        perc15_reference=perc15(reference, mask))
    if not mask.any():
        log.warning("%s: automatic lung mask is empty; emphysema metrics are n/a", name)
    return m, mask


def cohort_summary(rows: list[ExamMetrics]) -> dict:
    ok = [r for r in rows if r.status == "ok"]
    def arr(attr):
        return np.array([getattr(r, attr) for r in ok], float)
    summary = {"exams": len(rows), "ok": len(ok), "failed": len(rows) - len(ok)}
    if ok:
        summary.update({
            "rmse_original_hu_mean": float(np.nanmean(arr("rmse_original_hu"))),
            "rmse_converted_hu_mean": float(np.nanmean(arr("rmse_converted_hu"))),
            "rmse_reduction_pct_mean": float(np.nanmean(arr("rmse_reduction_pct"))),
            "rmse_reduction_pct_range": [float(np.nanmin(arr("rmse_reduction_pct"))),
                                         float(np.nanmax(arr("rmse_reduction_pct")))],
            "laa950_mean_sd": {k: [float(np.nanmean(arr(f"laa950_{k}"))),
                                   float(np.nanstd(arr(f"laa950_{k}"), ddof=1)) if len(ok) > 1 else float("nan")]
                               for k in ("original", "converted", "reference")},
            "bland_altman_laa950": {
                "original_vs_reference": bland_altman(arr("laa950_original"), arr("laa950_reference")).to_dict(),
                "converted_vs_reference": bland_altman(arr("laa950_converted"), arr("laa950_reference")).to_dict(),
            },
        })
    return summary


def _clean(obj):
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_clean(v) for v in obj]
    return obj


def _slice_figure(original, converted, reference, mask, source, target):
    from medseg.reports.plots import pyplot

    plt = pyplot()
    z = int(np.argmax(mask.sum(axis=(1, 2)))) if mask.any() else original.shape[0] // 2
    panels = [(original[z], f"original ({source})"), (converted[z], f"converted ({target})"),
              (reference[z], f"reference ({target})")]
    fig, axes = plt.subplots(1, 5, figsize=(17, 3.8))
    for ax, (img, title) in zip(axes[:3], panels):
        ax.imshow(img, cmap="gray", vmin=-1350, vmax=150)
        ax.set_title(title + "\nlung window")
    diff = axes[3].imshow(converted[z] - reference[z], cmap="coolwarm", vmin=-100, vmax=100)
    axes[3].set_title("converted - reference (HU)")
    fig.colorbar(diff, ax=axes[3], fraction=0.046)
    axes[4].imshow(reference[z], cmap="gray", vmin=-1350, vmax=150)
    axes[4].imshow(np.ma.masked_where(~mask[z], mask[z]), cmap="autumn", alpha=0.35)
    axes[4].imshow(np.ma.masked_where(~(reference[z] <= -950) | ~mask[z], mask[z]), cmap="cool", alpha=0.8)
    axes[4].set_title("lung mask (orange), LAA-950 (cyan)")
    for ax in axes:
        ax.axis("off")
    fig.suptitle(f"slice {z}")
    fig.tight_layout()
    return fig


def write_qa_outputs(out_dir: Path, rows: list[ExamMetrics], *, source: str, target: str, inputs: list[str],
                     figures: list[tuple[str, object]], pdf: bool = True) -> dict:
    """CSV + JSON + HTML (+ PDF) for a cohort; returns the JSON summary."""
    from medseg.reports import Report, bland_altman_figure

    summary = cohort_summary(rows)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS)
    writer.writeheader()
    for r in rows:
        writer.writerow({k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in asdict(r).items()})
    write_text(out_dir / "ct_qa.csv", buf.getvalue())
    doc = _clean({"source_kernel": source, "target_kernel": target, "inputs": inputs, "summary": summary,
                  "exams": [asdict(r) for r in rows]})
    write_text(out_dir / "ct_qa.json", json.dumps(doc, indent=2))

    report = Report(f"CT kernel conversion QA: {source} -> {target}", inputs=inputs, notice=NOTICE,
                    subtitle="RMSE vs reference-kernel series, emphysema index agreement (Bland-Altman)")
    if summary.get("ok"):
        ba = summary["bland_altman_laa950"]
        report.add_table("Cohort summary", [
            {"quantity": "RMSE vs reference (HU), mean", "original": summary["rmse_original_hu_mean"],
             "converted": summary["rmse_converted_hu_mean"], "reference": float("nan")},
            {"quantity": "LAA-950 (%) mean", **{k: v[0] for k, v in summary["laa950_mean_sd"].items()}},
            {"quantity": "LAA-950 (%) SD", **{k: v[1] for k, v in summary["laa950_mean_sd"].items()}},
        ], columns=["quantity", "original", "converted", "reference"])
        report.add_table("Bland-Altman of LAA-950 vs reference (percentage points)", [
            {"comparison": name.replace("_", " "), **vals} for name, vals in ba.items()],
            columns=["comparison", "n", "bias", "sd", "loa_low", "loa_high"])
        ok = [r for r in rows if r.status == "ok"]
        report.add_figure("Bland-Altman plot: LAA-950", bland_altman_figure([
            (f"original {source} vs {target}", [r.laa950_original for r in ok], [r.laa950_reference for r in ok]),
            (f"converted vs {target}", [r.laa950_converted for r in ok], [r.laa950_reference for r in ok]),
        ], quantity="LAA-950", unit="%"), caption="Lines: bias and 95 % limits of agreement (bias +- 1.96 SD).")
    report.add_table("Per exam", [asdict(r) for r in rows], columns=CSV_COLUMNS[:-1] + ["error"])
    for title, fig in figures:
        report.add_figure(title, fig)
    report.write_html(out_dir / "ct_qa.html")
    if pdf:
        report.write_pdf(out_dir / "ct_qa.pdf")
    return doc


def run_ct_report(inputs: list[str | Path], out_dir: str | Path, *, source: str, target: str,
                  weights: str | Path | None = None, models_dirs: tuple = (), device: str = "auto",
                  amp: str = "auto", batch_size: int | None = None, save_masks: bool = False, pdf: bool = True,
                  overwrite: bool = False, progress: bool = False) -> dict:
    """Convert each exam's ``source`` series in memory and compare with its ``target`` series.

    One failing exam is recorded (status 'failed' with its reason) and the cohort continues;
    :class:`BatchFailures` is raised at the end if any failed, after all outputs are written.
    """
    from medseg.ct.cohort import discover_exams
    from medseg.ct.convert import convert_volume
    from medseg.ct.models import canonical_kernel, find_model, load_predictor
    from medseg.io.volume import write_volume_sitk

    source, target = canonical_kernel(source), canonical_kernel(target)
    out_dir = Path(out_dir)
    check_output(out_dir / "ct_qa.json", overwrite=overwrite)
    predictor = load_predictor(find_model(source, target, weights=weights, models_dirs=models_dirs),
                               device=device, amp=amp)
    exams = discover_exams(list(inputs))
    rows: list[ExamMetrics] = []
    figures = []
    for exam in exams:
        try:
            missing = [k for k in (source, target) if k not in exam.series]
            if missing:
                raise InputError(f"no {' or '.join(missing)} series (found: {', '.join(exam.series) or 'none'})",
                                 path=exam.path)
            original, meta = exam.series[source].load()
            reference, _ = exam.series[target].load()
            converted = convert_volume(predictor, original, batch_size=batch_size, progress=progress)
            metrics, mask = evaluate_exam(exam.name, original, converted, reference, meta.spacing)
            if save_masks:
                write_volume_sitk(out_dir / "masks" / f"{safe_name(exam.name)}_lungmask.nii.gz",
                                  mask.astype(np.uint8), meta, dtype=np.uint8)
            if len(figures) < 6:
                figures.append((f"Exam {exam.name}",
                                _slice_figure(original, converted, reference, mask, source, target)))
            rows.append(metrics)
        except MedsegError as exc:
            log.error("%s", exc)
            rows.append(ExamMetrics(exam=exam.name, status="failed", error=str(exc)))
    doc = write_qa_outputs(out_dir, rows, source=source, target=target, inputs=[str(i) for i in inputs],
                           figures=figures, pdf=pdf)
    failed = [r.exam for r in rows if r.status != "ok"]
    if failed:
        raise BatchFailures(f"{len(failed)} of {len(rows)} exam(s) failed: {', '.join(failed)} "
                            f"(see {out_dir / 'ct_qa.csv'})")
    return doc


def qa_single(original_path: str | Path, converted_path: str | Path, reference_path: str | Path,
              out_dir: str | Path, *, source: str, target: str, series_uid: str | None = None,
              pdf: bool = True) -> dict:
    """QA report for one converted series against a reference series (used by ct-convert --reference)."""
    from medseg.ct.cohort import SeriesRef

    original, meta = SeriesRef(Path(original_path), series_uid).load()
    converted, _ = SeriesRef(Path(converted_path)).load()
    reference, _ = SeriesRef(Path(reference_path)).load()
    name = Path(original_path).parent.name if Path(original_path).is_dir() else Path(original_path).stem
    metrics, mask = evaluate_exam(name, original, converted, reference, meta.spacing)
    fig = _slice_figure(original, converted, reference, mask, source, target)
    return write_qa_outputs(Path(out_dir), [metrics], source=source, target=target,
                            inputs=[str(original_path), str(reference_path)], figures=[(f"Exam {name}", fig)],
                            pdf=pdf)
