"""Annotations -> detector training data, with the mask-enlargement trick of Kim et al. 2019.

Each labelled PTC mask is enlarged by a per-class margin before its box is taken (defaults 50 px
for C4d+, 40 px for C4d-, in target-resolution pixels: :data:`medseg.pathology.labels.DEFAULT_MARGINS`),
so the box includes the capillary's surroundings; the box is then clipped to the tile. Dilating a
mask by a disc of radius ``m`` moves its extreme points by exactly ``m`` along each axis, so the
enlarged box is the mask's box grown by ``m`` on every side (computed that way, without dilating pixels).

Inputs: slides + GeoJSON polygons (QuPath export, classification ``C4d+``/``C4d-``), or a folder
of image tiles with label masks (``<name>_mask.png``: 1 = C4d+, 2 = C4d-; instances are the
connected components). Output folder: ``images/*.png`` + ``annotations.json``, published whole.
Each record keeps the PTC outlines (``polygons``, tile px, not enlarged) beside the enlarged boxes:
Mask R-CNN training builds its enlarged instance masks from them.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from medseg.errors import InputError, MedsegError, OutputExistsError
from medseg.io.atomic import atomic_path
from medseg.pathology.labels import CLASS_NAMES, DEFAULT_MARGINS, LABELS, NEGATIVE, POSITIVE, class_of
from medseg.results import FAILED, ItemResult, RunResult

log = logging.getLogger("medseg.pathology")

ANNOTATIONS = "annotations.json"


def _positive(x: float) -> bool:
    """A finite number > 0 (NaN fails every comparison, so ``x <= 0`` lets it through)."""
    return math.isfinite(x) and x > 0


@dataclass
class PrepareConfig:
    margins: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_MARGINS))
    target_mpp: float = 0.5
    tile: int = 512
    overlap: int = 0
    min_visible: float = 0.5  # keep a PTC in a tile when this part of its own box is inside
    min_tissue: float = 0.2
    slide_mpp: float | None = None
    # QuPath point annotations (PTC centres) become boxes of this diameter (um) before the margins:
    # a PTC is ~10-20 um across (lumen + wall); 15 um = 30 px at 0.5 um/px, the synthetic PTCs' size
    point_diameter_um: float = 15.0
    class_map: dict[str, str] = field(default_factory=dict)  # user class name -> C4d+ / C4d- (--class-map)
    reader: str = "auto"  # slide reader backend: auto, openslide, tifffile, dicom

    def check(self) -> None:
        """Pre-flight: values that would fail every slide are an input error (exit 2)."""
        if set(self.margins) != set(LABELS) or any(v < 0 for v in self.margins.values()):
            raise InputError(f"margins must give {POSITIVE} and {NEGATIVE} a size of 0 px or more")
        if not _positive(self.target_mpp) or (self.slide_mpp is not None and not _positive(self.slide_mpp)):
            raise InputError(
                f"--mpp and --slide-mpp must be finite numbers > 0, got {self.target_mpp:g} and "
                f"{self.slide_mpp if self.slide_mpp is not None else 'none'}"
            )
        if self.reader not in ("auto", "openslide", "tifffile", "dicom"):
            raise InputError(f"--reader must be auto, openslide, tifffile or dicom, got {self.reader!r}")
        if not _positive(self.point_diameter_um):
            raise InputError(f"--point-size must be > 0 um, got {self.point_diameter_um:g}")
        bad = sorted(v for v in self.class_map.values() if class_of(v) is None)
        if bad:
            raise InputError(f"--class-map must map to {POSITIVE} or {NEGATIVE}, got {', '.join(bad)}")
        if not 16 <= self.tile <= 4096 or not 0 <= self.overlap < self.tile:
            raise InputError(
                f"--tile must be 16-4096 px and --overlap in [0, tile), got {self.tile} and {self.overlap}"
            )


def parse_class_map(text: str | None) -> dict[str, str]:
    """``"Positive=C4d+,Negative=C4d-"`` -> ``{"positive": "C4d+", "negative": "C4d-"}`` (keys lower case)."""
    out: dict[str, str] = {}
    for part in (text or "").split(","):
        if not part.strip():
            continue
        name, sep, target = part.partition("=")
        cls = class_of(target)
        if not sep or not name.strip() or cls is None:
            raise InputError(
                f"--class-map entries are NAME={POSITIVE} or NAME={NEGATIVE}, comma-separated; "
                f"got {part.strip()!r}"
            )
        out[name.strip().lower()] = cls
    return out


def _feature_class(props: dict, class_map: dict[str, str]) -> str | None:
    """QuPath's ``properties.classification.name`` (or a plain string) -> C4d+ / C4d- / None."""
    cls = props.get("classification") or props.get("class") or {}
    name = cls.get("name") if isinstance(cls, dict) else cls
    if name is None:
        return None
    mapped = {k.lower(): v for k, v in class_map.items()}.get(str(name).strip().lower())
    return mapped if mapped is not None else class_of(str(name))


def load_features(path: Path) -> list:
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))  # Windows tools write a BOM
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read GeoJSON: {exc}", path=path) from None
    feats = data.get("features", []) if isinstance(data, dict) else data
    if isinstance(data, dict) and data.get("type") == "Feature":
        feats = [data]
    if not isinstance(feats, list):
        raise InputError("not a GeoJSON FeatureCollection or list of features", path=path)
    return feats


def _geometry_problem(kind, coords, *, ptc: bool) -> str | None:
    """Why a feature's coordinates cannot be used, in words (None when they can).

    NaN / infinite numbers (Python's JSON reader accepts ``NaN`` and ``Infinity``) are damage in
    any feature; an empty or zero-area polygon is refused for PTC features only (it would count as
    a PTC of no size). Malformed nesting is left to the reader, which skips it with a warning.
    """
    if kind not in ("Point", "MultiPoint", "Polygon", "MultiPolygon", "LineString", "MultiLineString"):
        return None
    try:
        flat = np.asarray(_flatten(coords), float)
    except (TypeError, ValueError):
        return None
    if flat.size and not np.isfinite(flat).all():
        return (
            f"{kind} coordinates contain NaN or infinite values ({int((~np.isfinite(flat)).sum())} of "
            f"{flat.size} numbers): a damaged export, fix or remove the feature"
        )
    if not ptc or kind not in ("Polygon", "MultiPolygon", "Point", "MultiPoint"):
        return None
    if flat.size == 0:
        return f"empty {kind} (no coordinates)"
    if kind in ("Polygon", "MultiPolygon"):
        for poly in [coords] if kind == "Polygon" else coords:
            try:
                ring = np.asarray([p[:2] for p in poly[0]], float)
            except (TypeError, ValueError, IndexError):
                return None
            distinct = len({(float(x), float(y)) for x, y in ring})
            area = 0.5 * abs(
                float(np.dot(ring[:, 0], np.roll(ring[:, 1], 1)) - np.dot(ring[:, 1], np.roll(ring[:, 0], 1)))
            )
            if distinct < 3 or area == 0:
                pts = f"{distinct} distinct point{'s' if distinct != 1 else ''}"
                return f"degenerate polygon ({pts}, zero area): not a PTC outline"
    return None


def _flatten(x) -> list:
    if isinstance(x, (list, tuple)):
        return [v for item in x for v in _flatten(item)]
    return [x]


def check_annotation_files(paths: Iterable[Path], class_map: dict[str, str] | None = None) -> None:
    """Pre-flight: damaged coordinates in any annotation file stop the command (exit 2) before
    anything is written; unreadable files are left to their item (a failed row)."""
    for path in paths:
        if path is None or not Path(path).is_file():
            continue
        try:
            feats = load_features(Path(path))
        except InputError:
            continue
        for index, f in enumerate(feats):
            if not isinstance(f, dict):
                continue
            geom = f.get("geometry") or {}
            name = _feature_class(f.get("properties") or {}, class_map or {})
            problem = _geometry_problem(geom.get("type"), geom.get("coordinates"), ptc=name is not None)
            if problem:
                raise InputError(f"feature index {index} ({name or 'unclassified'}): {problem}", path=path)


def read_geojson_ptcs(
    path: str | Path, *, point_size: float | None = None, class_map: dict[str, str] | None = None
) -> tuple[np.ndarray, list[np.ndarray]]:
    """PTC annotations of a GeoJSON file (QuPath export) -> rows (x0, y0, x1, y1, label) and outlines.

    Coordinates are level-0 px. Polygons give their bounding box and keep their outline (the
    exterior ring; a MultiPolygon's rings together). Points (``Point``/``MultiPoint``: PTC centres,
    QuPath's point tool) give a square of ``point_size`` level-0 px centred on each point, and a
    circle of that diameter as outline; without ``point_size`` points are skipped with a warning.
    ``class_map`` maps the user's class names (any case) to ``C4d+``/``C4d-`` before the built-in
    names (``C4d+``, ``Positive``, ...) are tried. Outlines are (M, 2) arrays, one per row.
    """
    path = Path(path)
    feats = load_features(path)
    rows, outlines, skipped, points_skipped = [], [], 0, 0
    half = (point_size or 0) / 2
    circle = (
        np.stack(
            [
                np.cos(np.linspace(0, 2 * np.pi, 16, endpoint=False)),
                np.sin(np.linspace(0, 2 * np.pi, 16, endpoint=False)),
            ],
            1,
        )
        * half
    )
    for index, f in enumerate(feats):
        if not isinstance(f, dict):
            skipped += 1
            continue
        name = _feature_class(f.get("properties") or {}, class_map or {})
        geom = f.get("geometry") or {}
        kind, coords = geom.get("type"), geom.get("coordinates")
        problem = _geometry_problem(kind, coords, ptc=name is not None)
        if problem:
            raise InputError(f"feature index {index} ({name or 'unclassified'}): {problem}", path=path)
        if name is None or not coords:
            skipped += 1
            continue
        try:
            if kind in ("Point", "MultiPoint"):
                if point_size is None:
                    points_skipped += 1
                    continue
                pts = np.array(coords, float)  # a position may carry a third value (altitude / z)
                for x, y in pts.reshape(-1, pts.shape[-1])[:, :2]:
                    rows.append((x - half, y - half, x + half, y + half, LABELS[name]))
                    outlines.append(circle + (x, y))
            elif kind in ("Polygon", "MultiPolygon"):
                polys = [coords] if kind == "Polygon" else coords
                pts = np.array([p[:2] for poly in polys for p in poly[0]], float)
                rows.append((*pts.min(0), *pts.max(0), LABELS[name]))
                outlines.append(pts)
            else:
                skipped += 1
        except (TypeError, ValueError, IndexError):
            skipped += 1
    if skipped:
        log.warning("%s: skipped %d features that are not C4d+/C4d- polygons or points", path.name, skipped)
    if points_skipped:
        log.warning("%s: skipped %d points (no point size given)", path.name, points_skipped)
    return np.array(rows, float).reshape(-1, 5), outlines


def outside_slide(rows: np.ndarray, width: int, height: int) -> np.ndarray:
    """Rows (x0, y0, x1, y1, ...; level-0 px) whose box lies wholly outside the slide."""
    return (rows[:, 2] <= 0) | (rows[:, 3] <= 0) | (rows[:, 0] >= width) | (rows[:, 1] >= height)


def check_inside(rows: np.ndarray, width: int, height: int, path: Path) -> int:
    """How many annotated PTCs (rows x0, y0, x1, y1, label; level-0 px) lie wholly outside the
    ``width`` x ``height`` slide; InputError when all do: annotations of another slide, of another
    pyramid level, or in micrometres would otherwise give tiles with no PTC in them, and a
    detector trained on those learns that PTCs are background."""
    if len(rows) == 0:
        return 0
    n = int(outside_slide(rows, width, height).sum())
    if n == len(rows):
        x0, y0 = rows[:, :2].min(0)
        x1, y1 = rows[:, 2:4].max(0)
        raise InputError(
            f"all {n} annotated PTCs lie outside the slide ({width} x {height} px at level 0; they span "
            f"x {x0:.0f}-{x1:.0f}, y {y0:.0f}-{y1:.0f}): annotations of another slide, or in other "
            "units than level-0 pixels?",
            path=path,
        )
    if n:
        log.warning(
            "%s: %d of %d annotated PTCs lie outside the slide and are ignored", path.name, n, len(rows)
        )
    return n


def read_geojson_boxes(
    path: str | Path, *, point_size: float | None = None, class_map: dict[str, str] | None = None
) -> np.ndarray:
    """Rows (x0, y0, x1, y1, label) of :func:`read_geojson_ptcs` (level-0 px), without the outlines."""
    return read_geojson_ptcs(path, point_size=point_size, class_map=class_map)[0]


def enlarge_boxes(
    boxes: np.ndarray, labels: np.ndarray, margins: dict[str, int], width: int, height: int
) -> np.ndarray:
    """Grow each box by its class margin (the enlarged mask's box) and clip it to the tile."""
    m = np.where(labels == LABELS[POSITIVE], margins[POSITIVE], margins[NEGATIVE]).astype(float)[:, None]
    out = boxes + np.hstack([-m, -m, m, m])
    out[:, [0, 2]] = out[:, [0, 2]].clip(0, width)
    out[:, [1, 3]] = out[:, [1, 3]].clip(0, height)
    return out


def boxes_from_label_mask(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Semantic mask (1 = C4d+, 2 = C4d-) -> instance boxes (x0, y0, x1, y1) and labels."""
    boxes, labels, _outlines = instances_from_label_mask(mask)
    return boxes, labels


def instances_from_label_mask(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """Semantic mask -> instance boxes, labels and outlines ((M, 2) x, y rings around the pixels)."""
    from scipy import ndimage as ndi
    from skimage.measure import find_contours

    boxes, labels, outlines = [], [], []
    for value in CLASS_NAMES:
        inst, _n = ndi.label(mask == value)
        for i, sl in enumerate(ndi.find_objects(inst), 1):
            if sl is None:
                continue
            boxes.append((sl[1].start, sl[0].start, sl[1].stop, sl[0].stop))
            labels.append(value)
            # contour of the component at half level, on a 1-px padded crop: pixel edges, in x, y
            crop = np.pad((inst[sl] == i).astype(float), 1)
            ring = max(find_contours(crop, 0.5), key=len)
            outlines.append(np.stack([ring[:, 1] - 0.5 + sl[1].start, ring[:, 0] - 0.5 + sl[0].start], 1))
    return np.array(boxes, float).reshape(-1, 4), np.array(labels, int), outlines


def _tile_targets(
    boxes: np.ndarray, labels: np.ndarray, x: float, y: float, size: int, cfg: PrepareConfig, outlines=None
):
    """A tile's enlarged, clipped boxes, labels and (with ``outlines``) the PTC outlines in tile px
    (not enlarged: the training masks are enlarged when they are built, :mod:`medseg.pathology.maskrcnn`)."""
    local = boxes - np.array([x, y, x, y])
    inter_w = (np.minimum(local[:, 2], size) - np.maximum(local[:, 0], 0)).clip(0)
    inter_h = (np.minimum(local[:, 3], size) - np.maximum(local[:, 1], 0)).clip(0)
    area = ((local[:, 2] - local[:, 0]) * (local[:, 3] - local[:, 1])).clip(1e-6)
    keep = inter_w * inter_h / area >= cfg.min_visible
    polys = [outlines[i] - (x, y) for i in np.flatnonzero(keep)] if outlines is not None else None
    return enlarge_boxes(local[keep], labels[keep], cfg.margins, size, size), labels[keep], polys


def _round_polys(polys) -> list:
    return [np.round(np.asarray(p, float), 1).tolist() for p in polys]


def _dataset_meta(records: list[dict], cfg: PrepareConfig, sources: list[str]) -> dict:
    return {
        "classes": list(LABELS),
        "margins": cfg.margins,
        "target_mpp": cfg.target_mpp,
        "tile": cfg.tile,
        "sources": sources,
        "images": records,
    }


def box_counts(records: list[dict]) -> dict[str, int]:
    return {k: int(sum(r["labels"].count(v) for r in records)) for k, v in LABELS.items()}


def _save_png(path: Path, rgb: np.ndarray) -> None:
    from PIL import Image

    with atomic_path(path) as tmp:
        Image.fromarray(rgb).save(tmp, format="PNG")


def _slide_records(
    slide_path: Path, ann_path: Path, staging: Path, cfg: PrepareConfig, name: str | None = None
) -> list[dict]:
    """One slide's tissue tiles (written to ``staging/images``) and their enlarged, clipped boxes."""
    from medseg.io.atomic import safe_name
    from medseg.pathology.slide import check_scale, detect_tissue, open_slide, slide_stem
    from medseg.pathology.tiling import make_grid, plan_slide_tiles, read_tile

    records = []
    backend = {} if cfg.reader == "auto" else {"reader": cfg.reader}
    with open_slide(slide_path, slide_mpp=cfg.slide_mpp, **backend) as slide:
        check_scale(slide, cfg.target_mpp)
        rows, outlines = read_geojson_ptcs(
            ann_path, point_size=cfg.point_diameter_um / slide.mpp, class_map=cfg.class_map
        )
        if len(rows) == 0:
            raise InputError(
                f"no {POSITIVE}/{NEGATIVE} polygons or points in the annotations (map your class names "
                "with --class-map, e.g. Positive=C4d+,Negative=C4d-)",
                path=ann_path,
            )
        check_inside(rows, slide.width, slide.height, ann_path)
        grid = make_grid(slide, target_mpp=cfg.target_mpp, tile=cfg.tile, overlap=cfg.overlap)
        boxes = rows[:, :4] / grid.scale
        labels = rows[:, 4].astype(int)
        outlines = [np.asarray(o, float) / grid.scale for o in outlines]
        tissue = detect_tissue(slide)
        stem = name or safe_name(slide_stem(slide_path))  # unique per run: tiles of two s1.svs never collide
        for t in plan_slide_tiles(slide, grid, tissue, min_tissue=cfg.min_tissue):
            b, lab, polys = _tile_targets(boxes, labels, t.x, t.y, cfg.tile, cfg, outlines)
            name = f"{stem}_r{t.row:04d}_c{t.col:04d}.png"
            _save_png(staging / "images" / name, read_tile(slide, t, cfg.tile))
            records.append(
                {
                    "file": f"images/{name}",
                    "boxes": np.round(b, 1).tolist(),
                    "labels": lab.tolist(),
                    "polygons": _round_polys(polys),
                    "source": str(slide_path),
                }
            )
    if not records:
        raise InputError("no tissue tile at the target resolution", path=slide_path)
    return records


def _mask_records(img_path: Path, staging: Path, cfg: PrepareConfig) -> list[dict]:
    """One ``X.png`` + ``X_mask.png`` tile (already at the target resolution)."""
    from PIL import Image, UnidentifiedImageError

    mask_path = img_path.with_name(f"{img_path.stem}_mask.png")
    if not mask_path.is_file():
        raise InputError(f"label mask {mask_path.name} missing", path=img_path)
    try:
        rgb = np.asarray(Image.open(img_path).convert("RGB"))
        mask = np.asarray(Image.open(mask_path))
    except (OSError, UnidentifiedImageError) as exc:
        raise InputError(f"cannot read the tile or its mask: {exc}", path=img_path) from None
    if mask.shape[:2] != rgb.shape[:2]:
        raise InputError("mask and image sizes differ", path=mask_path)
    if mask.ndim == 3:  # an RGB(A) export of a label mask: usable only when it is grey
        if mask.shape[2] >= 3 and not (mask[..., :1] == mask[..., 1:3]).all():
            raise InputError(
                "colour mask: expected a label mask with one value per pixel (0 background, "
                f"{LABELS[POSITIVE]} {POSITIVE}, {LABELS[NEGATIVE]} {NEGATIVE})",
                path=mask_path,
            )
        mask = mask[..., 0]
    values = np.unique(mask)
    odd = [int(v) for v in values if v not in (0, *CLASS_NAMES)]
    if odd:
        shown = ", ".join(map(str, odd[:5])) + (" ..." if len(odd) > 5 else "")
        raise InputError(
            f"label mask values must be 0 (background), {LABELS[POSITIVE]} ({POSITIVE}) or "
            f"{LABELS[NEGATIVE]} ({NEGATIVE}); found {shown} (a 0/255 binary mask has no classes)",
            path=mask_path,
        )
    boxes, labels, outlines = instances_from_label_mask(mask)
    h, w = rgb.shape[:2]
    b = enlarge_boxes(boxes, labels, cfg.margins, w, h)
    _save_png(staging / "images" / img_path.name, rgb)
    # source = the folder: mask tiles are not slides, so validation holds out tiles, not "slides"
    return [
        {
            "file": f"images/{img_path.name}",
            "boxes": np.round(b, 1).tolist(),
            "labels": labels.tolist(),
            "polygons": _round_polys(outlines),
            "source": str(img_path.parent),
        }
    ]


def pair_annotations(slides: Iterable[str | Path], annotations: str | Path | None) -> list[tuple[Path, Path]]:
    """Each slide with its GeoJSON: ``annotations`` (a file), ``annotations/<slide>.geojson``, or next to it."""
    annotations = Path(annotations) if annotations is not None else None
    if annotations is not None and not annotations.exists():
        raise InputError("annotations file or folder not found", path=annotations)
    from medseg.pathology.slide import slide_stem

    slides = [Path(s) for s in slides]
    if annotations is not None and annotations.is_file() and len({s.resolve() for s in slides}) > 1:
        raise InputError(
            f"--annotations is one file but {len(slides)} slides were given: every slide would get "
            "the same PTCs; give a folder of <slide>.geojson files, or one slide",
            path=annotations,
        )
    pairs = []
    for s in slides:
        if annotations is not None and annotations.is_file():
            pairs.append((s, annotations))
        else:
            folder = annotations or s.parent
            # <name>.geojson, or QuPath's <name>.svs.geojson, or (older rule) up to the first dot
            candidates = [folder / f"{n}.geojson" for n in (slide_stem(s), s.name, s.name.split(".")[0])]
            pairs.append((s, next((c for c in candidates if c.is_file()), candidates[0])))
    return pairs


class _NothingToWrite(Exception):
    """Every input failed: the staging folder is discarded, nothing is published."""


def prepare_dataset(
    slides: Iterable[str | Path],
    out: str | Path,
    config: PrepareConfig | None = None,
    *,
    annotations: str | Path | None = None,
    masks: str | Path | None = None,
    overwrite: bool = False,
    progress: bool = False,
) -> RunResult:
    """slide-prepare: (slides + GeoJSON) or a ``masks`` folder of tiles -> training dataset in ``out``.

    One item per slide (or mask tile); a failing one is recorded with its reason and the others
    are still prepared. ``out`` is built in a temporary sibling and published whole, and only
    when at least one item worked, so a failed run leaves nothing that blocks the rerun.
    """
    from medseg.engine.progress import progress_bar
    from medseg.io.atomic import atomic_dir, check_apart, check_writable

    cfg = config or PrepareConfig()
    cfg.check()
    out = Path(out)
    slides = [Path(s) for s in slides]
    if masks is not None:
        masks = Path(masks)
        if not masks.is_dir():
            raise InputError("--masks must be a folder of X.png + X_mask.png tiles", path=masks)
        jobs = [(p.name, p, None) for p in sorted(masks.glob("*.png")) if not p.stem.endswith("_mask")]
        if not jobs:
            raise InputError("no PNG tiles found (expected X.png + X_mask.png)", path=masks)
        sources = [str(masks)]
    else:
        if not slides:
            raise InputError("give SLIDES (with GeoJSON annotations) or --masks FOLDER")
        from medseg.pathology.slide import unique_names

        seen: set[Path] = set()
        pairs = []
        for s_, a in pair_annotations(slides, annotations):
            if s_.resolve() in seen:  # its tiles twice would weigh it double in training
                log.warning("%s: given twice, prepared once", s_)
                continue
            seen.add(s_.resolve())
            pairs.append((s_, a))
        # unique names: a/s1.svs and b/s1.svs wrote the same tile files, the second over the first
        jobs = [(n, s_, a) for n, (s_, a) in zip(unique_names([p for p, _a in pairs]), pairs)]
        sources = [str(s) for s in slides]
    check_apart(out, [*slides, annotations, masks])  # the dataset never replaces or fills an input
    if masks is None:
        check_annotation_files([a for _n, _s, a in jobs], cfg.class_map)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise OutputExistsError("output exists and is not empty (use --overwrite to replace it)", path=out)
    check_writable(out)
    run = RunResult("slide-prepare")
    records: list[dict] = []
    try:
        with atomic_dir(out, overwrite=True) as staging:
            for name, src, ann in progress_bar(
                jobs,
                total=len(jobs),
                desc="slide-prepare",
                enabled=progress,
                unit="slide" if masks is None else "tile",
            ):
                try:
                    if not Path(src).exists():
                        raise InputError("no such slide file or folder", path=src)
                    if ann is not None and not ann.is_file():
                        raise InputError(f"no annotations {ann}", path=src)
                    recs = (
                        _mask_records(src, staging, cfg)
                        if masks is not None
                        else _slide_records(src, ann, staging, cfg, name)
                    )
                except (MedsegError, OSError, ValueError) as exc:
                    reason = (
                        exc.message if isinstance(exc, MedsegError) else f"{exc.__class__.__name__}: {exc}"
                    )
                    run.add(ItemResult(name, FAILED, reason))
                    log.warning("%s: failed: %s", name, reason)
                    continue
                records += recs
                counts = box_counts(recs)
                run.add(
                    ItemResult(
                        name,
                        metrics={
                            "tiles": len(recs),
                            "boxes_c4d_pos": counts[POSITIVE],
                            "boxes_c4d_neg": counts[NEGATIVE],
                        },
                    )
                )
            if not records:
                raise _NothingToWrite
            meta = _dataset_meta(records, cfg, sources)
            (staging / ANNOTATIONS).write_text(json.dumps(meta, indent=1), encoding="utf-8")
    except _NothingToWrite:
        log.warning("no tile was prepared: nothing written to %s", out)
    else:
        run.outputs["dataset"] = str(out / ANNOTATIONS)
    run.summary = {
        "out": str(out),
        "images": len(records),
        "boxes": box_counts(records),
        "margins": cfg.margins,
        "config": asdict(cfg),
    }
    return run
