"""Annotations -> detector training data, with the mask-enlargement trick of Kim et al. 2019.

Each labelled PTC mask is enlarged by a per-class margin before its box is taken (defaults 50 px
for C4d+, 40 px for C4d-, in target-resolution pixels), so the box includes the capillary's
surroundings; the box is then clipped to the tile. Dilating a mask by a disc of radius ``m``
moves its extreme points by exactly ``m`` along each axis, so the enlarged box is the mask's box
grown by ``m`` on every side (computed that way, without dilating pixels).

Inputs: a slide + GeoJSON polygons (QuPath export, classification ``C4d+``/``C4d-``), or a folder
of image tiles with label masks (``<name>_mask.png``: 1 = C4d+, 2 = C4d-; instances are the
connected components). Output folder: ``images/*.png`` + ``annotations.json``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from medseg.errors import InputError
from medseg.io.atomic import atomic_path, write_text

log = logging.getLogger("medseg.pathology")

LABELS = {"C4d+": 1, "C4d-": 2}


@dataclass
class PrepareConfig:
    margins: dict[str, int] = field(default_factory=lambda: {"C4d+": 50, "C4d-": 40})
    target_mpp: float = 0.5
    tile: int = 512
    overlap: int = 0
    min_visible: float = 0.5  # keep a PTC in a tile when this part of its own box is inside
    min_tissue: float = 0.2
    slide_mpp: float | None = None


def class_of(name: str | None) -> str | None:
    """Map QuPath classification names to C4d+ / C4d- (None for anything else)."""
    if not name:
        return None
    n = name.strip().lower().replace("\u2212", "-")
    if n in ("c4d+", "c4d positive", "positive", "ptc+", "c4d_pos", "pos"):
        return "C4d+"
    if n in ("c4d-", "c4d negative", "negative", "ptc-", "c4d_neg", "neg"):
        return "C4d-"
    return None


def read_geojson_boxes(path: str | Path) -> np.ndarray:
    """PTC polygons of a GeoJSON file -> rows (x0, y0, x1, y1, label) in level-0 pixels."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read GeoJSON: {exc}", path=path) from None
    feats = data.get("features", []) if isinstance(data, dict) else data
    rows, skipped = [], 0
    for f in feats:
        props = f.get("properties") or {}
        cls = props.get("classification") or {}
        name = class_of(cls.get("name") if isinstance(cls, dict) else str(cls))
        geom = f.get("geometry") or {}
        polys = {"Polygon": [geom.get("coordinates")], "MultiPolygon": geom.get("coordinates")}.get(geom.get("type"))
        if name is None or not polys:
            skipped += 1
            continue
        pts = np.array([p for poly in polys for p in poly[0]], float)
        rows.append((*pts.min(0), *pts.max(0), LABELS[name]))
    if skipped:
        log.warning("%s: skipped %d features that are not C4d+/C4d- polygons", path.name, skipped)
    return np.array(rows, float).reshape(-1, 5)


def enlarge_boxes(boxes: np.ndarray, labels: np.ndarray, margins: dict[str, int], width: int,
                  height: int) -> np.ndarray:
    """Grow each box by its class margin (the enlarged mask's box) and clip it to the tile."""
    m = np.where(labels == LABELS["C4d+"], margins["C4d+"], margins["C4d-"]).astype(float)[:, None]
    out = boxes + np.hstack([-m, -m, m, m])
    out[:, [0, 2]] = out[:, [0, 2]].clip(0, width)
    out[:, [1, 3]] = out[:, [1, 3]].clip(0, height)
    return out


def boxes_from_label_mask(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Semantic mask (1 = C4d+, 2 = C4d-) -> instance boxes (x0, y0, x1, y1) and labels."""
    from scipy import ndimage as ndi

    boxes, labels = [], []
    for value in (1, 2):
        inst, n = ndi.label(mask == value)
        for sl in ndi.find_objects(inst):
            if sl is None:
                continue
            boxes.append((sl[1].start, sl[0].start, sl[1].stop, sl[0].stop))
            labels.append(value)
    return np.array(boxes, float).reshape(-1, 4), np.array(labels, int)


def _tile_targets(boxes: np.ndarray, labels: np.ndarray, x: float, y: float, size: int, cfg: PrepareConfig):
    local = boxes - np.array([x, y, x, y])
    inter_w = (np.minimum(local[:, 2], size) - np.maximum(local[:, 0], 0)).clip(0)
    inter_h = (np.minimum(local[:, 3], size) - np.maximum(local[:, 1], 0)).clip(0)
    area = ((local[:, 2] - local[:, 0]) * (local[:, 3] - local[:, 1])).clip(1e-6)
    keep = inter_w * inter_h / area >= cfg.min_visible
    return enlarge_boxes(local[keep], labels[keep], cfg.margins, size, size), labels[keep]


def _write_dataset(out: Path, records: list[dict], cfg: PrepareConfig, sources: list[str]) -> dict:
    meta = {"classes": list(LABELS), "margins": cfg.margins, "target_mpp": cfg.target_mpp, "tile": cfg.tile,
            "sources": sources, "images": records}
    write_text(out / "annotations.json", json.dumps(meta, indent=1))
    counts = {k: int(sum(r["labels"].count(v) for r in records)) for k, v in LABELS.items()}
    return {"out": str(out), "images": len(records), "boxes": counts, "margins": cfg.margins}


def _save_png(path: Path, rgb: np.ndarray) -> None:
    from PIL import Image

    with atomic_path(path) as tmp:
        Image.fromarray(rgb).save(tmp, format="PNG")


def prepare_slides(pairs: list[tuple[Path, Path]], out: str | Path, *, config: PrepareConfig | None = None,
                   overwrite: bool = False) -> dict:
    """(slide, GeoJSON) pairs -> tissue tiles at the target resolution + enlarged, clipped boxes."""
    from medseg.io.atomic import check_output, safe_name
    from medseg.pathology.slide import detect_tissue, open_slide
    from medseg.pathology.tiling import make_grid, plan_tiles, read_tile

    cfg = config or PrepareConfig()
    out = check_output(Path(out) / "annotations.json", overwrite=overwrite).parent
    records: list[dict] = []
    for slide_path, ann_path in pairs:
        rows = read_geojson_boxes(ann_path)
        with open_slide(slide_path, slide_mpp=cfg.slide_mpp) as slide:
            grid = make_grid(slide, target_mpp=cfg.target_mpp, tile=cfg.tile, overlap=cfg.overlap)
            boxes = rows[:, :4] / grid.scale
            labels = rows[:, 4].astype(int)
            tissue = detect_tissue(slide)
            stem = safe_name(Path(slide_path).stem)
            for t in plan_tiles(slide, grid, tissue, min_tissue=cfg.min_tissue):
                b, lab = _tile_targets(boxes, labels, t.x, t.y, cfg.tile, cfg)
                name = f"{stem}_r{t.row:04d}_c{t.col:04d}.png"
                _save_png(out / "images" / name, read_tile(slide, t, cfg.tile))
                records.append({"file": f"images/{name}", "boxes": np.round(b, 1).tolist(), "labels": lab.tolist(),
                                "source": str(slide_path)})
    return _write_dataset(out, records, cfg, [str(p) for p, _ in pairs])


def prepare_masks(folder: str | Path, out: str | Path, *, config: PrepareConfig | None = None,
                  overwrite: bool = False) -> dict:
    """Folder of ``X.png`` + ``X_mask.png`` tiles (already at the target resolution) -> dataset."""
    from PIL import Image

    from medseg.io.atomic import check_output

    cfg = config or PrepareConfig()
    folder = Path(folder)
    out = check_output(Path(out) / "annotations.json", overwrite=overwrite).parent
    records: list[dict] = []
    images = sorted(p for p in folder.glob("*.png") if not p.stem.endswith("_mask"))
    if not images:
        raise InputError("no PNG tiles found (expected X.png + X_mask.png)", path=folder)
    for img_path in images:
        mask_path = img_path.with_name(f"{img_path.stem}_mask.png")
        if not mask_path.is_file():
            raise InputError(f"label mask {mask_path.name} missing", path=img_path)
        rgb = np.asarray(Image.open(img_path).convert("RGB"))
        mask = np.asarray(Image.open(mask_path))
        if mask.shape[:2] != rgb.shape[:2]:
            raise InputError("mask and image sizes differ", path=mask_path)
        boxes, labels = boxes_from_label_mask(mask)
        h, w = rgb.shape[:2]
        b = enlarge_boxes(boxes, labels, cfg.margins, w, h)
        _save_png(out / "images" / img_path.name, rgb)
        records.append({"file": f"images/{img_path.name}", "boxes": np.round(b, 1).tolist(), "labels": labels.tolist(),
                        "source": str(img_path)})
    return _write_dataset(out, records, cfg, [str(folder)])


def config_dict(cfg: PrepareConfig) -> dict:
    return asdict(cfg)
