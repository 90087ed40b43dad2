"""What ``slide-score`` writes: per slide a folder (summary, QuPath GeoJSON, overlay), per batch a table.

A slide's folder is published whole (built in a temporary sibling, then renamed), so a folder
that exists is a finished slide; ``summary.json`` with status ok marks it complete for
``--resume``. The batch table ``scores.csv`` is rewritten whole by every run: it describes that
run (plus, with ``--resume``, the slides kept from earlier runs), never a stale failure.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from medseg.pathology.labels import CLASS_NAMES, COLORS, POSITIVE

TABLE_NAME = "scores.csv"
TABLE_COLUMNS = [
    "slide",
    "status",
    "reason",
    "c4d_pos",
    "c4d_neg",
    "ptc_total",
    "percent_positive",
    "c4d_positive_ihc",
    "banff_category",
    "min_ptcs",
    "tissue_area_mm2",
    "feasible_area_mm2",
    "stain_qc_status",
    "stain_qc_kind",
    "stain_qc_reasons",
    "stain_qc_flags",
    "stain_qc_skipped",
    "stain_qc_dab_fraction",
    "stain_qc_eosin_fraction",
    "stain_qc_hematoxylin_fraction",
    "stain_qc_background_brightness",
    "stain_qc_blur_fraction",
    "stain_qc_pen_fraction",
    "dab_pattern",
    "dab_pattern_nuclear_fraction",
    "tiles_tissue",
    "tiles_read",
    "tiles_feasible",
    "tiles_failed",
    "cascade_tiles_gated",
    "cascade_tiles_skipped",
    "wall_s",
    "slide_mpp",
    "target_mpp",
    "path",
]
OUTPUT_FILES = {"summary": "summary.json", "detections": "detections.geojson", "overlay": "overlay.png"}


def ptc_box(box: np.ndarray, label: int, margins: dict[str, int], scale: float) -> list[float]:
    """Undo the training enlargement: the detected PTC itself (level-0 px)."""
    m = margins.get(CLASS_NAMES.get(int(label), ""), 0) * scale
    x0, y0, x1, y1 = box
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    hw, hh = max((x1 - x0) / 2 - m, 2 * scale), max((y1 - y0) / 2 - m, 2 * scale)
    return [cx - hw, cy - hh, cx + hw, cy + hh]


def ptc_outline(
    outline: np.ndarray, box: np.ndarray, label: int, margins: dict[str, int], scale: float
) -> list:
    """Undo the training enlargement of a Mask R-CNN outline (level-0 px): the outline eroded by the
    class margin, as :func:`ptc_box` shrinks the box; where nothing is left, the shrunk box."""
    from medseg.pathology.maskrcnn import shrink_outline

    m = margins.get(CLASS_NAMES.get(int(label), ""), 0) * scale
    ring = shrink_outline(outline, m, step=scale)
    if ring is None:
        x0, y0, x1, y1 = ptc_box(box, label, margins, scale)
        ring = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]])
    return [[round(float(x), 1), round(float(y), 1)] for x, y in ring]


def to_geojson(result) -> dict:
    """QuPath-importable FeatureCollection (level-0 px): one detection per PTC.

    The polygon is the PTC itself: the box (Faster R-CNN) or the mask outline (Mask R-CNN) with the
    training margin taken off; ``detection_box`` keeps the enlarged box the detector predicted.
    """
    from medseg.pathology.maskrcnn import split_detections

    s = result.summary
    scale = s["target_mpp"] / s["slide_mpp"]
    boxes, outlines = split_detections(result.boxes)
    feats = []
    for i, (b, lab, sc) in enumerate(zip(boxes, result.labels, result.scores)):
        if outlines is not None:
            ring = ptc_outline(outlines[i], b, int(lab), s["margins"], scale)
        else:
            x0, y0, x1, y1 = (round(float(v), 1) for v in ptc_box(b, int(lab), s["margins"], scale))
            ring = [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]
        name = CLASS_NAMES[int(lab)]
        feats.append(
            {
                "type": "Feature",
                "id": f"det-{i}",
                "geometry": {"type": "Polygon", "coordinates": [ring]},
                "properties": {
                    "objectType": "detection",
                    "name": f"PTC {name}",
                    "classification": {"name": name, "color": list(COLORS[name])},
                    "score": round(float(sc), 4),
                    "detection_box": [round(float(v), 1) for v in b],
                    "outline": "mask" if outlines is not None else "box",
                },
            }
        )
    return {"type": "FeatureCollection", "features": feats}


def overlay_png(result, max_size: int = 1024) -> bytes:
    """Thumbnail with the tissue outline and one circle per detected PTC."""
    from PIL import Image, ImageDraw
    from scipy import ndimage as ndi

    thumb = result.thumbnail if result.thumbnail is not None else np.full((64, 64, 3), 255, np.uint8)
    img = Image.fromarray(thumb)
    f = max(1.0, max(img.size) / max_size)
    if f > 1:
        img = img.resize((int(img.width / f), int(img.height / f)), Image.BILINEAR)
    if result.tissue_mask is not None and result.tissue_mask.any():
        big = np.asarray(
            Image.fromarray(result.tissue_mask.astype(np.uint8) * 255).resize(img.size, Image.BILINEAR)
        )
        big = big > 127
        edge = big ^ ndi.binary_erosion(big, iterations=2)
        arr = np.asarray(img).copy()
        arr[edge] = (20, 160, 60)
        img = Image.fromarray(arr)
    draw = ImageDraw.Draw(img)
    k = result.thumb_downsample * f
    r = max(2, int(3 * 1024 / max_size))
    for b, lab in zip(result.boxes, result.labels):
        cx, cy = (b[0] + b[2]) / 2 / k, (b[1] + b[3]) / 2 / k
        draw.ellipse(
            [cx - r, cy - r, cx + r, cy + r], outline=COLORS[CLASS_NAMES.get(int(lab), POSITIVE)], width=2
        )
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def write_slide_outputs(result, folder: Path) -> Path:
    """The slide's folder, published whole: replaces an earlier one only once the new one is complete."""
    from medseg.io.atomic import atomic_dir

    with atomic_dir(folder, overwrite=True) as tmp:
        (tmp / OUTPUT_FILES["detections"]).write_text(json.dumps(to_geojson(result)), encoding="utf-8")
        (tmp / OUTPUT_FILES["overlay"]).write_bytes(overlay_png(result))
        (tmp / OUTPUT_FILES["summary"]).write_text(json.dumps(result.summary, indent=2), encoding="utf-8")
    return folder


def read_summary(folder: Path) -> dict[str, Any]:
    return json.loads((folder / OUTPUT_FILES["summary"]).read_text(encoding="utf-8"))


def is_complete(folder: Path) -> bool:
    """A finished slide: summary with status ok and every output file present."""
    try:
        summary = read_summary(folder)
    except (OSError, ValueError):
        return False
    return summary.get("status") == "ok" and all((folder / f).is_file() for f in OUTPUT_FILES.values())


def remove_stale(folder: Path) -> None:
    """Remove a slide's earlier results (they would contradict this run's failed row)."""
    if folder.is_dir():
        shutil.rmtree(folder, ignore_errors=True)
    elif folder.exists():
        folder.unlink()


def read_table(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with path.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def kept_rows(out: Path, *, exclude: set[str]) -> list[dict[str, Any]]:
    """``--resume``: rows of the earlier table for finished slides that this run does not touch."""
    return [
        r
        for r in read_table(out / TABLE_NAME)
        if r.get("status") == "ok"
        and r.get("slide") not in exclude
        and is_complete(out / str(r.get("slide")))
    ]


def flat_row(row: dict[str, Any]) -> dict[str, Any]:
    """A summary as a table row: the stain-QC numbers (``summary["stain_qc"]``) as ``stain_qc_*`` columns."""
    qc = row.get("stain_qc")
    if not isinstance(qc, dict):
        return row
    flat = {f"stain_qc_{k}": v for k, v in qc.items() if not isinstance(v, (list, dict))}
    return {**flat, **{k: v for k, v in row.items() if k != "stain_qc"}}


def write_table(path: Path, rows: list[dict[str, Any]]) -> Path:
    """The batch table, rewritten whole and atomically (one row per slide)."""
    from medseg.io.atomic import write_text

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=TABLE_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(
        {c: "" if row.get(c) is None else row.get(c) for c in TABLE_COLUMNS} for row in map(flat_row, rows)
    )
    return write_text(path, buf.getvalue())
