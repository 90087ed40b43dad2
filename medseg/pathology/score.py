"""Whole-slide C4d scoring: tissue -> tiles -> batched Faster R-CNN -> merged PTCs -> Banff category.

:func:`score_slide` scores one slide with a loaded detector, built from phases (:func:`plan_slide`,
:func:`read_slide_tiles`, :func:`finish_slide`) that the Ray runner (:mod:`medseg.scale`) composes
too. Batches (:func:`~medseg.pathology.batch.score_slides`) live in :mod:`medseg.pathology.batch`.

Memory stays bounded: tiles are read ahead through the engine prefetcher (decoding overlaps
inference), only tissue tiles are read, and per slide only the detections are kept.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medseg.errors import InputError, MedsegError
from medseg.pathology.dab_pattern import PatternConfig
from medseg.pathology.feasibility import HookError
from medseg.pathology.labels import (
    DEFAULT_MIN_PTCS,
    LABELS,
    NEGATIVE,
    POSITIVE,
    category_text,
    counts_text,
)
from medseg.pathology.stain_qc import QCConfig
from medseg.results import OK

log = logging.getLogger("medseg.pathology")

SLIDE_READERS = ("auto", "openslide", "tifffile", "dicom")
QC_FAILED = "qc_failed"  # table status of a slide that stain QC kept from scoring (an outcome, not a crash)
# what makes one slide a failed row (anything else is a bug and stops the batch)
SLIDE_ERRORS = (MedsegError, OSError, ValueError, RuntimeError, MemoryError)


@dataclass
class ScoreConfig:
    """How slides are tiled and scored (the CLI options of ``slide-score``)."""

    target_mpp: float = 0.5
    tile: int = 1024
    overlap: int = 160
    batch_size: int = 4
    workers: int = 2  # reader threads per group of tiles
    min_score: float = 0.5
    nms_iou: float = 0.5
    min_tissue: float = 0.05
    slide_mpp: float | None = None
    feasibility: str | None = "default"  # "default", "none" or "module:function"
    device: str = "auto"
    amp: str = "auto"
    read_ahead: int = 2  # groups of batch_size tiles read ahead of the detector
    reader: str = "auto"  # slide reader backend: auto, openslide, tifffile, dicom
    min_ptcs: int = DEFAULT_MIN_PTCS  # fewer PTCs assessed -> "not assessable (n PTCs)", counts kept
    skip_stain_qc: bool = False  # QC is still computed and recorded, but does not block scoring
    stain_qc: QCConfig = field(default_factory=QCConfig)
    qc_mosaic_tiles: int = 16  # second look: tissue tiles read at qc_mosaic_mpp (0: never)
    qc_mosaic_mpp: float = 1.0
    qc_mosaic_tile: int = 512
    # DAB share of tissue the second look needs: a C4d0 biopsy stains only its glomerular loops and a
    # few vessels (~0.1-0.3 % of tissue); H&E never reaches the second look (eosin decides)
    qc_mosaic_min_dab: float = 0.0005
    # after the stain passes: is the DAB shaped like capillary walls (C4d) or like nuclei (Ki67)?
    dab_pattern: PatternConfig = field(default_factory=PatternConfig)

    def check(self) -> None:
        """Pre-flight: option values that would fail every slide are an input error (exit 2)."""
        if not (math.isfinite(self.target_mpp) and self.target_mpp > 0):
            raise InputError(f"--mpp must be a finite number > 0, got {self.target_mpp:g}")
        if self.slide_mpp is not None and not (math.isfinite(self.slide_mpp) and self.slide_mpp > 0):
            raise InputError(f"--slide-mpp must be a finite number > 0, got {self.slide_mpp:g}")
        if not (0 <= self.min_score <= 1 and 0 <= self.nms_iou <= 1 and 0 <= self.min_tissue <= 1):
            raise InputError("--min-score, the NMS IoU and the tile tissue share must be numbers in [0, 1]")
        if not 16 <= self.tile <= 4096:  # a typo (10240) would hold GBs per tile through the detector
            raise InputError(f"--tile must be 16-4096 px, got {self.tile}")
        if not 0 <= self.overlap < self.tile:
            raise InputError(
                f"--overlap must be at least 0 and below --tile ({self.tile}), got {self.overlap}"
            )
        if self.batch_size < 1 or self.workers < 1 or self.read_ahead < 1:
            raise InputError("--batch-size, --workers and the read-ahead depth must be at least 1")
        if self.reader not in SLIDE_READERS:
            raise InputError(f"--reader must be one of {', '.join(SLIDE_READERS)}, got {self.reader!r}")
        if self.min_ptcs < 1:
            raise InputError(f"--min-ptcs must be at least 1, got {self.min_ptcs}")
        if self.qc_mosaic_mpp <= 0 or self.qc_mosaic_tile < 16 or self.qc_mosaic_tiles < 0:
            raise InputError("stain-QC second look: qc_mosaic_mpp > 0, qc_mosaic_tile >= 16, tiles >= 0")
        if self.dab_pattern.tiles < 0 or self.dab_pattern.tile < 64 or not self.dab_pattern.mpp > 0:
            raise InputError("DAB pattern check: tiles >= 0 (0: off), tile >= 64 px, mpp > 0")


def banff_category(pos: int, neg: int, min_ptcs: int = 1) -> tuple[str, float]:
    """Banff C4d category for IHC on paraffin from PTC counts: (category, percent positive).

    Below ``min_ptcs`` assessed PTCs the percentage is too uncertain for a category (one detection
    would be "C4d3, 100 %"): ``"not assessable (n PTCs)"``, the percentage is still returned.
    """
    total = pos + neg
    if total < max(1, min_ptcs):
        label = (
            "not assessable" if min_ptcs <= 1 else f"not assessable ({total} PTC{'s' if total != 1 else ''})"
        )
        return label, 100.0 * pos / total if total else float("nan")
    pct = 100.0 * pos / total
    if pos == 0:
        return "C4d0", pct
    if pct < 10:
        return "C4d1", pct
    if pct <= 50:
        return "C4d2", pct
    return "C4d3", pct


def merge_tile_detections(
    grid, tile, boxes: np.ndarray, labels: np.ndarray, scores: np.ndarray, tolerance: float = 16.0
):
    """Keep detections whose centre lies in ``tile``'s core; return them in level-0 pixels.

    The core is widened by ``tolerance`` px: a PTC centred right on a core boundary is then kept
    by both neighbours (its two whole views then merge in :func:`class_nms`) instead of being
    lost when the two detections' centres jitter to opposite sides. Fragments of PTCs cut by a
    tile edge have their centres within half an enlarged box of that edge, outside the widened
    core as long as ``overlap / 2 - tolerance`` exceeds half a box.

    Rows may carry more per-detection data after the box, as (x, y) pairs in tile pixels (Mask
    R-CNN outlines, :mod:`medseg.pathology.maskrcnn`): they are moved and scaled with the box.
    """
    cols = boxes.shape[1] if boxes.ndim == 2 else 4
    if len(boxes) == 0:
        return boxes.reshape(0, cols), labels, scores
    cx = tile.x + (boxes[:, 0] + boxes[:, 2]) / 2
    cy = tile.y + (boxes[:, 1] + boxes[:, 3]) / 2
    half, stride = grid.overlap / 2, grid.stride
    x_lo = tile.x + half - tolerance if tile.col > 0 else -np.inf
    x_hi = tile.x + stride + half + tolerance if tile.col < grid.n_cols - 1 else np.inf
    y_lo = tile.y + half - tolerance if tile.row > 0 else -np.inf
    y_hi = tile.y + stride + half + tolerance if tile.row < grid.n_rows - 1 else np.inf
    keep = (cx >= x_lo) & (cx < x_hi) & (cy >= y_lo) & (cy < y_hi)
    shifted = boxes[keep] + np.where(np.arange(cols) % 2 == 0, float(tile.x), float(tile.y))
    return shifted * grid.scale, labels[keep], scores[keep]


def class_nms(boxes: np.ndarray, labels: np.ndarray, scores: np.ndarray, iou: float):
    """Class-aware NMS over the whole slide (safety net after core ownership); on the box columns,
    extra per-detection columns (outlines) are kept with their rows."""
    import torch
    from torchvision.ops import batched_nms

    if len(boxes) == 0:
        return boxes.reshape(0, boxes.shape[1] if boxes.ndim == 2 else 4), labels, scores
    keep = batched_nms(
        torch.as_tensor(boxes[:, :4], dtype=torch.float32),
        torch.as_tensor(scores, dtype=torch.float32),
        torch.as_tensor(labels),
        iou,
    ).numpy()
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


def _mosaic_tiles(slide, tissue, cfg: ScoreConfig) -> tuple[list[np.ndarray], float]:
    """Up to ``cfg.qc_mosaic_tiles`` tissue tiles at ~``cfg.qc_mosaic_mpp``, spread over the tissue."""
    from medseg.pathology.tiling import make_grid, plan_slide_tiles, read_tile

    mpp = max(cfg.qc_mosaic_mpp, slide.mpp)
    grid = make_grid(slide, target_mpp=mpp, tile=cfg.qc_mosaic_tile, overlap=0)
    tiles = plan_slide_tiles(slide, grid, tissue, min_tissue=0.5) or plan_slide_tiles(
        slide, grid, tissue, min_tissue=0.05
    )
    if not tiles:
        return [], mpp
    picks = sorted(
        set(np.linspace(0, len(tiles) - 1, min(cfg.qc_mosaic_tiles, len(tiles))).round().astype(int))
    )
    return [read_tile(slide, tiles[i], cfg.qc_mosaic_tile) for i in picks], mpp


def assess_slide_stain(slide, tissue, cfg: ScoreConfig):
    """Stain QC of an open slide: (verdict, where it was taken) - see :mod:`medseg.pathology.stain_qc`.

    The tissue thumbnail decides H&E (eosin), fluorescence and empty slides. A thumbnail without
    DAB and without much eosin gets a second look at tissue tiles read at ~1 um/px: thin C4d
    capillary walls blend with hematoxylin at 16 um/px and stop looking brown.
    """
    from dataclasses import replace

    from medseg.pathology.stain_qc import assess_stain, tile_mosaic

    qc = assess_stain(tissue.thumbnail, cfg.stain_qc, mpp=slide.mpp * tissue.downsample)
    look = f"thumbnail at {slide.mpp * tissue.downsample:.1f} um/px"
    weak_eosin = (qc.eosin_fraction or 0.0) < cfg.stain_qc.he_min_eosin_fraction
    if qc.kind != "brightfield_no_dab" or not weak_eosin or cfg.qc_mosaic_tiles < 1:
        return qc, look
    tiles, mpp = _mosaic_tiles(slide, tissue, cfg)
    if not tiles:
        return qc, look
    second = assess_stain(tile_mosaic(tiles), cfg.stain_qc, mpp=mpp, min_dab_fraction=cfg.qc_mosaic_min_dab)
    look = f"{len(tiles)} tissue tiles at {mpp:.1f} um/px (the thumbnail showed no DAB)"
    other = [r for r in qc.reasons if not r.startswith("no DAB")]  # ink / blur failures still count
    flags = list(dict.fromkeys(qc.flags + second.flags))
    reasons = second.reasons + [r for r in other if r not in second.reasons]
    return replace(second, reasons=reasons, flags=flags, passed=second.passed and not other), look


def with_dab_pattern(qc, slide, tissue, cfg: ScoreConfig):
    """The stain verdict with the DAB pattern check (:mod:`medseg.pathology.dab_pattern`) added: a
    DAB IHC whose brown objects are solid nuclei, not capillary walls, is not a C4d stain."""
    from dataclasses import replace

    from medseg.pathology.dab_pattern import assess_slide_pattern

    if qc.kind != "brightfield_dab" or cfg.dab_pattern.tiles < 1:
        return qc
    pattern = assess_slide_pattern(slide, tissue, cfg.dab_pattern)
    if pattern.passed:  # a refusal is said once, by the stain QC line that carries it
        log.info("%s", pattern.summary())
        return replace(qc, dab_pattern=pattern.to_dict())
    return replace(qc, dab_pattern=pattern.to_dict(), passed=False, reasons=[*qc.reasons, pattern.reason])


def _qc_fields(qc, look: str, cfg: ScoreConfig) -> dict[str, Any]:
    pattern = qc.dab_pattern or {}
    return {
        "dab_pattern": pattern.get("pattern"),
        "dab_pattern_nuclear_fraction": pattern.get("nuclear_fraction"),
        "stain_qc": {**qc.to_dict(), "look": look},
        "stain_qc_status": "passed" if qc.passed else "failed",
        "stain_qc_kind": qc.kind,
        "stain_qc_reasons": "; ".join(qc.reasons),
        "stain_qc_flags": "; ".join(qc.flags),
        "stain_qc_skipped": bool(cfg.skip_stain_qc),
        "stain_qc_summary": qc.summary(),
    }


def _slide_fields(slide, cfg: ScoreConfig, t0: float) -> dict[str, Any]:
    """What every slide summary says about the slide and the run, scored or not."""
    return {
        "wall_s": round(time.time() - t0, 3),
        "slide_mpp": slide.mpp,
        "slide_mpp_source": slide.mpp_source,
        "target_mpp": cfg.target_mpp,
        "slide_size": [slide.width, slide.height],
        "vendor": slide.vendor,
        "reader": slide.backend,
        "reader_note": getattr(slide.handle, "note", None),
    }


def _overview(slide, tissue) -> tuple[np.ndarray, float]:
    """The picture a person looks at (about 1024 px on the long side, at least 8x the tissue map's
    resolution), for scored and not-scored slides alike."""
    from medseg.pathology.slide import read_downsampled

    return read_downsampled(slide, max(tissue.downsample / 8, max(slide.width, slide.height) / 1024))


def _not_scored(slide, name: str, path, t0: float, qc, look: str, cfg: ScoreConfig, tissue=None, thumb=None):
    """The result of a slide that stain QC kept from scoring: reasons, QC numbers, no category."""
    reason = "stain QC failed: " + "; ".join(qc.reasons or ["not a brightfield DAB IHC"])
    summary = {
        "slide": name,
        "path": str(path),
        "status": QC_FAILED,
        "reason": reason,
        "c4d_pos": None,
        "c4d_neg": None,
        "ptc_total": None,
        "percent_positive": None,
        "c4d_positive_ihc": None,
        "banff_category": None,
        "min_ptcs": cfg.min_ptcs,
        "tissue_area_mm2": round(tissue.area_mm2(slide.mpp), 4) if tissue is not None else 0.0,
        "feasible_area_mm2": None,
        **_slide_fields(slide, cfg, t0),
        "margins": {},
        **_qc_fields(qc, look, cfg),
    }
    if tissue is not None:
        image, ds = _overview(slide, tissue)
        return SlideResult(summary, thumbnail=image, tissue_mask=tissue.mask, thumb_downsample=ds)
    image, ds = thumb
    return SlideResult(summary, thumbnail=image, thumb_downsample=ds)


@dataclass
class SlidePlan:
    """A slide past stain QC with its tile plan: what tile reading and :func:`finish_slide` need.

    It holds no open handle and pickles, so a Ray slide task can plan and read a slide on one
    machine while the driver finishes it on another (:mod:`medseg.scale`).
    """

    name: str
    path: str
    grid: Any  # medseg.pathology.tiling.TileGrid
    tiles: list  # medseg.pathology.tiling.Tile, in reading order (the tile index is the position)
    qc: Any
    look: str
    tissue_area_mm2: float
    tissue_mask: np.ndarray
    slide_info: dict[str, Any]  # _slide_fields at planning time (wall_s is redone when finished)
    overview: np.ndarray
    overview_ds: float
    t0: float


@dataclass
class TileTally:
    """What became of a slide's tiles: counters, and merged detections keyed by tile index.

    Detections may arrive in any order (batches fused across slides on Ray); :func:`finish_slide`
    reads them in tile order, so the result does not depend on the order or the batching.
    """

    n_tiles: int
    path: str
    n_read: int = 0
    n_failed: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    feasible: list[int] = field(default_factory=list)  # tile indices, in reading order
    detections: dict[int, tuple] = field(default_factory=dict)

    def failed(self, exc: Exception) -> None:
        if isinstance(exc, HookError):  # the user's hook is broken: said as such, not "unreadable tiles"
            raise InputError(exc.message, path=self.path)
        self.n_failed += 1
        self.errors.append(getattr(exc, "message", None) or str(exc))
        if isinstance(exc, InputError) and self.n_failed > max(3, self.n_tiles // 10):
            raise InputError(
                f"too many unreadable tiles ({self.n_failed}): {self.errors[-1]}", path=self.path
            )

    def rejected(self, reason: str) -> None:
        self.n_read += 1
        key = reason.split(" ")[0]
        self.reasons[key] = self.reasons.get(key, 0) + 1

    def accepted(self, index: int) -> None:
        self.n_read += 1
        self.feasible.append(index)

    def detected(self, plan: SlidePlan, index: int, detections) -> None:
        """Record a tile's raw detections (tile pixels), kept by core ownership (level-0 pixels)."""
        self.detections[index] = merge_tile_detections(plan.grid, plan.tiles[index], *detections)

    @property
    def n_ptcs(self) -> int:
        return sum(len(d[0]) for d in self.detections.values())


def open_scoring_slide(path: str | Path, cfg: ScoreConfig):
    """The slide opened with the configured reader (a context manager)."""
    from medseg.pathology.slide import open_slide

    backend = {} if cfg.reader == "auto" else {"reader": cfg.reader}
    return open_slide(path, slide_mpp=cfg.slide_mpp, **backend)


def plan_slide(slide, path: str | Path, cfg: ScoreConfig, name: str) -> SlidePlan | SlideResult:
    """Phase 1 on an open slide: tissue, stain QC, tile plan; a slide QC keeps from scoring is
    returned finished (a :class:`SlideResult` with status ``qc_failed``)."""
    from medseg.pathology.slide import TISSUE_DOWNSAMPLE, check_scale, detect_tissue, read_downsampled
    from medseg.pathology.stain_qc import assess_stain
    from medseg.pathology.tiling import make_grid, plan_slide_tiles

    t0 = time.time()
    check_scale(slide, cfg.target_mpp, coarse=False)  # before any read: a bogus fine scale = huge tiles
    grid = make_grid(slide, target_mpp=cfg.target_mpp, tile=cfg.tile, overlap=cfg.overlap)
    try:
        tissue = detect_tissue(slide)
    except InputError as exc:
        if "no tissue" not in exc.message:
            raise
        # all background: a QC outcome with the reason in words, whatever --skip-stain-qc says
        thumb = read_downsampled(slide, max(TISSUE_DOWNSAMPLE, max(slide.width, slide.height) / 2048))
        qc = assess_stain(thumb[0], cfg.stain_qc, mpp=slide.mpp * thumb[1])
        if not qc.reasons:
            qc.reasons.append("no tissue found on the slide")
        qc.passed = False
        return _not_scored(slide, name, path, t0, qc, "thumbnail", cfg, thumb=thumb)
    qc, look = assess_slide_stain(slide, tissue, cfg)
    qc = with_dab_pattern(qc, slide, tissue, cfg)
    log.info("%s: %s (%s)", name, qc.summary(), look)
    if not qc.passed and not cfg.skip_stain_qc:
        return _not_scored(slide, name, path, t0, qc, look, cfg, tissue=tissue)
    check_scale(slide, cfg.target_mpp, fine=False)  # too coarse to score (said after "this is H&E")
    tiles = plan_slide_tiles(slide, grid, tissue, min_tissue=cfg.min_tissue)
    if not tiles:
        raise InputError("no tissue tile at the target resolution", path=path)
    overview, overview_ds = _overview(slide, tissue)
    return SlidePlan(
        name, str(path), grid, tiles, qc, look, tissue.area_mm2(slide.mpp), tissue.mask,
        _slide_fields(slide, cfg, t0), overview, overview_ds, t0,
    )  # fmt: skip


def read_slide_tiles(slide, plan: SlidePlan, cfg: ScoreConfig, feasible, tally: TileTally):
    """Phase 2: yield ``(index, tile, image or None)`` for every planned tile, in order, read ahead
    by ``cfg.workers`` threads (at most ``cfg.read_ahead + 1`` groups of ``cfg.batch_size`` tiles in
    memory). Unreadable and infeasible tiles are counted in ``tally`` and yield ``None``. Close the
    generator (``contextlib.closing``) before closing the slide."""
    from medseg.pathology.tiling import read_ahead, read_tile

    def read_and_check(t):  # runs in the reader threads, overlapping inference
        img = read_tile(slide, t, cfg.tile)
        return img, feasible(img)

    stream = read_ahead(
        plan.tiles, read_and_check, batch_size=cfg.batch_size, workers=cfg.workers, depth=cfg.read_ahead
    )
    with contextlib.closing(stream):  # reader threads stop before the slide closes
        for i, (t, item) in enumerate(stream):
            if isinstance(item, Exception):
                tally.failed(item)
                yield i, t, None
                continue
            img, (ok, reason) = item
            if not ok:
                tally.rejected(reason)
                yield i, t, None
                continue
            tally.accepted(i)
            yield i, t, img


def finish_slide(
    plan: SlidePlan,
    tally: TileTally,
    cfg: ScoreConfig,
    *,
    margins: dict,
    weights: str,
    **detector_fields: Any,
) -> SlideResult:
    """Phase 3 (after inference): merge the slide's detections (NMS over the whole slide), Banff
    category, summary. Detections are taken in tile order whatever order they arrived in."""
    if tally.n_read == 0:
        msg = tally.errors[0] if tally.errors else "unknown reason"
        raise InputError(f"no tile could be read: {msg}", path=plan.path)
    dets = [tally.detections[i] for i in sorted(tally.detections)]
    boxes = np.concatenate([d[0] for d in dets]) if dets else np.zeros((0, 4))
    labels = np.concatenate([d[1] for d in dets]).astype(int) if dets else np.zeros(0, int)
    scores = np.concatenate([d[2] for d in dets]) if dets else np.zeros(0)
    boxes, labels, scores = class_nms(boxes, labels, scores, cfg.nms_iou)
    pos, neg = int((labels == LABELS[POSITIVE]).sum()), int((labels == LABELS[NEGATIVE]).sum())
    category, pct = banff_category(pos, neg, cfg.min_ptcs)
    assessable = category.startswith("C4d")
    n_text = f"{pos + neg} PTC{'' if pos + neg == 1 else 's'}"
    notes = [] if assessable else [f"{n_text} assessed, a category needs {cfg.min_ptcs} (--min-ptcs)"]
    notes += [plan.slide_info["reader_note"]] if plan.slide_info.get("reader_note") else []
    qc, grid = plan.qc, plan.grid
    if not qc.passed:
        notes.append("stain QC failed, scored anyway (--skip-stain-qc): " + "; ".join(qc.reasons))
    feasible_tissue = 0.0  # tile-cores' worth of tissue in feasible tiles
    for i in tally.feasible:
        feasible_tissue += plan.tiles[i].tissue
    feasible_mm2 = min(feasible_tissue * (grid.stride * cfg.target_mpp * 1e-3) ** 2, plan.tissue_area_mm2)
    summary = {
        "slide": plan.name,
        "path": plan.path,
        "status": OK,
        "reason": "; ".join(notes),
        "c4d_pos": pos,
        "c4d_neg": neg,
        "ptc_total": pos + neg,
        "percent_positive": None if math.isnan(pct) else round(pct, 2),
        "c4d_positive_ihc": pos > 0 if assessable else None,
        "banff_category": category,
        "min_ptcs": cfg.min_ptcs,
        "tissue_area_mm2": round(plan.tissue_area_mm2, 4),
        "feasible_area_mm2": round(feasible_mm2, 4),
        "tiles_tissue": len(plan.tiles),
        "tiles_read": tally.n_read,
        "tiles_feasible": len(tally.feasible),
        "tiles_failed": tally.n_failed,
        "tiles_rejected": tally.reasons,
        **plan.slide_info,
        "wall_s": round(time.time() - plan.t0, 3),
        "tile": cfg.tile,
        "overlap": cfg.overlap,
        "min_score": cfg.min_score,
        "margins": dict(margins),
        "weights": weights,
        **detector_fields,  # e.g. the cascade's tile counts (CascadeDetector.slide_fields)
        **_qc_fields(qc, plan.look, cfg),
        "grid": {
            "tile": grid.tile,
            "overlap": grid.overlap,
            "n_rows": grid.n_rows,
            "n_cols": grid.n_cols,
            "analysed_tiles": [[plan.tiles[i].row, plan.tiles[i].col] for i in tally.feasible],
        },
    }
    return SlideResult(summary, boxes, labels, scores, plan.overview, plan.tissue_mask, plan.overview_ds)


def detector_meta(detector) -> dict[str, Any]:
    """What a slide summary records about the detector (the Ray driver gets it from an actor)."""
    return {
        "margins": dict(getattr(detector.config, "margins", {})),
        "weights": getattr(detector, "source", ""),
        **(detector.slide_fields() if hasattr(detector, "slide_fields") else {}),  # once per slide
    }


def score_slide(
    path: str | Path,
    detector,
    config: ScoreConfig | None = None,
    *,
    feasible=None,
    progress: bool = False,
    name: str | None = None,
) -> SlideResult:
    """Score one slide with a loaded :class:`~medseg.pathology.detector.Detector` (or anything
    with the same ``predict`` and ``config.margins``). ``feasible``: a loaded feasibility hook
    (default: the one ``config.feasibility`` names).

    Stain QC runs first (:func:`assess_slide_stain`): a slide that is not brightfield DAB IHC, or
    shows no tissue, comes back with status ``qc_failed``, its reasons and no category, without
    running the detector (``config.skip_stain_qc``: QC is recorded but does not stop scoring).
    The phases (:func:`plan_slide`, :func:`read_slide_tiles`, :func:`finish_slide`) are the ones
    the Ray runner (:mod:`medseg.scale`) composes, so both give the same outputs by construction.
    """
    from medseg.engine.progress import progress_bar
    from medseg.pathology.detector import check_detector_resolution
    from medseg.pathology.feasibility import load_hook

    cfg = config or ScoreConfig()
    check_detector_resolution(cfg.target_mpp, detector)
    feasible = feasible or load_hook(cfg.feasibility)
    name = name or Path(path).stem
    with open_scoring_slide(path, cfg) as slide:
        plan = plan_slide(slide, path, cfg, name)
        if isinstance(plan, SlideResult):
            return plan
        tally = TileTally(len(plan.tiles), str(path))
        pending: list[tuple[int, np.ndarray]] = []

        def flush() -> None:
            batch = np.stack([img for _i, img in pending])
            for (i, _img), dets in zip(pending, detector.predict(batch, min_score=cfg.min_score)):
                tally.detected(plan, i, dets)
            pending.clear()

        stream = read_slide_tiles(slide, plan, cfg, feasible, tally)
        with contextlib.closing(stream):
            bar = progress_bar(stream, total=len(plan.tiles), desc=name, enabled=progress, unit="tile")
            for i, _t, img in bar:
                if img is None:
                    continue
                pending.append((i, img))
                if len(pending) >= cfg.batch_size:
                    flush()
                    bar.set_postfix(PTCs=tally.n_ptcs)
            if pending:
                flush()
    return finish_slide(plan, tally, cfg, **detector_meta(detector))


def slide_text(row: dict[str, Any]) -> str:
    """One slide's result in words, e.g. ``C4d2 (focal, 10-50 %): 37.5 % of PTCs C4d+ (12 C4d+ and 20 C4d- PTCs)``."""
    pct = row.get("percent_positive")
    counts = counts_text({POSITIVE: row.get("c4d_pos") or 0, NEGATIVE: row.get("c4d_neg") or 0})
    return f"{category_text(str(row.get('banff_category')), None if pct in (None, '') else float(pct))} ({counts})"
