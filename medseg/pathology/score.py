"""Whole-slide C4d scoring: tissue -> tiles -> batched Faster R-CNN -> merged PTCs -> Banff category.

Library entry points (importable by batch scripts): :func:`score_slides` for a batch with failure
handling and ``--resume``, :func:`score_slide` for one open slide with a loaded detector.

Memory stays bounded: tiles stream through a bounded queue of reader threads (decoding overlaps
inference), only tissue tiles are read, and per slide only the detections are kept.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medseg.errors import InputError, MedsegError

log = logging.getLogger("medseg.pathology")

CSV_NAME = "scores.csv"
CSV_COLUMNS = ["slide", "status", "reason", "c4d_pos", "c4d_neg", "ptc_total", "percent_positive",
               "c4d_positive_ihc", "banff_category", "tissue_area_mm2", "tiles_tissue", "tiles_read",
               "tiles_feasible", "tiles_failed", "wall_s", "slide_mpp", "target_mpp", "path"]
OUTPUT_FILES = ("summary.json", "detections.geojson", "overlay.png")
COLORS = {1: (200, 90, 20), 2: (40, 120, 220)}


@dataclass
class ScoreConfig:
    target_mpp: float = 0.5
    tile: int = 1024
    overlap: int = 160
    batch_size: int = 4
    workers: int = 2
    min_score: float = 0.5
    nms_iou: float = 0.5
    min_tissue: float = 0.05
    slide_mpp: float | None = None
    feasibility: str | None = None  # None/"default", "none" or "module:function"
    device: str = "auto"
    amp: str | bool | None = None
    queue_depth: int = 0  # tiles in flight; 0 = 2 batches


def banff_category(pos: int, neg: int) -> tuple[str, float]:
    """Banff C4d category for IHC on paraffin from PTC counts: (category, percent positive)."""
    total = pos + neg
    if total == 0:
        return "not assessable", float("nan")
    pct = 100.0 * pos / total
    if pos == 0:
        return "C4d0", pct
    if pct < 10:
        return "C4d1", pct
    if pct <= 50:
        return "C4d2", pct
    return "C4d3", pct


def merge_tile_detections(grid, tile, boxes: np.ndarray, labels: np.ndarray, scores: np.ndarray,
                          tolerance: float = 16.0):
    """Keep detections whose centre lies in ``tile``'s core; return them in level-0 pixels.

    The core is widened by ``tolerance`` px: a PTC centred right on a core boundary is then kept
    by both neighbours (its two whole views then merge in :func:`class_nms`) instead of being
    lost when the two detections' centres jitter to opposite sides. Fragments of PTCs cut by a
    tile edge have their centres within half an enlarged box of that edge, outside the widened
    core as long as ``overlap / 2 - tolerance`` exceeds half a box.
    """
    if len(boxes) == 0:
        return boxes.reshape(0, 4), labels, scores
    cx = tile.x + (boxes[:, 0] + boxes[:, 2]) / 2
    cy = tile.y + (boxes[:, 1] + boxes[:, 3]) / 2
    half, stride = grid.overlap / 2, grid.stride
    x_lo = tile.x + half - tolerance if tile.col > 0 else -np.inf
    x_hi = tile.x + stride + half + tolerance if tile.col < grid.n_cols - 1 else np.inf
    y_lo = tile.y + half - tolerance if tile.row > 0 else -np.inf
    y_hi = tile.y + stride + half + tolerance if tile.row < grid.n_rows - 1 else np.inf
    keep = (cx >= x_lo) & (cx < x_hi) & (cy >= y_lo) & (cy < y_hi)
    shifted = boxes[keep] + np.array([tile.x, tile.y, tile.x, tile.y], float)
    return shifted * grid.scale, labels[keep], scores[keep]


def class_nms(boxes: np.ndarray, labels: np.ndarray, scores: np.ndarray, iou: float):
    """Class-aware NMS over the whole slide (safety net after core ownership)."""
    import torch
    from torchvision.ops import batched_nms

    if len(boxes) == 0:
        return boxes.reshape(0, 4), labels, scores
    keep = batched_nms(torch.as_tensor(boxes, dtype=torch.float32), torch.as_tensor(scores, dtype=torch.float32),
                       torch.as_tensor(labels), iou).numpy()
    keep.sort()
    return boxes[keep], labels[keep], scores[keep]


@dataclass
class SlideResult:
    """Everything a slide produced (detections in level-0 pixels)."""

    summary: dict[str, Any]
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4)))
    labels: np.ndarray = field(default_factory=lambda: np.zeros(0, int))
    scores: np.ndarray = field(default_factory=lambda: np.zeros(0))
    thumbnail: np.ndarray | None = None
    tissue_mask: np.ndarray | None = None
    thumb_downsample: float = 1.0


def score_slide(path: str | Path, detector, config: ScoreConfig | None = None) -> SlideResult:
    """Score one slide with a loaded :class:`~medseg.pathology.detector.Detector` (or anything
    with the same ``predict`` and ``config.margins``)."""
    from medseg.pathology.feasibility import load_hook
    from medseg.pathology.slide import detect_tissue, open_slide, read_downsampled
    from medseg.pathology.tiling import make_grid, plan_tiles, read_tile, stream_tiles

    cfg = config or ScoreConfig()
    t0 = time.perf_counter()
    feasible = load_hook(cfg.feasibility)
    with open_slide(path, slide_mpp=cfg.slide_mpp) as slide:
        grid = make_grid(slide, target_mpp=cfg.target_mpp, tile=cfg.tile, overlap=cfg.overlap)
        tissue = detect_tissue(slide)
        tiles = plan_tiles(slide, grid, tissue, min_tissue=cfg.min_tissue)
        if not tiles:
            raise InputError("no tissue tile at the target resolution", path=path)
        depth = cfg.queue_depth or 2 * cfg.batch_size
        n_read = n_feasible = n_failed = 0
        reasons: dict[str, int] = {}
        errors: list[str] = []
        all_b, all_l, all_s = [], [], []
        analysed: list[list[int]] = []
        pending: list[tuple[Any, np.ndarray]] = []

        def flush() -> None:
            batch = np.stack([img for _t, img in pending])
            for (t, _img), (b, lab, s) in zip(pending, detector.predict(batch, min_score=cfg.min_score)):
                b, lab, s = merge_tile_detections(grid, t, b, lab, s)
                all_b.append(b)
                all_l.append(lab)
                all_s.append(s)
            pending.clear()

        def read_and_check(t):  # runs in the reader threads, overlapping inference
            img = read_tile(slide, t, cfg.tile)
            return img, feasible(img)

        for t, item in stream_tiles(tiles, read_and_check, workers=cfg.workers, depth=depth):
            if isinstance(item, Exception):
                n_failed += 1
                errors.append(str(item))
                if isinstance(item, InputError) and n_failed > max(3, len(tiles) // 10):
                    raise InputError(f"too many unreadable tiles ({n_failed}): {item.message}", path=path)
                continue
            n_read += 1
            img, (ok, reason) = item
            if not ok:
                key = reason.split(" ")[0]
                reasons[key] = reasons.get(key, 0) + 1
                continue
            n_feasible += 1
            analysed.append([t.row, t.col])
            pending.append((t, img))
            if len(pending) >= cfg.batch_size:
                flush()
        if pending:
            flush()
        if n_read == 0:
            raise InputError(f"no tile could be read: {errors[0] if errors else 'unknown'}", path=path)
        boxes = np.concatenate(all_b) if all_b else np.zeros((0, 4))
        labels = np.concatenate(all_l).astype(int) if all_l else np.zeros(0, int)
        scores = np.concatenate(all_s) if all_s else np.zeros(0)
        boxes, labels, scores = class_nms(boxes, labels, scores, cfg.nms_iou)
        pos, neg = int((labels == 1).sum()), int((labels == 2).sum())
        category, pct = banff_category(pos, neg)
        summary = {
            "slide": Path(path).stem, "path": str(path), "status": "ok", "reason": "",
            "c4d_pos": pos, "c4d_neg": neg, "ptc_total": pos + neg,
            "percent_positive": None if math.isnan(pct) else round(pct, 2),
            "c4d_positive_ihc": pos > 0, "banff_category": category,
            "tissue_area_mm2": round(tissue.area_mm2(slide.mpp), 4),
            "tiles_tissue": len(tiles), "tiles_read": n_read, "tiles_feasible": n_feasible, "tiles_failed": n_failed,
            "tiles_rejected": reasons, "wall_s": round(time.perf_counter() - t0, 3),
            "slide_mpp": slide.mpp, "slide_mpp_source": slide.mpp_source, "target_mpp": cfg.target_mpp,
            "slide_size": [slide.width, slide.height], "vendor": slide.vendor, "tile": cfg.tile,
            "overlap": cfg.overlap, "min_score": cfg.min_score,
            "margins": dict(getattr(detector.config, "margins", {})),
            "weights": getattr(detector, "source", ""),
            "grid": {"tile": grid.tile, "overlap": grid.overlap, "n_rows": grid.n_rows, "n_cols": grid.n_cols,
                     "analysed_tiles": analysed},
        }
        thumb, thumb_ds = read_downsampled(slide, max(tissue.downsample / 8, max(slide.width, slide.height) / 1024))
        return SlideResult(summary, boxes, labels, scores, thumb, tissue.mask, thumb_ds)


# -- outputs ------------------------------------------------------------------------------------
def ptc_box(box: np.ndarray, label: int, margins: dict[str, int], scale: float) -> list[float]:
    """Undo the training enlargement: the detected PTC itself (level-0 px)."""
    m = margins.get("C4d+" if label == 1 else "C4d-", 0) * scale
    x0, y0, x1, y1 = box
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    hw, hh = max((x1 - x0) / 2 - m, 2 * scale), max((y1 - y0) / 2 - m, 2 * scale)
    return [cx - hw, cy - hh, cx + hw, cy + hh]


def to_geojson(result: SlideResult) -> dict:
    """QuPath-importable FeatureCollection (level-0 px): one detection per PTC."""
    s = result.summary
    scale = s["target_mpp"] / s["slide_mpp"]
    feats = []
    for i, (b, lab, sc) in enumerate(zip(result.boxes, result.labels, result.scores)):
        x0, y0, x1, y1 = (round(float(v), 1) for v in ptc_box(b, int(lab), s["margins"], scale))
        name = "C4d+" if lab == 1 else "C4d-"
        feats.append({"type": "Feature", "id": f"det-{i}",
                      "geometry": {"type": "Polygon", "coordinates": [[[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]]},
                      "properties": {"objectType": "detection", "name": f"PTC {name}",
                                     "classification": {"name": name, "color": list(COLORS[int(lab)])},
                                     "score": round(float(sc), 4),
                                     "detection_box": [round(float(v), 1) for v in b]}})
    return {"type": "FeatureCollection", "features": feats}


def overlay_png(result: SlideResult, max_size: int = 1024) -> bytes:
    """Thumbnail with the tissue outline and one dot per detected PTC."""
    from PIL import Image, ImageDraw
    from scipy import ndimage as ndi

    thumb = result.thumbnail if result.thumbnail is not None else np.full((64, 64, 3), 255, np.uint8)
    img = Image.fromarray(thumb)
    f = max(1.0, max(img.size) / max_size)
    if f > 1:
        img = img.resize((int(img.width / f), int(img.height / f)), Image.BILINEAR)
    if result.tissue_mask is not None and result.tissue_mask.any():
        big = np.asarray(Image.fromarray(result.tissue_mask.astype(np.uint8) * 255).resize(img.size, Image.BILINEAR)) > 127
        edge = big ^ ndi.binary_erosion(big, iterations=2)
        arr = np.asarray(img).copy()
        arr[edge] = (20, 160, 60)
        img = Image.fromarray(arr)
    draw = ImageDraw.Draw(img)
    k = result.thumb_downsample * f
    r = max(2, int(3 * 1024 / max_size))
    for b, lab in zip(result.boxes, result.labels):
        cx, cy = (b[0] + b[2]) / 2 / k, (b[1] + b[3]) / 2 / k
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], outline=COLORS[int(lab)], width=2)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def write_outputs(result: SlideResult, folder: Path) -> None:
    """Per-slide outputs, each atomic; summary.json last (its presence marks a complete slide)."""
    from medseg.io.atomic import atomic_path, write_text

    folder.mkdir(parents=True, exist_ok=True)
    write_text(folder / "detections.geojson", json.dumps(to_geojson(result)))
    with atomic_path(folder / "overlay.png") as tmp:
        tmp.write_bytes(overlay_png(result))
    write_text(folder / "summary.json", json.dumps(result.summary, indent=2))


def is_complete(folder: Path) -> bool:
    try:
        summary = json.loads((folder / "summary.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return summary.get("status") == "ok" and all((folder / f).is_file() for f in OUTPUT_FILES)


def update_csv(path: Path, row: dict[str, Any]) -> None:
    """Add (or replace) the slide's row of the batch table, rewriting it atomically."""
    from medseg.io.atomic import write_text

    rows: list[dict[str, str]] = []
    if path.is_file():
        with path.open(newline="", encoding="utf-8") as fh:
            rows = [r for r in csv.DictReader(fh) if r.get("slide") != row["slide"]]
    rows.append({c: "" if row.get(c) is None else row.get(c) for c in CSV_COLUMNS})
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, buf.getvalue())


def expand_inputs(inputs: Iterable[str | Path]) -> list[Path]:
    """Slides from paths, folders (their slide files) and CSV lists (a ``path``/``slide`` column or the first)."""
    exts = {".svs", ".ndpi", ".mrxs", ".tif", ".tiff", ".scn", ".vms", ".vmu", ".bif", ".svslide", ".dcm"}
    out: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            out += sorted(q for q in p.iterdir() if q.suffix.lower() in exts and q.is_file())
        elif p.suffix.lower() == ".csv" and p.is_file():
            with p.open(newline="", encoding="utf-8") as fh:
                reader = csv.reader(fh)
                header = next(reader, [])
                col = next((i for i, h in enumerate(header) if h.strip().lower() in ("path", "slide", "file")), None)
                if col is None:  # no header: first column, first row included
                    col, first = 0, header
                    if first:
                        out.append((p.parent / first[0].strip()).resolve() if not Path(first[0]).is_absolute() else Path(first[0]))
                for r in reader:
                    if r and r[col].strip():
                        q = Path(r[col].strip())
                        out.append(q if q.is_absolute() else p.parent / q)
        else:
            out.append(p)
    return out


def unique_names(paths: list[Path]) -> list[str]:
    from medseg.io.atomic import safe_name

    names, seen = [], {}
    for p in paths:
        base = safe_name(p.name.split(".")[0], default="slide")
        n = seen.get(base, 0)
        seen[base] = n + 1
        names.append(base if n == 0 else f"{base}_{n + 1}")
    return names


def score_slides(inputs: Iterable[str | Path], out: str | Path, *, weights: str | Path,
                 config: ScoreConfig | None = None, resume: bool = False, overwrite: bool = False,
                 detector=None, report: bool = True) -> dict:
    """Score many slides; a bad slide becomes a failed row and the batch goes on.

    Returns ``{"slides": [...rows], "ok": n, "failed": n, "skipped": n, "out": dir}``.
    """
    from medseg.engine.runtime import resolve_amp_dtype, select_device
    from medseg.errors import OutputExistsError
    from medseg.pathology.detector import load_detector

    cfg = config or ScoreConfig()
    out = Path(out)
    paths = expand_inputs(inputs)
    if not paths:
        raise InputError("no slides given")
    if detector is None:
        device = select_device(cfg.device)
        detector = load_detector(weights, device=device, amp_dtype=resolve_amp_dtype(device, cfg.amp))
    rows: list[dict] = []
    counts = {"ok": 0, "failed": 0, "skipped": 0}
    for path, name in zip(paths, unique_names(paths)):
        folder = out / name
        if folder.exists() and is_complete(folder):
            if resume:
                summary = json.loads((folder / "summary.json").read_text(encoding="utf-8"))
                rows.append({**summary, "slide": name, "status": "skipped (complete)"})
                counts["skipped"] += 1
                log.info("%s: complete, skipped (--resume)", name)
                continue
            if not overwrite:
                raise OutputExistsError("slide results exist (use --resume to skip or --overwrite to replace)",
                                        path=folder)
        try:
            result = score_slide(path, detector, cfg)
            result.summary["slide"] = name
            write_outputs(result, folder)
            row = result.summary
            counts["ok"] += 1
            log.info("%s: %s, %d C4d+ / %d C4d- PTCs (%s %%), %d tiles in %.1f s", name, row["banff_category"],
                     row["c4d_pos"], row["c4d_neg"], row["percent_positive"], row["tiles_feasible"], row["wall_s"])
        except MedsegError as exc:
            row = {"slide": name, "path": str(path), "status": "failed", "reason": exc.message}
            counts["failed"] += 1
            log.warning("%s: failed: %s", name, exc.message)
        except (OSError, ValueError, RuntimeError, MemoryError) as exc:
            reason = f"{exc.__class__.__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            row = {"slide": name, "path": str(path), "status": "failed", "reason": reason}
            counts["failed"] += 1
            log.warning("%s: failed: %s", name, reason)
        update_csv(out / CSV_NAME, row)
        rows.append(row)
    if report:
        from medseg.pathology.report import write_batch_report

        write_batch_report(out, rows)
    return {"out": str(out), "csv": str(out / CSV_NAME), "report": str(out / "report.html") if report else None,
            "config": asdict(cfg), "weights": str(weights), **counts, "slides": rows}
