"""``cells-segment`` over a batch: outputs checked before any work, one item per image, resume, summary.

Per image ``NAME``: ``NAME_labels.tif`` (instances, 16/32-bit; stacks as multi-page),
optional ``NAME_prob.tif``, ``NAME_overlay.png`` (``NAME_overlay_pNNN.png`` per page of a
stack), ``NAME_cells.csv``; per batch ``summary.json`` and ``report.html``.

Contract (:func:`segment_images`): every output is checked before any work (exists -> exit 3
unless ``overwrite``/``resume``; not writable -> exit 2), then the model is loaded (exit 4), and
only then is anything written. A bad image becomes a failed item with its reason and the batch
goes on; a failed image leaves none of its outputs behind. ``summary.json`` describes this run
only; with ``resume`` images done in an earlier run are kept (status ``skipped``) and the rest
(new or failed before) are segmented. One image's work is :class:`medseg.cells.segment.CellSegmenter`.
"""

from __future__ import annotations

import functools
import json
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from medseg.cells.io import (
    check_pages,
    check_positive,
    list_images,
    normalise,
    overlay_outlines,
    read_image,
    write_float_tiff,
    write_labels,
    write_png,
)
from medseg.cells.stain import (
    empty_field,
)
from medseg.cells.table import cell_table, csv_text
from medseg.errors import InputError, OutputExistsError
from medseg.io.atomic import check_apart, check_writable, safe_name, write_text
from medseg.results import FAILED, OK, SKIPPED, ItemResult, RunResult

if TYPE_CHECKING:
    from medseg.scale.items import Mapper

from medseg.cells.segment import (
    COMMAND,
    MAX_FIGURES,
    REPORT,
    SUMMARY,
    THUMB_EDGE,
    CellSegmenter,
    SegmentConfig,
)

log = logging.getLogger("medseg.cells")


def _unique_stems(paths: list[Path]) -> list[str]:
    """One output name per image: ``a.png`` and ``a.tif`` -> ``a``, ``a_2``; a file already called
    ``a_2.png`` then gets ``a_2_2`` (names are compared without case: macOS and Windows folders)."""
    taken: set[str] = set()
    stems = []
    for p in paths:
        base = safe_name(p.stem)
        stem, n = base, 1
        while stem.lower() in taken:
            n += 1
            stem = f"{base}_{n}"
        taken.add(stem.lower())
        stems.append(stem)
    return stems


def _existing_outputs(out_dir: Path, stem: str) -> list[Path]:
    """Files an earlier run wrote for ``stem`` (whatever its page count or options)."""
    names = [f"{stem}_labels.tif", f"{stem}_cells.csv", f"{stem}_prob.tif", f"{stem}_overlay.png"]
    found = [out_dir / n for n in names if (out_dir / n).exists()]
    return found + sorted(out_dir.glob(f"{stem}_overlay_p[0-9][0-9][0-9].png"))


def _outputs(out_dir: Path, stem: str, pages: int, config: SegmentConfig) -> dict[str, Path]:
    paths = {"labels": out_dir / f"{stem}_labels.tif"}
    if config.save_probability:
        paths["probability"] = out_dir / f"{stem}_prob.tif"
    if pages == 1:
        paths["overlay"] = out_dir / f"{stem}_overlay.png"
    else:
        for k in range(pages):
            paths[f"overlay_p{k:03d}"] = out_dir / f"{stem}_overlay_p{k:03d}.png"
    paths["cells"] = out_dir / f"{stem}_cells.csv"  # written last: its presence marks a complete image
    return paths


def _thumbnail(rgb: np.ndarray) -> np.ndarray:
    step = max(1, int(np.ceil(max(rgb.shape[:2]) / THUMB_EDGE)))
    return np.ascontiguousarray(rgb[::step, ::step])


def segment_one(
    segmenter: CellSegmenter, path: Path, out_dir: Path, stem: str
) -> tuple[ItemResult, np.ndarray, list[int]]:
    """Segment one file (2D or a stack, plane by plane) and write its outputs.

    Returns the item, a thumbnail of the first overlay and the cell areas. If anything fails,
    the outputs already written for this image are removed before the error propagates.
    """
    t0 = time.perf_counter()
    planes, meta = read_image(path, channel=segmenter.config.channel, keep_color=True)
    outputs = _outputs(out_dir, stem, planes.shape[0], segmenter.config)
    written: list[Path] = []
    stains: list[dict[str, str]] = []
    diameters: list[float | None] = []
    models: list[str] = []
    try:
        labels_stack, prob_stack, rows, thumb = [], [], [], None
        for k, plane in enumerate(planes):
            empty = empty_field(plane, meta["dtype"])  # glass: 0 cells, its reason as the stain
            r = segmenter.empty_result(plane, empty) if empty else segmenter.analyse(plane, path=path)
            prob, labels = r.prob, r.labels
            if not stains or stains[-1] != r.stain.to_dict():
                stains.append(r.stain.to_dict())
            diameters.append(None if r.diameter is None else round(r.diameter, 2))
            models.append(r.weights)
            labels_stack.append(labels)
            if segmenter.config.save_probability:
                prob_stack.append(prob)
            rows += cell_table(labels, r.nuclear, page=k)
            rgb = overlay_outlines(normalise(r.nuclear), labels)
            written.append(
                write_png(outputs["overlay" if planes.shape[0] == 1 else f"overlay_p{k:03d}"], rgb)
            )
            thumb = _thumbnail(rgb) if thumb is None else thumb
        written.append(
            write_labels(
                outputs["labels"], np.stack(labels_stack) if len(labels_stack) > 1 else labels_stack[0]
            )
        )
        if prob_stack:
            written.append(
                write_float_tiff(
                    outputs["probability"], np.stack(prob_stack) if len(prob_stack) > 1 else prob_stack[0]
                )
            )
        written.append(write_text(outputs["cells"], csv_text(rows)))
    except BaseException:
        for p in written:
            p.unlink(missing_ok=True)
        raise
    areas = [r["area"] for r in rows]
    per_page = [int(lab.max()) for lab in labels_stack]
    item = ItemResult(
        name=str(path),
        outputs={k: str(v) for k, v in outputs.items()},
        metrics={
            "pages": int(planes.shape[0]),
            "height": meta["height"],
            "width": meta["width"],
            "dtype": meta["dtype"],
            "color": meta["color"],
            "channel": meta.get("channel"),
            "stain": stains[0]["stain"] if len(stains) == 1 else [x["stain"] for x in stains],
            "stain_reason": stains[0]["how"] if len(stains) == 1 else [x["how"] for x in stains],
            "diameter_px": diameters[0] if len(diameters) == 1 else diameters,
            "weights": models[0] if len(set(models)) == 1 else models,
            "cells": int(sum(per_page)),
            "cells_per_page": per_page,
            "median_area": float(np.median(areas)) if areas else None,
            "seconds": round(time.perf_counter() - t0, 3),
        },
    )
    return item, thumb, areas


def _previous_items(out_dir: Path, config: SegmentConfig) -> dict[str, dict[str, Any]]:
    """--resume: the images an earlier run finished (status ok, every output still there)."""
    path = out_dir / SUMMARY
    if not path.is_file():
        return {}
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        items = doc["items"]
    except (OSError, ValueError, KeyError, TypeError):
        log.warning("%s: unreadable; every image is segmented again", path)
        return {}
    if doc.get("summary", {}).get("settings") != json.loads(json.dumps(config.settings())):
        log.warning(
            "the earlier run in %s used other settings; its finished images are kept as they are", out_dir
        )
    return {
        str(Path(i["name"]).resolve()): i
        for i in items
        if i.get("status") in (OK, SKIPPED)
        and i.get("outputs")
        and all(Path(p).is_file() for p in i["outputs"].values())
    }


def _preflight(paths: list[Path], stems: list[str], out_dir: Path, config: SegmentConfig) -> None:
    """Before any work: the folder must be writable and hold no outputs this run would replace.

    One image alone whose TIFF pages differ in size is refused here (exit 2, nothing written); in a
    batch it is a failed item like any unreadable image.
    """
    check_positive(config.diameter, "--diameter")
    check_positive(config.pixel_size, "--pixel-size")
    if len(paths) == 1:
        check_pages(paths[0])
    check_writable(out_dir)
    if config.overwrite or config.resume or not out_dir.is_dir():
        return
    batch = [out_dir / n for n in (SUMMARY, REPORT) if (out_dir / n).exists()]
    existing = batch + [p for stem in stems for p in _existing_outputs(out_dir, stem)]
    if existing:
        names = ", ".join(p.name for p in existing[:3]) + (
            f" and {len(existing) - 3} more" if len(existing) > 3 else ""
        )
        raise OutputExistsError(
            f"outputs exist ({names}); use --overwrite to replace them or --resume to keep finished images",
            path=out_dir,
        )


def _remove(paths: set[Path]) -> None:
    for p in paths:
        p.unlink(missing_ok=True)


def _segment_item(
    segmenter: CellSegmenter, out_dir: Path, path_stem: tuple[Path, str]
) -> tuple[ItemResult, np.ndarray, list[int]]:
    """:func:`segment_one` for one (path, stem) item: what a mapper runs, here or on a Ray worker."""
    return segment_one(segmenter, path_stem[0], out_dir, path_stem[1])


def _failure_reason(exc: BaseException) -> str:
    if isinstance(exc, InputError):
        return exc.message
    if isinstance(exc, OSError):
        return f"cannot write its outputs: {exc.strerror or exc}" + (
            f" ({exc.filename})" if exc.filename else ""
        )
    return f"unexpected error ({exc.__class__.__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"


def _run_summary(
    result: RunResult, out_dir: Path, segmenter: CellSegmenter, config: SegmentConfig, t0: float
) -> dict[str, Any]:
    """The run's summary (weights, settings, counts) over the items recorded so far."""
    cells = sum(int(i.metrics.get("cells", 0)) for i in result.items if i.status != FAILED)
    return {
        "out_dir": str(out_dir),
        **segmenter.describe(),
        "settings": config.settings(),
        "batch_size": config.batch_size,
        "images": len(result.items),
        "segmented": result.counts[OK],
        "kept_from_earlier_run": result.counts[SKIPPED],
        "failed": result.counts[FAILED],
        # planes segmented (a multi-page TIFF counts each page; its item has "pages" too)
        "pages": sum(int(i.metrics.get("pages", 0)) for i in result.items if i.status != FAILED),
        "total_cells": cells,
        "seconds": round(time.perf_counter() - t0, 3),
    }


def segment_images(
    inputs: list[str | Path],
    out_dir: str | Path,
    config: SegmentConfig | None = None,
    *,
    mapper: Mapper | None = None,
) -> RunResult:
    """Segment every image (files or folders of images) into ``out_dir``: one item per image.

    ``mapper`` decides where each image is segmented (default: here, one after the other;
    :class:`medseg.scale.items.RayMapper` for ``--ray``); rows, resume and summary are recorded
    here either way, so both runs give the same outputs.
    """
    from medseg.engine.progress import progress_bar
    from medseg.scale.items import local_map

    config = config or SegmentConfig()
    out_dir = Path(out_dir)
    paths = list_images(inputs)
    if not paths:
        where = f"in {inputs[0]}" if len(inputs) == 1 else f"in {', '.join(map(str, inputs))}"
        raise InputError(f"no input images {where} (give files or folders with .png, .tif or .jpg images)")
    stems = _unique_stems(paths)
    check_apart(out_dir, [config.weights, *inputs, *paths])  # never into (or around) an input folder
    _preflight(paths, stems, out_dir, config)
    segmenter = CellSegmenter(config)  # a bad model stops here, before anything is written
    previous = _previous_items(out_dir, config) if config.resume else {}
    out_dir.mkdir(parents=True, exist_ok=True)
    result = RunResult(command=COMMAND)
    thumbs: list[tuple[str, np.ndarray, int]] = []
    areas: list[int] = []
    t0 = time.perf_counter()
    todo = [(p, s) for p, s in zip(paths, stems) if str(p.resolve()) not in previous]
    # earlier outputs (--overwrite / --resume), listed before any item of this run writes
    stale_of = {stem: set(_existing_outputs(out_dir, stem)) for _p, stem in todo}
    outcomes = (mapper or local_map)(functools.partial(_segment_item, segmenter, out_dir), todo)
    try:
        for path, stem in progress_bar(
            list(zip(paths, stems)), desc="cells", enabled=config.progress, unit="image"
        ):
            done = previous.get(str(path.resolve()))
            if done is not None:
                result.add(
                    ItemResult(
                        name=str(path),
                        status=SKIPPED,
                        reason="segmented in an earlier run (--resume)",
                        outputs=done["outputs"],
                        metrics=done.get("metrics", {}),
                    )
                )
                continue
            stale = stale_of[stem]
            outcome = next(outcomes)
            if isinstance(outcome, Exception):  # one bad image must not stop the batch
                exc = outcome
                log.debug("%s failed", path, exc_info=exc)
                item = ItemResult(name=str(path), status=FAILED, reason=_failure_reason(exc))
                log.info("%s: failed: %s", path.name, item.reason)
                result.add(item)
                _remove(stale)  # no earlier outputs that would contradict this failure
                continue
            item, thumb, item_areas = outcome
            _remove(stale - {Path(p) for p in item.outputs.values()})
            log.info(
                "%s: %d cells, stain %s (%s) (%.2f s)",
                path.name,
                item.metrics["cells"],
                item.metrics["stain"],
                item.metrics["stain_reason"],
                item.metrics["seconds"],
            )
            result.add(item)
            areas += item_areas
            if len(thumbs) < MAX_FIGURES:
                thumbs.append((path.name, thumb, item.metrics["cells"]))
    except KeyboardInterrupt:  # Ctrl-C: record what finished, so that --resume keeps it
        result.summary = {**_run_summary(result, out_dir, segmenter, config, t0), "interrupted": True}
        write_text(out_dir / SUMMARY, json.dumps(result.to_dict(), indent=2) + "\n")
        raise
    result.summary = _run_summary(result, out_dir, segmenter, config, t0)
    result.outputs["summary"] = str(out_dir / SUMMARY)
    if config.report:
        from medseg.cells.report import segmentation_report

        result.outputs["report"] = str(out_dir / REPORT)
        segmentation_report(result, thumbs, areas).write_html(out_dir / REPORT)
    if segmenter.is_demo:
        result.warnings.append(
            "demo weights (trained on public real data, DSB 2018 stage 1; see their metadata): "
            "research use, not for clinical use"
        )
    write_text(out_dir / SUMMARY, json.dumps(result.to_dict(), indent=2) + "\n")
    return result


def human_summary(result: RunResult) -> str:
    """One line for the terminal."""
    s = result.summary
    pages = s.get("pages", 0)
    parts = [f"{s['segmented']} image(s) segmented" + (f" ({pages} pages)" if pages > s["images"] else "")]
    if s["kept_from_earlier_run"]:
        parts.append(f"{s['kept_from_earlier_run']} kept from an earlier run")
    if s["failed"]:
        parts.append(f"{s['failed']} failed (listed in {SUMMARY})")
    return f"{', '.join(parts)}: {s['total_cells']} cells -> {s['out_dir']}"
