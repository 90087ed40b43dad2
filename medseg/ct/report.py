"""``medseg ct-report``: RMSE and emphysema agreement of converted vs reference series.

Per exam: RMSE (HU, whole image) of original vs reference and converted vs reference and the %
reduction; LAA-950 (% lung voxels <= -950 HU) and Perc15 for original, converted and reference,
all inside ONE lung mask computed automatically on the reference series (so the three differ
only by kernel, not by segmentation). Across the cohort: Bland-Altman (bias, 95 % limits of
agreement) and ICC(A,1) of LAA-950 and Perc15 (original vs reference, converted vs reference;
:mod:`medseg.ct.agreement`). Outputs: CSV (per exam, and the agreement), JSON, HTML and PDF QA report.
"""

from __future__ import annotations

import csv
import functools
import io
import json
import logging
import math
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from medseg.ct import report_conditioned as cond
from medseg.ct.agreement import (
    AGREEMENT_COLUMNS,
    COMPARISONS,
    agreement_csv,
    agreement_line,
    agreement_rows,
    agreement_summary,
    finite_mean,
    finite_sd,
)
from medseg.ct.metrics import (
    LAA_THRESHOLD_HU,
    laa_percent,
    perc15,
    rmse,
    rmse_region,
    segment_regions,
)
from medseg.errors import InputError, MedsegError
from medseg.io.atomic import check_output, safe_name, write_text
from medseg.results import FAILED, OK, ItemResult, RunResult, json_safe

if TYPE_CHECKING:
    from medseg.scale.items import Mapper

log = logging.getLogger("medseg.ct")

NOTICE = (
    "Research use only. Demo weights and phantoms are synthetic and not for clinical use. "
    f"LAA-950 = % of lung voxels <= {LAA_THRESHOLD_HU:g} HU inside one automatic lung mask from the "
    "reference series."
)
METRICS = [
    "slices",
    "lung_volume_ml",
    "rmse_original_hu",
    "rmse_converted_hu",
    "rmse_reduction_pct",
    "laa950_original",
    "laa950_converted",
    "laa950_reference",
    "perc15_original",
    "perc15_converted",
    "perc15_reference",
    "sharpness_original",
    "sharpness_converted",
    "sharpness_reference",
    *cond.METRICS,  # the sharpness-conditioned converter's row (empty where it did not run)
]
CSV_COLUMNS = ["exam", "status", *METRICS, "kernel_check", "error"]
QA_CSV, QA_JSON, QA_HTML, QA_PDF = "ct_qa.csv", "ct_qa.json", "ct_qa.html", "ct_qa.pdf"
NO_LUNGS = (
    "no lungs found in the reference series (not a chest scan?): LAA-950 and Perc15, emphysema "
    "measures of the lungs, are not computed (n/a); the RMSE is"
)
QA_AGREEMENT = "ct_qa_agreement.csv"  # Bland-Altman + ICC of LAA-950 and Perc15 (medseg.ct.agreement)
MASKS = "masks"
MAX_FIGURES = 6  # exams shown as slice figures in the HTML/PDF report


def qa_files(*, pdf: bool = True) -> list[str]:
    """The files a QA report folder receives."""
    return [QA_CSV, QA_AGREEMENT, QA_JSON, QA_HTML] + ([QA_PDF] if pdf else [])


def check_qa_outputs(out_dir: Path, *, pdf: bool, overwrite: bool) -> None:
    """Pre-flight for a QA report folder: every report file is new (or ``overwrite``) and writable."""
    for name in qa_files(pdf=pdf):
        check_output(out_dir / name, overwrite=overwrite)


def evaluate_exam(
    name: str,
    original: np.ndarray,
    converted: np.ndarray,
    reference: np.ndarray,
    spacing_zyx: tuple[float, float, float],
    others: dict[str, np.ndarray] | None = None,
) -> tuple[dict[str, float], np.ndarray]:
    """All per-exam numbers (keys: :data:`METRICS`), plus the lung mask they used. ``others``: more
    converted volumes by name (``conditioned``), scored in the same mask and region as ``converted``."""
    if not (original.shape == converted.shape == reference.shape):
        raise InputError(
            f"{name}: original {_shape(original.shape)}, converted {_shape(converted.shape)} and "
            f"reference {_shape(reference.shape)} differ in shape"
        )
    regions = segment_regions(reference, spacing_zyx)
    mask = regions.lungs
    # RMSE inside the patient and the field of view of both series, without the table: a padded
    # scan, or one with a table, scores as the same scan without them
    valid = rmse_region(regions, original, reference)
    r_orig, r_conv = rmse(original, reference, valid), rmse(converted, reference, valid)
    metrics = {
        "slices": int(original.shape[0]),
        "rmse_voxels_pct": float(100.0 * valid.mean()),
        "lung_volume_ml": float(mask.sum() * np.prod(spacing_zyx) / 1000.0),
        "rmse_original_hu": r_orig,
        "rmse_converted_hu": r_conv,
        "rmse_reduction_pct": 100.0 * (r_orig - r_conv) / r_orig if r_orig > 0 else float("nan"),
        "laa950_original": laa_percent(original, mask),
        "laa950_converted": laa_percent(converted, mask),
        "laa950_reference": laa_percent(reference, mask),
        "perc15_original": perc15(original, mask),
        "perc15_converted": perc15(converted, mask),
        "perc15_reference": perc15(reference, mask),
    }
    for key, other in (others or {}).items():
        if other.shape != reference.shape:
            raise InputError(
                f"{name}: the {key} series is {_shape(other.shape)}, not {_shape(reference.shape)}"
            )
        r_other = rmse(other, reference, valid)
        metrics[f"rmse_{key}_hu"] = r_other
        metrics[f"rmse_reduction_{key}_pct"] = (
            100.0 * (r_orig - r_other) / r_orig if r_orig > 0 else float("nan")
        )
        metrics[f"laa950_{key}"] = laa_percent(other, mask)
        metrics[f"perc15_{key}"] = perc15(other, mask)
    if not mask.any():
        log.debug("%s: automatic lung mask is empty; emphysema metrics are n/a", name)
    return metrics, mask


def kernel_check(
    original: np.ndarray,
    converted: np.ndarray,
    reference: np.ndarray,
    spacing_zyx: tuple[float, float, float],
    *,
    source: str,
    target: str,
) -> tuple[dict, list[str]]:
    """Does each series look like its kernel? Sharpness measured from the images themselves
    (:mod:`medseg.ct.fingerprint`): catches e.g. a B70f series given as the B30f reference."""
    from medseg.ct.fingerprint import check_kernel_claims, kernel_fingerprint

    fps = {
        k: kernel_fingerprint(v, spacing_zyx)
        for k, v in (("original", original), ("converted", converted), ("reference", reference))
    }
    warnings = check_kernel_claims(
        fps["original"], source, output_fp=fps["converted"], reference_fp=fps["reference"], claimed_to=target
    )
    return {f"sharpness_{k}": float(fp.sharpness) for k, fp in fps.items()}, warnings


def _shape(shape: tuple[int, ...]) -> str:
    """(12, 160, 160) -> '12 slices of 160x160'."""
    return f"{shape[0]} slices of {shape[1]}x{shape[2]}" if len(shape) == 3 else "x".join(map(str, shape))


def _values(items: list[ItemResult], key: str) -> np.ndarray:
    return np.array([i.metrics.get(key, float("nan")) for i in items], float)


def cohort_summary(items: list[ItemResult]) -> dict[str, Any]:
    """Counts, mean RMSE and its reduction, LAA-950 mean/SD and Bland-Altman over the ok exams."""
    ok = [i for i in items if i.status == OK]
    summary: dict[str, Any] = {"exams": len(items), "ok": len(ok), "failed": len(items) - len(ok)}
    if not ok:
        return summary
    reduction = _values(ok, "rmse_reduction_pct")
    finite = reduction[np.isfinite(reduction)]
    values = functools.partial(_values, ok)
    comparisons = COMPARISONS + ((cond.PREFIX,) if cond.has_values(values) else ())
    summary.update(
        {
            "rmse_original_hu_mean": finite_mean(_values(ok, "rmse_original_hu")),
            "rmse_converted_hu_mean": finite_mean(_values(ok, "rmse_converted_hu")),
            "rmse_reduction_pct_mean": finite_mean(reduction),
            "rmse_reduction_pct_min": float(finite.min()) if finite.size else float("nan"),
            "rmse_reduction_pct_max": float(finite.max()) if finite.size else float("nan"),
            "laa950": {
                k: {
                    "mean": finite_mean(_values(ok, f"laa950_{k}")),
                    "sd": finite_sd(_values(ok, f"laa950_{k}")),
                }
                for k in ("original", "converted", "reference")
            },
            **agreement_summary(values, comparisons),  # Bland-Altman + ICC, LAA-950 and Perc15
        }
    )
    if cond.PREFIX in comparisons:
        summary.update(cond.summary_part(values))
    return summary


def slice_figure(original, converted, reference, mask, source: str, target: str):
    """Lung-window panels of the slice with most lung: original, converted, reference, difference, mask."""
    from medseg.reports.plots import pyplot

    plt = pyplot()
    z = int(np.argmax(mask.sum(axis=(1, 2)))) if mask.any() else original.shape[0] // 2
    panels = [
        (original[z], f"original ({source})"),
        (converted[z], f"converted ({target})"),
        (reference[z], f"reference ({target})"),
    ]
    fig, axes = plt.subplots(1, 5, figsize=(17, 3.8))
    for ax, (img, title) in zip(axes[:3], panels):
        ax.imshow(img, cmap="gray", vmin=-1350, vmax=150)
        ax.set_title(title + "\nlung window")
    diff = axes[3].imshow(converted[z] - reference[z], cmap="coolwarm", vmin=-100, vmax=100)
    axes[3].set_title("converted - reference (HU)")
    fig.colorbar(diff, ax=axes[3], fraction=0.046)
    axes[4].imshow(reference[z], cmap="gray", vmin=-1350, vmax=150)
    axes[4].imshow(np.ma.masked_where(~mask[z], mask[z]), cmap="autumn", alpha=0.35)
    axes[4].imshow(
        np.ma.masked_where(~(reference[z] <= LAA_THRESHOLD_HU) | ~mask[z], mask[z]), cmap="cool", alpha=0.8
    )
    axes[4].set_title(f"lung mask (orange), LAA{-LAA_THRESHOLD_HU:g} (cyan)")
    for ax in axes:
        ax.axis("off")
    fig.suptitle(f"slice {z}")
    fig.tight_layout()
    return fig


def _row(item: ItemResult) -> dict[str, Any]:
    return {
        "exam": item.name,
        "status": item.status,
        **{k: item.metrics.get(k, float("nan")) for k in METRICS},
        "kernel_check": "; ".join(item.warnings) or ("ok" if item.status == OK else ""),
        "error": item.reason,
    }


def _short_check(item: ItemResult) -> str:
    """The kernel-check cell of the per-exam table: the warnings themselves get their own table."""
    if item.status != OK:
        return ""
    return f"{len(item.warnings)} warning(s), see below" if item.warnings else "ok"


def _csv_value(value: Any) -> Any:
    if isinstance(value, float):
        return f"{value:.4f}" if math.isfinite(value) else ""  # empty cell = not available
    return value


def write_qa_outputs(
    out_dir: Path,
    items: list[ItemResult],
    *,
    source: str,
    target: str,
    inputs: list[str],
    figures: list[tuple[str, object]],
    pdf: bool = True,
    conditioned: dict[str, Any] | None = None,
) -> dict[str, str]:
    """CSV + JSON + HTML (+ PDF) for a cohort (or one series); returns kind -> path of what was written.
    ``conditioned``: what :meth:`ConditionedRow.describe` says of the second converter, where it ran."""
    from medseg.reports import Report, bland_altman_figure

    out_dir = Path(out_dir)
    summary = cohort_summary(items)
    rows = [_row(i) for i in items]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS)
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _csv_value(v) for k, v in row.items()})
    write_text(out_dir / QA_CSV, buf.getvalue())
    write_text(out_dir / QA_AGREEMENT, agreement_csv(summary))
    doc = json_safe(
        {
            "source_kernel": source,
            "target_kernel": target,
            "inputs": inputs,
            **({"conditioned": conditioned} if conditioned else {}),
            "summary": summary,
            "exams": rows,
        }
    )
    write_text(out_dir / QA_JSON, json.dumps(doc, indent=2) + "\n")

    report = Report(
        f"CT kernel conversion QA: {source} -> {target}",
        inputs=inputs,
        notice=NOTICE,
        subtitle="RMSE vs reference-kernel series, emphysema index agreement (Bland-Altman)",
    )
    if summary.get("ok"):
        laa = summary["laa950"]
        report.add_table(
            "Cohort summary",
            [
                {
                    "quantity": "RMSE vs reference (HU), mean",
                    "original": summary["rmse_original_hu_mean"],
                    "converted": summary["rmse_converted_hu_mean"],
                    "reference": float("nan"),
                },
                {"quantity": "LAA-950 (%) mean", **{k: v["mean"] for k, v in laa.items()}},
                {"quantity": "LAA-950 (%) SD", **{k: v["sd"] for k, v in laa.items()}},
            ],
            columns=["quantity", "original", "converted", "reference"],
        )
        report.add_table(
            "Agreement with the reference: Bland-Altman (bias, SD, 95 % limits of agreement) and ICC(A,1)",
            agreement_rows(summary),
            columns=AGREEMENT_COLUMNS,
        )
        ok = [i for i in items if i.status == OK]
        series = [
            (
                f"original {source} vs {target}",
                _values(ok, "laa950_original"),
                _values(ok, "laa950_reference"),
            ),
            (f"converted vs {target}", _values(ok, "laa950_converted"), _values(ok, "laa950_reference")),
        ]
        if "rmse_conditioned_hu_mean" in summary:
            report.add_text("Sharpness-conditioned converter", cond.summary_text(summary, conditioned))
            series.append(
                (
                    f"conditioned converter vs {target}",
                    _values(ok, "laa950_conditioned"),
                    _values(ok, "laa950_reference"),
                )
            )
        report.add_figure(
            "Bland-Altman plot: LAA-950",
            bland_altman_figure(
                series,
                quantity="LAA-950",
                unit="%",
            ),
            caption="Lines: bias and 95 % limits of agreement (bias +- 1.96 SD).",
        )
    report.add_table(
        "Per exam",
        [{**row, "kernel_check": _short_check(item)} for row, item in zip(rows, items)],
        columns=CSV_COLUMNS,
    )
    flagged = [(i.name, w) for i in items for w in i.warnings]
    report.add_text(
        "Does each series look like its kernel?",
        (
            "Sharpness is measured from the images (noise in uniform soft tissue and the high-/mid-frequency "
            "power ratio inside the body; B30f-like is about 1). "
            + (
                "Warnings are listed below."
                if flagged
                else "Every input, converted series and reference looks like its stated kernel."
            )
        ),
    )
    if flagged:
        report.add_table(
            "Warnings per exam (kernel check, series reader, measures)",
            [{"exam": n, "warning": w} for n, w in flagged],
            columns=["exam", "warning"],
        )
    for title, fig in figures:
        report.add_figure(title, fig)
    written = {"csv": str(out_dir / QA_CSV), "agreement_csv": str(out_dir / QA_AGREEMENT)}
    written["json"] = str(out_dir / QA_JSON)
    report.write_html(out_dir / QA_HTML)
    written["html"] = str(out_dir / QA_HTML)
    if pdf:
        report.write_pdf(out_dir / QA_PDF)
        written["pdf"] = str(out_dir / QA_PDF)
    return written


@dataclass
class ReportConfig:
    """What ``ct-report`` needs besides the input folders and the output folder."""

    source: str
    target: str
    weights: str | Path | None = None
    models_dirs: tuple[str | Path, ...] = ()
    vendor: str | None = None  # scanner vendor of --from/--to (also 'Philips:UB' in a name)
    device: str = "auto"
    amp: str = "auto"
    batch_size: int | None = None
    save_masks: bool = False
    # also run the sharpness-conditioned converter (its own agreement row): None = where it can run
    # (weights found, both kernels in the sharpness table), True = required, False = never
    conditioned: bool | None = None
    pdf: bool = True
    overwrite: bool = False
    progress: bool = False


def run_ct_report(
    inputs: list[str | Path], out_dir: str | Path, config: ReportConfig, *, mapper: Mapper | None = None
) -> RunResult:
    """Convert each exam's source series in memory and compare it with its target (reference) series.

    Pre-flight (kernels, exams, report files, model) before any work; then one item per exam. A
    failing exam is recorded (failed + reason) and the cohort continues; the report covers every
    exam of this run (exit code 5 when any failed). ``mapper`` decides where each exam runs
    (default: here, in order; :class:`medseg.scale.items.RayMapper` for ``--ray``); the report is
    written here either way.
    """
    from medseg.ct.cohort import discover_exams
    from medseg.ct.models import DEMO_NOTE, find_model, kernel_specs, load_predictor
    from medseg.engine.progress import progress_bar
    from medseg.io.atomic import atomic_dir, check_apart
    from medseg.scale.items import local_map

    cfg = config
    src, tgt = kernel_specs(cfg.source, cfg.target, vendor=cfg.vendor)
    out_dir = Path(out_dir)
    exams = discover_exams(list(inputs))
    for path in inputs:
        check_apart(out_dir, Path(path), what="the QA report")
    check_qa_outputs(out_dir, pdf=cfg.pdf, overwrite=cfg.overwrite)
    if cfg.save_masks:
        check_output(out_dir / MASKS, overwrite=cfg.overwrite)
    entry = find_model(src, tgt, weights=cfg.weights, models_dirs=cfg.models_dirs)
    source, target = entry.source, entry.target  # as the weights spell them
    predictor = load_predictor(entry, device=cfg.device, amp=cfg.amp)
    row = cond.conditioned_row(
        cfg.conditioned, src, tgt, models_dirs=cfg.models_dirs, device=cfg.device, amp=cfg.amp
    )
    result = RunResult(
        "ct-report",
        summary={
            "source_kernel": source,
            "target_kernel": target,
            "vendor": entry.vendor or src.vendor,
            "weights": str(entry.path),
            "demo_weights": entry.demo,
            **predictor.describe(),
            **({"conditioned": row.describe()} if row else {}),
        },
        warnings=[DEMO_NOTE] if entry.demo else [],
    )
    figures: list[tuple[str, object]] = []
    with (
        atomic_dir(out_dir / MASKS, overwrite=cfg.overwrite) if cfg.save_masks else nullcontext() as mask_tmp
    ):
        bar = progress_bar(exams, total=len(exams), desc="exams", enabled=cfg.progress, unit="exam")
        run_one = functools.partial(
            _report_exam, predictor, cfg, source, target, mask_tmp, out_dir / MASKS, conditioned=row
        )
        outcomes = (mapper or local_map)(run_one, exams)
        for exam, outcome in zip(bar, outcomes):
            bar.set_postfix(exam=exam.name)
            if isinstance(outcome, Exception):  # a bug, not a bad exam: as the local loop
                raise outcome
            item, panels = result.add(outcome[0]), outcome[1]
            for warning in item.warnings:
                log.warning("%s: %s", exam.name, warning)
            if not item.ok:
                log.error("%s: %s", exam.name, item.reason)
            if panels is not None and len(figures) < MAX_FIGURES:
                z, *slabs = panels
                fig = slice_figure(*slabs, source, target)
                fig.suptitle(f"slice {z}")  # the slab is that one slice of the exam
                figures.append((f"Exam {exam.name}", fig))
    result.outputs.update(
        write_qa_outputs(
            out_dir,
            result.items,
            source=source,
            target=target,
            inputs=[str(i) for i in inputs],
            figures=figures,
            pdf=cfg.pdf,
            conditioned=row.describe() if row else None,
        )
    )
    if cfg.save_masks:
        result.outputs["masks"] = str(out_dir / MASKS)
    result.summary.update(cohort_summary(result.items))
    return result


def _report_exam(
    predictor: Any,
    cfg: ReportConfig,
    source: str,
    target: str,
    mask_tmp: Path | None,
    mask_dir: Path,
    exam: Any,
    conditioned: cond.ConditionedRow | None = None,
) -> tuple[ItemResult, tuple | None]:
    """One exam: convert its source series, compare with the target one (what a mapper runs, here
    or on a Ray worker). Returns the item and, for the figure, the slice with most lung as 1-slice
    volumes (not the whole exam); a bad exam is a failed item, not an exception."""
    from medseg.ct.alignment import grid_from_meta, grid_mismatch
    from medseg.ct.convert import convert_volume
    from medseg.io.volume import write_volume_sitk

    item = ItemResult(exam.name)
    try:
        refs = {k: _exam_series(exam, k) for k in (source, target)}
        missing = [k for k, ref in refs.items() if ref is None]
        if missing:
            found = ", ".join(exam.series) or "none"
            raise InputError(f"no {' or '.join(missing)} series (found: {found})", path=exam.path)
        original, meta = refs[source].load()
        reference, ref_meta = refs[target].load()
        ours, theirs = grid_from_meta(meta, len(original)), grid_from_meta(ref_meta, len(reference))
        problem = grid_mismatch(ours, theirs, f"the {source} series")
        if problem and original.shape == reference.shape:  # else the shape check below says it
            raise InputError(f"the {target} series {problem}: not the same slices", path=refs[target].path)
        # what the series reader noticed (gantry tilt, uneven slices), per series
        item.warnings += [
            f"{k} series: {w}" for k, m in ((source, meta), (target, ref_meta)) for w in m.warnings
        ]
        converted = convert_volume(predictor, original, batch_size=cfg.batch_size, progress=cfg.progress)
        others, plan = {}, None
        if conditioned is not None:
            try:
                others[cond.PREFIX], plan = conditioned.convert(original, meta.spacing, cfg.batch_size)
            except InputError as exc:  # e.g. a target outside the trained range: the row is n/a
                item.warnings.append(f"sharpness-conditioned converter not run: {exc.message}")
        item.metrics, mask = evaluate_exam(exam.name, original, converted, reference, meta.spacing, others)
        item.warnings += [] if mask.any() else [NO_LUNGS]
        if conditioned is not None:
            item.metrics = {**cond.nan_metrics(), **item.metrics}
        if plan is not None:
            item.metrics.update(sharpness_plan_source=plan.source, sharpness_plan_target=plan.target)
        sharpness, kernel_warnings = kernel_check(
            original, converted, reference, meta.spacing, source=source, target=target
        )
        item.warnings += kernel_warnings
        item.metrics.update(sharpness)
        if mask_tmp is not None:
            name = f"{safe_name(exam.name)}_lungmask.nii.gz"
            write_volume_sitk(mask_tmp / name, mask.astype(np.uint8), meta, dtype=np.uint8)
            item.outputs["lung_mask"] = str(mask_dir / name)
    except (MedsegError, OSError) as exc:
        item.status, item.reason = FAILED, _reason(exc)
        return item, None
    z = int(np.argmax(mask.sum(axis=(1, 2)))) if mask.any() else original.shape[0] // 2
    sl = slice(z, z + 1)
    return item, (z, original[sl], converted[sl], reference[sl], mask[sl])


def _exam_series(exam, kernel: str):
    """An exam's series of ``kernel`` (kernel names compare case-insensitively), or None."""
    if kernel in exam.series:
        return exam.series[kernel]
    return next((ref for k, ref in exam.series.items() if k.casefold() == kernel.casefold()), None)


def _reason(exc: BaseException) -> str:
    """An error in words: the message, with the file it concerns."""
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.filename}: {exc.strerror}" if exc.filename else exc.strerror
    return str(exc)


def _num(value: Any, fmt: str = ".1f", unit: str = "") -> str:
    """A number for people: 'n/a' when missing."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return f"{value:{fmt}}{unit}"


def qa_text(metrics: dict[str, Any]) -> str:
    """One exam's QA numbers in words (for ct-convert --reference)."""
    reduction = metrics.get("rmse_reduction_pct")
    if reduction is not None and isinstance(reduction, (int, float)) and reduction < 0:
        change = f"{_num(-reduction, unit=' %')} HIGHER: the conversion moved away from the reference"
    else:
        change = f"{_num(reduction, unit=' %')} lower"
    return (
        f"RMSE vs reference: original {_num(metrics.get('rmse_original_hu'), unit=' HU')}, converted "
        f"{_num(metrics.get('rmse_converted_hu'), unit=' HU')} ({change}); LAA-950 original "
        f"{_num(metrics.get('laa950_original'), unit=' %')}, converted "
        f"{_num(metrics.get('laa950_converted'), unit=' %')}, reference "
        f"{_num(metrics.get('laa950_reference'), unit=' %')}"
    )


def report_text(result: RunResult) -> str:
    """What ct-report prints for people."""
    s = result.summary
    lines = [
        f"{s.get('ok', 0)} of {s.get('exams', 0)} exam(s) evaluated"
        + (f", {s['failed']} failed" if s.get("failed") else "")
        + (
            f"; mean RMSE reduction {_num(s.get('rmse_reduction_pct_mean'), unit=' %')}"
            if s.get("ok")
            else ""
        )
    ]
    for key, label, unit in (("laa950", "LAA-950", " points"), ("perc15", "Perc15", " HU")):
        for name, v in s.get(f"bland_altman_{key}", {}).items():
            lines.append(agreement_line(f"{label} {name.replace('_', ' ')}", v, "+.2f", unit))
    if "rmse_conditioned_hu_mean" in s:
        lines.append(cond.summary_text(s, s.get("conditioned")))
    if "html" in result.outputs:
        lines.append(f"report: {result.outputs['html']}")
    return "\n".join(lines)
