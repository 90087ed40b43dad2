"""Batch slide scoring: many slides -> one folder per slide, ``scores.csv``, ``report.html``.

:func:`score_slides` returns a :class:`~medseg.results.RunResult` (one item per slide: ok / failed +
reason / skipped). :func:`record_slide`, :func:`record_kept` and :func:`finish_run` are shared with
the Ray runner (:mod:`medseg.scale.slides`), so both write the same rows and summaries.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from medseg.errors import InputError, MedsegError, OutputExistsError
from medseg.pathology.score import (
    QC_FAILED,
    SLIDE_ERRORS,
    ScoreConfig,
    SlideResult,
    score_slide,
    slide_text,
)
from medseg.results import FAILED, OK, SKIPPED, ItemResult, RunResult

log = logging.getLogger("medseg.pathology")

# numbers of a slide that the JSON result and the batch table carry
ITEM_METRICS = (
    "c4d_pos",
    "c4d_neg",
    "ptc_total",
    "percent_positive",
    "c4d_positive_ihc",
    "banff_category",
    "tissue_area_mm2",
    "tiles_tissue",
    "tiles_read",
    "tiles_feasible",
    "tiles_failed",
    "wall_s",
    "min_ptcs",
    "status",
    "stain_qc_status",
    "stain_qc_kind",
    "stain_qc_reasons",
    "stain_qc_flags",
    "stain_qc_skipped",
    "dab_pattern",
)


def _item(name: str, row: dict[str, Any], folder: Path, status: str = OK, reason: str = "") -> ItemResult:
    from medseg.pathology.outputs import OUTPUT_FILES

    return ItemResult(
        name,
        status,
        reason,
        outputs={k: str(folder / f) for k, f in OUTPUT_FILES.items()},
        metrics={k: row.get(k) for k in ITEM_METRICS},
    )


def failure_reason(exc: BaseException) -> str:
    if isinstance(exc, MedsegError):
        return exc.message
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.strerror} ({exc.filename})" if exc.filename else exc.strerror
    first = str(exc).splitlines()[0] if str(exc) else ""
    return f"{exc.__class__.__name__}: {first}" if first else exc.__class__.__name__


def preflight(out: Path, names: list[str], *, resume: bool, overwrite: bool) -> None:
    """Before any work: ``out`` is writable, and no slide's results would be clobbered silently."""
    from medseg.io.atomic import check_writable

    if resume and overwrite:
        raise InputError(
            "--resume and --overwrite exclude each other (keep finished slides, or replace them)"
        )
    if out.exists() and not out.is_dir():  # found only when the first slide is written, otherwise
        raise InputError("--out must be a folder (one subfolder per slide); this is a file", path=out)
    check_writable(out)
    if not (resume or overwrite):
        existing = [n for n in names if (out / n).exists()]
        if existing:
            shown = ", ".join(existing[:3]) + (f" and {len(existing) - 3} more" if len(existing) > 3 else "")
            raise OutputExistsError(
                f"holds results of {shown}; use --resume to keep finished slides or "
                "--overwrite to replace them",
                path=out,
            )


def batch_inputs(
    inputs, out: str | Path, *, resume: bool, overwrite: bool
) -> tuple[Path, list[Path], list[str]]:
    """The slides of a batch (files, folders, CSV lists) with unique output names, after the
    pre-flight checks of ``out``; shared by the local and the Ray runner."""
    from medseg.io.atomic import check_apart
    from medseg.pathology.slide import expand_inputs, unique_names

    out = Path(out)
    paths = expand_inputs(inputs)
    if not paths:
        folders = [
            Path(p) for p in ([inputs] if isinstance(inputs, (str, Path)) else inputs) if Path(p).is_dir()
        ]
        nested = [q for f in folders for q in expand_inputs(sorted(d for d in f.iterdir() if d.is_dir()))]
        hint = (
            f"; {len(nested)} in subfolders of {folders[0]} (folders are not searched deeper: give "
            f"the subfolders, e.g. {folders[0]}/*/)"
            if nested
            else ""
        )
        raise InputError(f"no slides given (slide files, folders of slides or CSV lists){hint}")
    missing = [p for p in paths if not p.exists()]
    if len(missing) == len(paths):  # a typo, not a batch with one lost slide: stop before any output
        shown = ", ".join(str(p) for p in missing[:3]) + (" ..." if len(missing) > 3 else "")
        raise InputError(f"no such slide file or folder: {shown}")
    names = unique_names(paths)
    check_apart(out, [*([inputs] if isinstance(inputs, (str, Path)) else inputs), *paths])
    preflight(out, names, resume=resume, overwrite=overwrite)
    return out, paths, names


def record_kept(run: RunResult, name: str, folder: Path) -> dict[str, Any]:
    """``--resume``: a slide already scored in ``folder`` becomes a skipped item; its table row."""
    from medseg.pathology.outputs import read_summary

    row = {**read_summary(folder), "slide": name}
    run.add(_item(name, row, folder, SKIPPED, "already scored in this folder (--resume)"))
    log.info("%s: already scored, kept (--resume)", name)
    return {**row, "reason": "scored by an earlier run (--resume)"}


def record_slide(
    run: RunResult, name: str, path: str | Path, folder: Path, outcome: SlideResult | BaseException
) -> dict[str, Any]:
    """Publish one slide's outcome (its folder written atomically, or a failed row with the
    reason and earlier results removed) as an item of ``run``; return its table row. The one
    writer of a slide's outputs, locally and on Ray (the driver)."""
    from medseg.pathology.outputs import remove_stale, write_slide_outputs

    if isinstance(outcome, BaseException):
        reason = failure_reason(outcome)
        remove_stale(folder)  # results of an earlier run of this slide would contradict the table
        run.add(ItemResult(name, FAILED, reason))
        log.warning("%s: failed: %s", name, reason)
        return {"slide": name, "path": str(path), "status": FAILED, "reason": reason}
    write_slide_outputs(outcome, folder)
    row = outcome.summary
    if row["status"] == QC_FAILED:  # an outcome, not a crash: skipped with the reason, exit 0
        run.add(_item(name, row, folder, SKIPPED, row["reason"]))
        log.warning("%s: not scored: %s", name, row["reason"])
    else:
        run.add(_item(name, row, folder, OK, row["reason"]))
        log.info("%s: %s, %d tiles in %.1f s", name, slide_text(row), row["tiles_feasible"], row["wall_s"])
        if row["stain_qc_status"] != "passed":
            log.warning("%s: scored despite the stain QC (--skip-stain-qc): %s", name, row["reason"])
    return row


def check_resume_settings(out: Path, kept: list[str], cfg: ScoreConfig, weights: str) -> None:
    """``--resume`` keeps finished slides: refuse (exit 2) when they were scored with other weights
    or scoring settings, whose results would sit in one table with this run's as if comparable."""
    from medseg.pathology.outputs import read_summary

    now = {
        "weights": str(weights),
        "target_mpp": cfg.target_mpp,
        "tile": cfg.tile,
        "overlap": cfg.overlap,
        "min_score": cfg.min_score,
        "min_ptcs": cfg.min_ptcs,
        "stain_qc_skipped": bool(cfg.skip_stain_qc),
    }
    for name in kept:
        try:
            before = read_summary(out / name)
        except (OSError, ValueError):
            continue
        if before.get("stain_qc_status") == "passed":  # --skip-stain-qc changes nothing for it
            before.pop("stain_qc_skipped", None)
        diff = [f"{k} {before[k]!r} (now {v!r})" for k, v in now.items() if k in before and before[k] != v]
        if diff:
            raise InputError(
                f"--resume: {name} was scored with other settings: {'; '.join(diff)}; use --overwrite to "
                "score every slide again, or another --out",
                path=out,
            )


def finish_run(
    run: RunResult,
    rows: list[dict[str, Any]],
    out: Path,
    cfg: ScoreConfig,
    *,
    report: bool,
    runtime: dict[str, Any],
    weights: str,
) -> None:
    """The batch table, the report and the run summary (local and Ray runs alike)."""
    from medseg.pathology.outputs import TABLE_NAME, write_table

    run.outputs["table"] = str(write_table(out / TABLE_NAME, rows))
    if report:
        from medseg.pathology.report import write_batch_report

        run.outputs["report"] = str(write_batch_report(out, rows))
    categories: dict[str, int] = {}
    for r in rows:
        if r.get("status") == OK:
            categories[r["banff_category"]] = categories.get(r["banff_category"], 0) + 1
    run.summary = {
        "out": str(out),
        "slides": len(rows),
        "categories": categories,
        "qc_failed": sum(r.get("status") == QC_FAILED for r in rows),
        "min_ptcs": cfg.min_ptcs,
        "skip_stain_qc": cfg.skip_stain_qc,
        **runtime,
        "weights": str(weights),
        "demo_weights": False,
        "config": asdict(cfg),
    }


def score_slides(
    inputs: Iterable[str | Path],
    out: str | Path,
    config: ScoreConfig | None = None,
    *,
    weights: str | Path | None = None,
    detector=None,
    resume: bool = False,
    overwrite: bool = False,
    report: bool = True,
    progress: bool = False,
) -> RunResult:
    """Score many slides; a bad slide becomes a failed item (with its reason) and the batch goes on.

    ``weights``: a detector weights file (default: the demo detector, with a warning);
    ``detector``: an already loaded one instead. ``out/scores.csv`` and ``out/report.html`` describe
    this run; with ``resume`` slides already scored in ``out`` are kept (skipped, their rows kept).
    Raises (before any work) only for what stops everything: bad options, no usable weights,
    results that exist without ``resume``/``overwrite``, an unwritable ``out``.
    """
    from medseg.engine.weights import resolve_weights
    from medseg.pathology.detector import DEMO_WEIGHTS, check_detector_resolution, load_detector
    from medseg.pathology.feasibility import load_hook
    from medseg.pathology.outputs import is_complete, kept_rows

    cfg = config or ScoreConfig()
    cfg.check()
    out, paths, names = batch_inputs(inputs, out, resume=resume, overwrite=overwrite)
    feasible = load_hook(cfg.feasibility)
    is_demo = False
    if detector is None:
        weights_path, is_demo = resolve_weights(weights, demo=DEMO_WEIGHTS)
        detector = load_detector(weights_path, device=cfg.device, amp=cfg.amp)
    check_detector_resolution(cfg.target_mpp, detector)  # before any slide: it would fail them all
    runtime = detector.describe() if hasattr(detector, "describe") else {}
    log.info(
        "scoring %d slide(s) on %s (%s) with %s",
        len(paths),
        runtime.get("device", "the given detector"),
        runtime.get("amp", "its own precision"),
        Path(getattr(detector, "source", "") or "the given detector").name,
    )
    run = RunResult("slide-score")
    rows: list[dict[str, Any]] = kept_rows(out, exclude=set(names)) if resume else []
    if resume:  # before any work: one table must not mix two detectors or two rules
        kept = [r["slide"] for r in rows] + [n for n in names if is_complete(out / n)]
        check_resume_settings(out, kept, cfg, getattr(detector, "source", ""))
    for path, name in zip(paths, names):
        folder = out / name
        if resume and is_complete(folder):
            rows.append(record_kept(run, name, folder))
            continue
        try:
            result = score_slide(path, detector, cfg, feasible=feasible, progress=progress, name=name)
            rows.append(record_slide(run, name, path, folder, result))
        except SLIDE_ERRORS as exc:
            rows.append(record_slide(run, name, path, folder, exc))
    finish_run(run, rows, out, cfg, report=report, runtime=runtime, weights=getattr(detector, "source", ""))
    run.summary["demo_weights"] = is_demo
    if is_demo:
        run.warnings.append("demo weights (trained on synthetic slides only, not for clinical use)")
    return run
