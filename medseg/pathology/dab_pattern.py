"""Is the DAB on this slide shaped like C4d (capillary walls) or like a nuclear marker (Ki67)?

Why: stain QC (:mod:`medseg.pathology.stain_qc`) answers "is this a DAB IHC", and no colour test
can tell C4d from Ki67: both are DAB. The detector then counted the brown nuclei of a real Ki67
slide as C4d+ capillaries (27 "C4d+ PTCs" on an 8-field mosaic; a whole slide would have been
Banff C4d3). What differs is where the antibody binds, and so the *shape* of the brown objects:

* C4d binds the capillary wall: thin (1-2.5 um) linear or circumferential staining around a
  pale lumen - rings, crescents, short lines;
* Ki67 (and most nuclear or cytoplasmic DAB markers) fills whole nuclei or cells: solid, round
  to oval blobs 4-15 um across, thick everywhere, lying where hematoxylin is.

So on a sample of tissue tiles read at about the scoring resolution (0.5 um/px) the DAB objects
are found - pixels that pass the stain QC's brown test (colour deconvolution + "is it brown"),
grown through the DAB concentration so that a positive nucleus mixed with hematoxylin is found
whole - and each object of at least ``min_area_um2`` not cut by the tile edge is called

* ``ring``: it encloses a hole that is mostly pale, or (a larger hole) free of hematoxylin (red
  cells, plasma): a capillary wall around its lumen;
* ``linear``: thin (largest inscribed disc below ``solid_min_um``), at least ``linear_min_um``
  long and ``linear_min_elongation`` times longer than thick, not lying on hematoxylin and not the
  DAB rim of a nucleus: a wall seen edge-on, a crescent;
* ``nuclear``: thick, solid (the filled object fills ``solid_min_solidity`` of its convex hull),
  roundish (minor / major axis >= ``round_min_ratio``) and of nucleus size (equivalent diameter
  ``nucleus_min_um``-``nucleus_max_um``), with no lumen;
* ``other``: anything else (clumps of touching nuclei, sheets of stained cells, specks, short
  bits), not judged.

The verdict is "nuclear" (the slide is refused) when at least ``nuclear_fail_fraction`` of the
judged objects (ring + linear + nuclear) are nuclear; with fewer than ``min_objects`` judged
objects the slide is "not judged" and passes (a C4d0 biopsy has little DAB; the detector and the
pathologist decide). Everything is measured in micrometres on shapes, not on the renderer's
colours: it holds for any scanner whose DAB passes the stain QC. Measured values (the sample and
synthetic C4d slides, a Ki67-like slide, skimage's real IHC image) are in docs/pathology.md.

What it does not catch: a cytoplasmic or membranous marker (skimage's IHC image: one DAB sheet
per gland, nothing to judge), a nuclear marker whose positive cells all touch (clumps are "other"),
spindle-shaped positive nuclei (thin: they may look linear). It refuses only what is clearly
nuclear; the stain name on the slide label stays the first check.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

KINDS = ("ring", "linear", "nuclear", "other")


@dataclass(frozen=True)
class PatternConfig:
    """Thresholds of the DAB pattern check (um: micrometres at the analysed resolution).

    ``mpp`` = 0.5: resolution of the analysis (the scoring one: a C4d wall is 2-6 px thick, a
    nucleus 8-30 px across); slides scanned coarser are read at their own mpp, and not judged
    above 1 um/px. ``tiles`` = 16 tiles of ``tile`` = 512 px (256 um) spread over the tissue
    (edge tiles too when fewer are mostly tissue): a few hundred nuclei, and on a C4d+ biopsy
    dozens of capillaries. ``tiles`` = 0 turns the check off.
    ``dab_low`` = 0.15: DAB concentration (OD along the unit DAB vector) through which brown seeds
    are grown; hematoxylin alone stays below 0.1 (real IHC stroma nuclei: 99th percentile 0.10).
    ``min_area_um2`` = 4: smaller specks (granules, JPEG fringes) are not judged.
    ``solid_min_um`` = 3.0: inscribed diameter from which an object is thick. A stained capillary
    wall is 1-2.5 um (synthetic C4d walls 1.5-2.25 um, 2.3-3.6 um with JPEG blur - rings are
    decided by their lumen first); the smallest nuclei (lymphocytes) are 5 um across.
    ``solid_min_solidity`` = 0.8, ``round_min_ratio`` = 0.3: a nucleus is convex and at most ~3x
    longer than wide. ``nucleus_min_um`` / ``nucleus_max_um`` = 4 / 16: its equivalent diameter.
    ``lumen_max_od`` = 0.25: summed OD (R+G+B) of a pale lumen pixel; hematoxylin nuclei are above
    0.3 (real IHC: 0.34 at the 10th percentile). ``lumen_min_um2`` = 1: smallest pale hole; a hole
    of 4x that counts as lumen also when its hematoxylin is below ``lumen_max_hematoxylin`` = 0.12
    (red cells, plasma; real nuclei: >= 0.2). Half of the hole must qualify, so an endothelial
    nucleus inside a lumen does not turn the ring into a blob. ``ring_max_wall_um`` = 6: the
    median wall of a ring (C4d: 1.5-2.7 um on the synthetic slides, 2-4.5 um on the C4d-like fields
    with blur); a ring of positive nuclei around a gland lumen is thicker (4.5-12 um) and is
    ``other``.
    ``nucleus_min_hematoxylin`` = 0.2: a thin object lying on this much hematoxylin is a thin
    positive nucleus, not a wall. ``hematoxylin_min`` = 0.1: nuclear objects at or above it are
    reported "over hematoxylin" (information: real DAB alone deconvolves to ~0.08 hematoxylin, so
    it is not used to decide).
    ``linear_min_um`` = 8, ``linear_min_elongation`` = 3: a wall segment is long and thin.
    ``sheet_min_um2`` = 400: objects this large (a gland, a vessel, a glomerulus) are reported as
    the share of DAB area in sheets.
    ``min_objects`` = 15: fewer judged objects say too little. ``nuclear_fail_fraction`` = 0.6:
    measured 0 % on the C4d sample slides, 11-28 % on C4d-like fields with red cells, endothelial
    nuclei and slit lumens, 100 % on every Ki67-like image: 0.6 leaves room on both sides.
    """

    mpp: float = 0.5
    tiles: int = 16
    tile: int = 512
    dab_low: float = 0.15
    min_area_um2: float = 4.0
    solid_min_um: float = 3.0
    solid_min_solidity: float = 0.8
    round_min_ratio: float = 0.3
    nucleus_min_um: float = 4.0
    nucleus_max_um: float = 16.0
    lumen_max_od: float = 0.25
    lumen_min_um2: float = 1.0
    lumen_max_hematoxylin: float = 0.12
    ring_max_wall_um: float = 6.0
    nucleus_min_hematoxylin: float = 0.2
    hematoxylin_min: float = 0.1
    sheet_min_um2: float = 400.0
    linear_min_elongation: float = 3.0
    linear_min_um: float = 8.0
    min_objects: int = 15
    nuclear_fail_fraction: float = 0.6

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class DabPattern:
    """What the DAB objects of a sample of tiles look like, and the verdict."""

    pattern: str  # "capillary", "nuclear", "mixed" or "not judged"
    passed: bool
    reason: str
    counts: dict[str, int] = field(default_factory=dict)  # objects per kind (KINDS)
    nuclear_fraction: float | None = None  # of judged objects (ring + linear + nuclear)
    capillary_fraction: float | None = None  # ring + linear, of judged objects
    hematoxylin_overlap: float | None = None  # share of nuclear objects lying on hematoxylin
    sheet_fraction: float | None = None  # share of the DAB area in objects >= sheet_min_um2
    mpp: float | None = None
    tiles: int = 0

    def to_dict(self) -> dict:
        d = asdict(self)
        for k, v in d.items():
            if isinstance(v, float):
                d[k] = round(v, 4)
        return d

    def summary(self) -> str:
        return f"DAB pattern {self.pattern}: {self.reason}"


def _pct(x: float) -> str:
    return f"{100 * x:.0f} %"


def stain_maps(rgb: np.ndarray, qc_config=None) -> tuple[np.ndarray, ...]:
    """(brown DAB mask, DAB and hematoxylin concentrations, summed OD) per pixel.

    Relative to the image's own white (as the stain QC); the brown mask is the stain QC's test
    (deconvolution + brown gate) per pixel, so what is "DAB" here is what passed the stain QC.
    """
    from medseg.pathology.stain_qc import QCConfig, _check_rgb, _Colours, _histogram, _pack

    cfg = qc_config or QCConfig()
    rgb = _check_rgb(rgb)
    packed, code = _pack(rgb)
    hist = _histogram(packed, code, cfg)
    col = _Colours(hist)
    od = col.od
    brown = (
        (col.conc[:, 2] > cfg.dab_od_min)
        & col.brown_order
        & (col.hue <= cfg.dab_hue_max)
        & (col.sat >= cfg.dab_sat_min)
        & (od[:, 0] >= cfg.dab_red_od_min * od[:, 2])
    )
    conc = col.conc.astype(np.float32)
    return (
        hist.table(brown)[code],
        hist.table(conc[:, 2])[code],
        hist.table(conc[:, 0])[code],
        hist.table(col.od_sum.astype(np.float32))[code],
    )


@dataclass
class DabObject:
    """One connected DAB object and the shape measures behind its kind (um, um^2)."""

    kind: str
    box: tuple[int, int, int, int]  # y0, x0, y1, x1 in the image
    mask: np.ndarray  # within box
    area: float
    thickness: float  # diameter of the largest inscribed disc (of the filled object)
    diameter: float  # equivalent diameter of the filled object
    solidity: float
    roundness: float  # minor / major axis
    lumen: bool = False  # encloses a pale hole
    hematoxylin: float = 0.0  # mean hematoxylin concentration inside (filled object)
    rim_on_nucleus: bool = False  # thin object whose concave side is hematoxylin: DAB rim of a nucleus


def classify_objects(
    rgb: np.ndarray | None, mpp: float, config: PatternConfig | None = None, *, maps=None
) -> dict[str, float]:
    """Count the DAB objects of one RGB image (about ``config.mpp`` um/px) per kind, plus
    ``nuclear_on_hematoxylin`` (nuclear objects whose mean hematoxylin reaches
    ``config.hematoxylin_min``: a DAB-positive nucleus is counterstained too), and the DAB area
    (um^2) in all objects (``dab_um2``, edge-cut ones included) and in objects larger than
    ``config.sheet_min_um2`` (``sheet_um2``: sheets of stained cells, glands, vessels)."""
    cfg = config or PatternConfig()
    counts: dict[str, float] = dict.fromkeys((*KINDS, "nuclear_on_hematoxylin", "dab_um2", "sheet_um2"), 0)
    for obj in iter_objects(rgb, mpp, cfg, edge=True, maps=maps):
        counts["dab_um2"] += obj.area
        counts["sheet_um2"] += obj.area if obj.area >= cfg.sheet_min_um2 else 0.0
        if obj.kind == "cut":
            continue
        counts[obj.kind] += 1
        counts["nuclear_on_hematoxylin"] += obj.kind == "nuclear" and obj.hematoxylin >= cfg.hematoxylin_min
    return counts


def dab_objects_mask(brown: np.ndarray, dab: np.ndarray, low: float, min_seed: int = 3) -> np.ndarray:
    """DAB objects: pixels with DAB concentration above ``low`` connected to a brown pixel.

    Hysteresis: a positive nucleus mixes DAB with hematoxylin and only its DAB-dominated pixels
    pass the brown test; growing the brown seeds through the DAB concentration gives its whole
    shape (otherwise a nucleus breaks into specks and crescents), while hematoxylin alone (DAB
    concentration ~0) is never reached.
    """
    from scipy import ndimage as ndi

    region = ndi.gaussian_filter(dab, 0.7) > low
    lab, n = ndi.label(region | brown)
    if n == 0:
        return region
    seeds = np.bincount(lab[brown], minlength=n + 1) >= min_seed  # not one stray JPEG pixel
    seeds[0] = False
    return seeds[lab]


def _median_wall(mask: np.ndarray, mpp: float) -> float:
    """Typical wall thickness (um) of an object: twice the median distance to its edge along its
    skeleton (the largest inscribed disc says how thick it is at its thickest point only)."""
    from scipy import ndimage as ndi
    from skimage.morphology import skeletonize

    m = np.pad(mask, 1)
    skeleton = skeletonize(m)
    if not skeleton.any():
        return 0.0
    return max(2 * float(np.median(ndi.distance_transform_edt(m)[skeleton])) - 1, 1.0) * mpp


def iter_objects(
    rgb: np.ndarray | None, mpp: float, config: PatternConfig | None = None, *, edge: bool = False, maps=None
):
    """Yield a :class:`DabObject` for every DAB object of an RGB image (``edge``: also those cut
    by the image edge, of kind ``"cut"``: their shape is unknown). ``maps``: the image's
    :func:`stain_maps` when already computed (then ``rgb`` is not used)."""
    from scipy import ndimage as ndi
    from skimage.measure import regionprops
    from skimage.morphology import convex_hull_image

    cfg = config or PatternConfig()
    brown, dab, hema, od_sum = maps if maps is not None else stain_maps(rgb)
    lab, n = ndi.label(dab_objects_mask(brown, dab, cfg.dab_low))
    if n == 0:
        return
    h, w = lab.shape
    min_px = cfg.min_area_um2 / mpp**2
    for r in regionprops(lab):
        if r.area < min_px:
            continue
        y0, x0, y1, x1 = r.bbox
        img = r.image
        if y0 == 0 or x0 == 0 or y1 == h or x1 == w:
            if edge:
                yield DabObject("cut", (y0, x0, y1, x1), img, float(r.area * mpp**2), 0.0, 0.0, 0.0, 0.0)
            continue
        filled = ndi.binary_fill_holes(img)
        hole = filled & ~img
        sub_od, sub_h = od_sum[y0:y1, x0:x1], hema[y0:y1, x0:x1]
        lumen, hole_um2 = False, float(hole.sum() * mpp**2)
        if hole_um2 >= cfg.lumen_min_um2:
            # most of the hole pale (an empty lumen) or, in a larger hole, free of hematoxylin (red
            # cells, plasma): a ring of wall. An endothelial nucleus in the lumen does not change
            # that; DAB around a hematoxylin nucleus, or specks of a granular nucleus, are no ring.
            clear = sub_od[hole] <= cfg.lumen_max_od
            if hole_um2 >= cfg.lumen_min_um2 * 4:
                clear |= sub_h[hole] < cfg.lumen_max_hematoxylin
            lumen = float(clear.mean()) >= 0.5
        shape = img if lumen else filled
        dist = ndi.distance_transform_edt(np.pad(shape, 1))
        thick = max(2 * float(dist.max()) - 1, 1.0) * mpp
        major = max(r.axis_major_length, 1.0)
        ratio = r.axis_minor_length / major
        diam = math.sqrt(4 * filled.sum() / math.pi) * mpp
        solidity = float(filled.sum() / max(r.area_convex, 1))  # granular nuclei: their specks filled
        rim = False
        if not lumen and thick < cfg.solid_min_um:
            deficit = convex_hull_image(filled) & ~filled
            rim = bool(deficit.sum() >= 4) and float(sub_h[deficit].mean()) >= cfg.nucleus_min_hematoxylin
        if lumen:
            # a capillary wall is thin all round; a ring of positive nuclei around a gland is not
            kind = "ring" if _median_wall(img, mpp) <= cfg.ring_max_wall_um else "other"
        elif thick < cfg.solid_min_um:
            length = major * mpp
            line = length >= cfg.linear_min_um and length >= cfg.linear_min_elongation * thick
            on_nucleus = rim or float(sub_h[img].mean()) >= cfg.nucleus_min_hematoxylin
            kind = "linear" if line and not on_nucleus else "other"
        elif (
            solidity >= cfg.solid_min_solidity
            and ratio >= cfg.round_min_ratio
            and cfg.nucleus_min_um <= diam <= cfg.nucleus_max_um
        ):
            kind = "nuclear"
        else:
            kind = "other"
        yield DabObject(
            kind, (y0, x0, y1, x1), img, float(r.area * mpp**2), thick, diam, solidity, float(ratio),
            lumen, float(sub_h[filled].mean()), rim,
        )  # fmt: skip


def judge(counts: dict[str, float], config: PatternConfig | None = None, *, mpp=None, tiles=0) -> DabPattern:
    """The verdict from the object counts of :func:`classify_objects` (see the module docstring)."""
    cfg = config or PatternConfig()
    n = {k: int(counts.get(k, 0)) for k in KINDS}
    cap, nuc = n["ring"] + n["linear"], n["nuclear"]
    judged = cap + nuc
    dab = float(counts.get("dab_um2", 0.0))
    sheet = float(counts.get("sheet_um2", 0.0)) / dab if dab > 0 else None
    record = dict(counts=n, mpp=mpp, tiles=tiles, sheet_fraction=sheet)
    if judged < cfg.min_objects:
        in_sheets = f"; {_pct(sheet)} of the DAB area is in large sheets" if sheet else ""
        reason = (
            f"{judged} DAB objects with a recognisable shape ({sum(n.values())} in all{in_sheets}), "
            f"the check needs {cfg.min_objects}"
        )
        return DabPattern("not judged", True, reason, **record)
    nf, cf = nuc / judged, cap / judged
    on_h = counts.get("nuclear_on_hematoxylin", 0) / nuc if nuc else None
    over = f", {_pct(on_h)} of them over hematoxylin" if on_h is not None else ""
    what = (
        f"{_pct(nf)} of DAB objects are solid round nucleus-sized blobs{over}; {_pct(cf)} are ring-like "
        f"or linear like capillary walls ({nuc} nuclear, {n['ring']} ring, {n['linear']} linear of "
        f"{judged} judged; {n['other']} other objects not judged)"
    )
    record.update(nuclear_fraction=nf, capillary_fraction=cf, hematoxylin_overlap=on_h)
    if nf >= cfg.nuclear_fail_fraction:
        return DabPattern("nuclear", False, f"DAB pattern is nuclear, not capillary: {what}", **record)
    return DabPattern("capillary" if cf >= 0.5 else "mixed", True, what, **record)


def assess_pattern(images: list[np.ndarray], mpp: float, config: PatternConfig | None = None) -> DabPattern:
    """Classify the DAB objects of tiles (RGB, ``mpp`` um/px) and judge the pattern.

    The stains are measured once on a mosaic of all tiles, so every tile is white-balanced on the
    same glass (a tile full of tumour has none; its lightest stroma would be its "white"); objects
    are then found tile by tile (the mosaic's seams are no objects).
    """
    from medseg.pathology.stain_qc import tile_mosaic

    cfg = config or PatternConfig()
    counts: dict[str, float] = {}
    if not images:
        return judge(counts, cfg, mpp=mpp, tiles=0)
    cols = math.ceil(math.sqrt(len(images)))
    maps = stain_maps(tile_mosaic(images, columns=cols))
    th, tw = max(t.shape[0] for t in images), max(t.shape[1] for t in images)
    for i, img in enumerate(images):
        r, c = divmod(i, cols)
        cell = (slice(r * th, r * th + img.shape[0]), slice(c * tw, c * tw + img.shape[1]))
        for k, v in classify_objects(None, mpp, cfg, maps=tuple(m[cell] for m in maps)).items():
            counts[k] = counts.get(k, 0) + v
    return judge(counts, cfg, mpp=mpp, tiles=len(images))


def assess_slide_pattern(slide, tissue, config: PatternConfig | None = None) -> DabPattern:
    """The DAB pattern of an open slide, on ``config.tiles`` tissue tiles spread over the section.

    Tiles are read at ``config.mpp`` (or the slide's own mpp when it is coarser); a slide scanned
    coarser than 1 um/px is not judged (a capillary wall is then under one pixel).
    """
    from medseg.pathology.tiling import make_grid, plan_slide_tiles, read_tile

    cfg = config or PatternConfig()
    mpp = max(cfg.mpp, slide.mpp)
    if mpp > 1.0:
        return DabPattern(
            "not judged", True, f"slide scanned at {slide.mpp:.2f} um/px: too coarse to see capillary walls",
            mpp=mpp,
        )  # fmt: skip
    grid = make_grid(slide, target_mpp=mpp, tile=cfg.tile, overlap=0)
    tiles = plan_slide_tiles(slide, grid, tissue, min_tissue=0.5)
    if len(tiles) < cfg.tiles:  # a thin core or a small section: its edge tiles too
        tiles = plan_slide_tiles(slide, grid, tissue, min_tissue=0.05)
    if not tiles:
        return DabPattern("not judged", True, "no tissue tile to look at", mpp=mpp)
    picks = sorted(set(np.linspace(0, len(tiles) - 1, min(cfg.tiles, len(tiles))).round().astype(int)))
    images = [read_tile(slide, tiles[i], cfg.tile) for i in picks]
    return assess_pattern(images, mpp, cfg)
