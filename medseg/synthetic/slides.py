"""Seeded synthetic C4d IHC whole-slide images (for tests, demos and benchmarks; never clinical).

A slide is described analytically (tissue blobs + a list of objects: PTC rings stained with DAB
(C4d+) or unstained (C4d-), tubules, glomeruli with stained capillary loops, incomplete DAB arcs),
so any region can be rendered at any downsample without rendering the rest. That is what lets
:func:`write_slide` stream a 100 000 x 100 000 px pyramidal tiled TIFF (JPEG tiles, mpp in the
resolution tags, which OpenSlide reads as ``openslide.mpp-x``) tile by tile in bounded memory.

Ground truth: :meth:`SyntheticSlide.ptc_features` (GeoJSON polygons in level-0 pixels: each PTC's
outline, which ``slide-prepare`` keeps for Mask R-CNN training; QuPath classification
``C4d+``/``C4d-``) and :meth:`SyntheticSlide.render_labels` (instance label mask of any region).
Glomerular capillary loops and incomplete arcs are brown but are *not* PTCs: by the scoring rule
they must not be counted. :meth:`SyntheticSlide.without_ptcs` empties a region of PTCs (tissue
the cascade gate may skip).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from medseg.pathology.labels import COLORS, NEGATIVE, POSITIVE, counts_text

log = logging.getLogger("medseg.pathology")

# object kinds of the generator (not detector label ids: those are medseg.pathology.labels.LABELS)
PTC_POS, PTC_NEG, TUBULE, GLOMERULUS, ARC = 0, 1, 2, 3, 4
CLASS_NAMES = {PTC_POS: POSITIVE, PTC_NEG: NEGATIVE}

_BG = np.array([243, 241, 239], np.float32)
_STROMA = np.array([224, 208, 226], np.float32)
_NUCLEUS = np.array([78, 66, 138], np.float32)
_DAB = np.array([128, 74, 30], np.float32)
_LUMEN = np.array([246, 238, 242], np.float32)
_PTC_NEG_WALL = np.array([150, 128, 190], np.float32)
_EPITHELIUM = np.array([205, 176, 212], np.float32)
_TUFT = np.array([196, 160, 204], np.float32)
_BUCKET = 512
_NUC_CELL = 128


@dataclass
class SlideSpec:
    """What to generate. Sizes are level-0 pixels at ``mpp`` microns per pixel."""

    width: int = 4096
    height: int = 3072
    mpp: float = 0.5
    seed: int = 0
    positive_fraction: float = 0.3  # fraction of PTCs that are C4d+ (sets the Banff category)
    tissue_fraction: float = 0.6  # tissue blobs cover about this part of the tissue box
    tissue_box: tuple[int, int, int, int] | None = None  # x0, y0, x1, y1; default: whole slide minus a border
    ptc_spacing: int = 110  # grid spacing of candidate PTC sites (min distance ~ spacing - 2 * jitter)
    ptc_density: float = 0.55  # probability that a candidate site holds a PTC
    arc_fraction: float = 0.05  # incomplete DAB arcs (distractors), relative to PTCs
    glomeruli_per_mm2: float = 2.0
    tile: int = 256  # TIFF tile size
    jpeg_quality: int = 85


class SyntheticSlide:
    """An analytically described slide that renders any region at any downsample."""

    def __init__(self, spec: SlideSpec) -> None:
        self.spec = spec
        rng = np.random.default_rng(spec.seed)
        border = max(64, min(spec.width, spec.height) // 20)
        self.tissue_box = spec.tissue_box or (border, border, spec.width - border, spec.height - border)
        self.blobs = self._make_blobs(rng)
        self.set_objects(self._make_objects(rng))
        noise_rng = np.random.default_rng(spec.seed + 7919)
        self._noise = noise_rng.normal(0, 3.0, (spec.tile * 2, spec.tile * 2, 1)).astype(np.float32)

    def set_objects(self, objects: np.ndarray) -> SyntheticSlide:
        """Replace the objects (rows kind, cx, cy, rx, ry, theta, wall, flag), e.g. to place a PTC on purpose."""
        self.objects = np.asarray(objects, np.float64).reshape(-1, 8)
        self._buckets: dict[tuple[int, int], list[int]] = {}
        for i, (cx, cy, rx, ry) in enumerate(self.objects[:, 1:5]):
            r = max(rx, ry) + 2
            for bx in range(int((cx - r) // _BUCKET), int((cx + r) // _BUCKET) + 1):
                for by in range(int((cy - r) // _BUCKET), int((cy + r) // _BUCKET) + 1):
                    self._buckets.setdefault((bx, by), []).append(i)
        return self

    def without_ptcs(
        self, x0: float, y0: float, x1: float, y1: float, *, arcs_kept: float = 0.0
    ) -> SyntheticSlide:
        """Remove the PTCs (and incomplete arcs, which sit at capillary sites too) centred in a level-0
        box: PTC-free tissue, like scar or medulla. ``arcs_kept`` (a fraction) of the removed sites
        come back as incomplete DAB arcs; glomeruli and tubules stay."""
        obj = self.objects
        gone = np.isin(obj[:, 0], (PTC_POS, PTC_NEG, ARC))
        gone &= (obj[:, 1] >= x0) & (obj[:, 1] < x1) & (obj[:, 2] >= y0) & (obj[:, 2] < y1)
        arcs = obj[gone].copy()
        arcs[:, 0] = ARC
        keep = np.random.default_rng(self.spec.seed + 31).random(len(arcs)) < arcs_kept
        return self.set_objects(np.vstack([obj[~gone], arcs[keep]]))

    # -- layout ---------------------------------------------------------------------------------
    def _make_blobs(self, rng: np.random.Generator) -> np.ndarray:
        """Tissue = union of rotated wobbly ellipses tiling the tissue box (cx, cy, rx, ry, theta, phase)."""
        x0, y0, x1, y1 = self.tissue_box
        w, h = x1 - x0, y1 - y0
        n = max(1, round(w / h)) if w >= h else 1
        m = max(1, round(h / w)) if h > w else 1
        blobs = []
        scale = math.sqrt(self.spec.tissue_fraction / (math.pi / 4))
        for i in range(n):
            for j in range(m):
                cx, cy = x0 + (i + 0.5) * w / n, y0 + (j + 0.5) * h / m
                rx, ry = scale * w / n / 2, scale * h / m / 2
                rx, ry = min(rx, w / n / 2 * 0.98), min(ry, h / m / 2 * 0.98)
                blobs.append((cx, cy, rx, ry, rng.uniform(-0.15, 0.15), rng.uniform(0, 2 * math.pi)))
        return np.array(blobs, np.float64)

    def tissue_mask(self, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
        """Boolean tissue mask on the grid ``ys[:, None], xs[None, :]`` (level-0 coordinates)."""
        mask = np.zeros((ys.size, xs.size), bool)
        for cx, cy, rx, ry, th, ph in self.blobs:
            if (
                xs[-1] < cx - rx * 1.1
                or xs[0] > cx + rx * 1.1
                or ys[-1] < cy - ry * 1.1
                or ys[0] > cy + ry * 1.1
            ):
                continue
            dx, dy = xs[None, :] - cx, ys[:, None] - cy
            u = (dx * math.cos(th) + dy * math.sin(th)) / rx
            v = (-dx * math.sin(th) + dy * math.cos(th)) / ry
            ang = np.arctan2(v, u)
            rlim = 1.0 - 0.06 * (1 + np.sin(3 * ang + ph)) - 0.03 * (1 + np.sin(7 * ang + 2 * ph))
            mask |= u * u + v * v <= rlim * rlim
        return mask

    def _inside_tissue(self, x: np.ndarray, y: np.ndarray, margin: float) -> np.ndarray:
        ok = np.ones(x.shape, bool)
        for ang in np.linspace(0, 2 * np.pi, 8, endpoint=False):
            px, py = x + margin * math.cos(ang), y + margin * math.sin(ang)
            inside = np.zeros(x.shape, bool)
            for cx, cy, rx, ry, th, ph in self.blobs:
                dx, dy = px - cx, py - cy
                u = (dx * math.cos(th) + dy * math.sin(th)) / rx
                v = (-dx * math.sin(th) + dy * math.cos(th)) / ry
                a = np.arctan2(v, u)
                rlim = 1.0 - 0.06 * (1 + np.sin(3 * a + ph)) - 0.03 * (1 + np.sin(7 * a + 2 * ph))
                inside |= u * u + v * v <= rlim * rlim
            ok &= inside
        return ok

    def _make_objects(self, rng: np.random.Generator) -> np.ndarray:
        """Objects as rows (kind, cx, cy, rx, ry, theta, wall, flag)."""
        s = self.spec
        x0, y0, x1, y1 = self.tissue_box
        rows: list[np.ndarray] = []
        area_mm2 = (x1 - x0) * (y1 - y0) * (s.mpp * 1e-3) ** 2 * s.tissue_fraction
        n_glom = rng.poisson(s.glomeruli_per_mm2 * area_mm2)
        gx = rng.uniform(x0, x1, n_glom)
        gy = rng.uniform(y0, y1, n_glom)
        gr = rng.uniform(90, 130, n_glom)
        keep = self._inside_tissue(gx, gy, 140)
        glom = np.stack(
            [
                np.full(n_glom, GLOMERULUS),
                gx,
                gy,
                gr,
                gr * rng.uniform(0.85, 1.0, n_glom),
                rng.uniform(0, np.pi, n_glom),
                np.zeros(n_glom),
                np.ones(n_glom),
            ],
            1,
        )[keep]
        rows.append(glom)
        # tubules on a coarse jittered grid, PTCs on a finer one between them
        tsp = 330
        tx, ty = np.meshgrid(np.arange(x0 + tsp / 2, x1, tsp), np.arange(y0 + tsp / 2, y1, tsp))
        tx = tx.ravel() + rng.uniform(-25, 25, tx.size)
        ty = ty.ravel() + rng.uniform(-25, 25, ty.size)
        sel = (rng.random(tx.size) < 0.6) & self._inside_tissue(tx, ty, 80) & ~self._near(tx, ty, glom, 60)
        n = int(sel.sum())
        trx = rng.uniform(55, 85, n)
        tub = np.stack(
            [
                np.full(n, TUBULE),
                tx[sel],
                ty[sel],
                trx,
                trx * rng.uniform(0.6, 0.9, n),
                rng.uniform(0, np.pi, n),
                np.zeros(n),
                np.zeros(n),
            ],
            1,
        )
        rows.append(tub)
        sp = s.ptc_spacing
        jit = sp * 0.14
        px, py = np.meshgrid(np.arange(x0 + sp / 2, x1, sp), np.arange(y0 + sp / 2, y1, sp))
        px = px.ravel() + rng.uniform(-jit, jit, px.size)
        py = py.ravel() + rng.uniform(-jit, jit, py.size)
        sel = (rng.random(px.size) < s.ptc_density) & self._inside_tissue(px, py, 30)
        sel &= ~self._near(px, py, glom, 30) & ~self._near(px, py, tub, 22)
        px, py = px[sel], py[sel]
        n = px.size
        rx = rng.uniform(11, 19, n)
        ry = rx * rng.uniform(0.55, 1.0, n)
        kind = np.where(rng.random(n) < s.positive_fraction, PTC_POS, PTC_NEG)
        is_arc = rng.random(n) < s.arc_fraction
        kind = np.where(is_arc, ARC, kind)
        wall = np.where(kind == PTC_NEG, rng.uniform(2.0, 3.0, n), rng.uniform(3.0, 4.5, n))
        rows.append(
            np.stack([kind, px, py, rx, ry, rng.uniform(0, np.pi, n), wall, rng.uniform(0, 2 * np.pi, n)], 1)
        )
        return np.concatenate(rows, 0) if rows else np.zeros((0, 8))

    @staticmethod
    def _near(x: np.ndarray, y: np.ndarray, objs: np.ndarray, pad: float) -> np.ndarray:
        out = np.zeros(x.shape, bool)
        for _k, cx, cy, rx, _ry, *_ in objs:
            out |= (x - cx) ** 2 + (y - cy) ** 2 <= (rx + pad) ** 2
        return out

    # -- ground truth -----------------------------------------------------------------------
    @property
    def ptcs(self) -> np.ndarray:
        """Rows of real PTCs (kind 0 = C4d+, 1 = C4d-)."""
        return self.objects[(self.objects[:, 0] == PTC_POS) | (self.objects[:, 0] == PTC_NEG)]

    def counts(self) -> dict[str, int]:
        p = self.ptcs
        return {POSITIVE: int((p[:, 0] == PTC_POS).sum()), NEGATIVE: int((p[:, 0] == PTC_NEG).sum())}

    def ptc_features(self, n_vertices: int = 24) -> list[dict]:
        """GeoJSON Features (level-0 px) of every PTC outline, with QuPath classifications."""
        feats = []
        t = np.linspace(0, 2 * np.pi, n_vertices, endpoint=False)
        for i, (kind, cx, cy, rx, ry, th, *_r) in enumerate(self.ptcs):
            x = cx + rx * np.cos(t) * math.cos(th) - ry * np.sin(t) * math.sin(th)
            y = cy + rx * np.cos(t) * math.sin(th) + ry * np.sin(t) * math.cos(th)
            ring = [[round(float(a), 2), round(float(b), 2)] for a, b in zip(x, y)]
            ring.append(ring[0])
            name = CLASS_NAMES[int(kind)]
            feats.append(
                {
                    "type": "Feature",
                    "id": f"ptc-{i}",
                    "geometry": {"type": "Polygon", "coordinates": [ring]},
                    "properties": {
                        "objectType": "annotation",
                        "classification": {"name": name, "color": list(COLORS[name])},
                    },
                }
            )
        return feats

    # -- rendering --------------------------------------------------------------------------
    def _objects_in(self, x0: float, y0: float, x1: float, y1: float) -> list[int]:
        found: set[int] = set()
        for bx in range(int(x0 // _BUCKET), int(x1 // _BUCKET) + 1):
            for by in range(int(y0 // _BUCKET), int(y1 // _BUCKET) + 1):
                found.update(self._buckets.get((bx, by), ()))
        return sorted(found)

    def render(self, x0: int, y0: int, w: int, h: int, downsample: float = 1.0) -> np.ndarray:
        """RGB uint8 (h, w, 3) of the region whose top-left is level-0 (x0, y0), at ``downsample``."""
        ds = float(downsample)
        xs = x0 + (np.arange(w) + 0.5) * ds
        ys = y0 + (np.arange(h) + 0.5) * ds
        tx0, ty0, tx1, ty1 = self.tissue_box
        if xs[-1] < tx0 or xs[0] > tx1 or ys[-1] < ty0 or ys[0] > ty1:
            return np.broadcast_to(_BG.astype(np.uint8), (h, w, 3)).copy()
        tissue = self.tissue_mask(xs, ys)
        if not tissue.any():
            return np.broadcast_to(_BG.astype(np.uint8), (h, w, 3)).copy()
        img = np.where(tissue[..., None], _STROMA, _BG).astype(np.float32)
        if ds <= 4:
            self._draw_nuclei(img, tissue, xs, ys, ds)
        for i in self._objects_in(xs[0] - ds, ys[0] - ds, xs[-1] + ds, ys[-1] + ds):
            self._draw_object(img, self.objects[i], xs, ys, i)
        ox, oy = int(x0 / ds) % self.spec.tile, int(y0 / ds) % self.spec.tile
        noise = self._noise[oy : oy + h, ox : ox + w]
        if noise.shape[:2] == (h, w):
            img += noise
        return np.clip(img, 0, 255).astype(np.uint8)

    def _draw_nuclei(
        self, img: np.ndarray, tissue: np.ndarray, xs: np.ndarray, ys: np.ndarray, ds: float
    ) -> None:
        r = 3.5
        cx0, cx1 = int((xs[0] - r) // _NUC_CELL), int((xs[-1] + r) // _NUC_CELL)
        cy0, cy1 = int((ys[0] - r) // _NUC_CELL), int((ys[-1] + r) // _NUC_CELL)
        pts = []
        for cx in range(cx0, cx1 + 1):
            for cy in range(cy0, cy1 + 1):
                rng = np.random.default_rng([self.spec.seed, cx + 2**20, cy + 2**20])
                k = rng.poisson(3)
                pts.append(np.stack([(cx + rng.random(k)) * _NUC_CELL, (cy + rng.random(k)) * _NUC_CELL], 1))
        pts = np.concatenate(pts) if pts else np.zeros((0, 2))
        self._stamp_discs(img, pts, r, xs, ys, ds, _NUCLEUS, where=tissue)

    @staticmethod
    def _stamp_discs(img, pts, r, xs, ys, ds, color, where=None) -> None:
        for px, py in pts:
            j0, j1 = np.searchsorted(xs, px - r), np.searchsorted(xs, px + r)
            i0, i1 = np.searchsorted(ys, py - r), np.searchsorted(ys, py + r)
            if j1 <= j0 or i1 <= i0:
                continue
            d = (xs[None, j0:j1] - px) ** 2 + (ys[i0:i1, None] - py) ** 2 <= r * r
            if where is not None:
                d &= where[i0:i1, j0:j1]
            img[i0:i1, j0:j1][d] = color

    def _draw_object(
        self, img: np.ndarray, obj: np.ndarray, xs: np.ndarray, ys: np.ndarray, idx: int
    ) -> None:
        kind, cx, cy, rx, ry, th, wall, flag = obj
        R = max(rx, ry) + 1
        j0, j1 = np.searchsorted(xs, cx - R), np.searchsorted(xs, cx + R)
        i0, i1 = np.searchsorted(ys, cy - R), np.searchsorted(ys, cy + R)
        if j1 <= j0 or i1 <= i0:
            return
        dx, dy = xs[None, j0:j1] - cx, ys[i0:i1, None] - cy
        u = (dx * math.cos(th) + dy * math.sin(th)) / rx
        v = (-dx * math.sin(th) + dy * math.cos(th)) / ry
        r = np.sqrt(u * u + v * v)
        sub = img[i0:i1, j0:j1]
        inner = 1.0 - wall / min(rx, ry)
        ds = xs[1] - xs[0] if xs.size > 1 else 1.0
        if kind in (PTC_POS, PTC_NEG, ARC):
            sub[r <= 1.0] = _LUMEN
            ring = (r <= 1.0) & (r >= inner)
            if kind == ARC:  # incomplete DAB ring: not a positive PTC
                ang = (np.arctan2(v, u) - flag) % (2 * np.pi)
                sub[ring & (ang < np.pi * 1.1)] = _DAB
                sub[ring & (ang >= np.pi * 1.1)] = _PTC_NEG_WALL * 0.3 + _STROMA * 0.7
            else:
                sub[ring] = _DAB if kind == PTC_POS else _PTC_NEG_WALL
            if kind == PTC_NEG and ds <= 2:  # one endothelial nucleus on the wall
                ex, ey = cx + rx * math.cos(flag) * math.cos(th), cy + rx * math.cos(flag) * math.sin(th)
                self._stamp_discs(img, [(ex, ey)], 3.0, xs, ys, ds, _NUCLEUS)
        elif kind == TUBULE:
            sub[r <= 1.0] = _EPITHELIUM
            sub[r <= 0.42] = _LUMEN
            if ds <= 4:
                n = max(8, int(2 * math.pi * rx / 22))
                a = np.linspace(0, 2 * np.pi, n, endpoint=False) + idx
                pts = np.stack(
                    [
                        cx + 0.72 * (rx * np.cos(a) * math.cos(th) - ry * np.sin(a) * math.sin(th)),
                        cy + 0.72 * (rx * np.cos(a) * math.sin(th) + ry * np.sin(a) * math.cos(th)),
                    ],
                    1,
                )
                self._stamp_discs(img, pts, 4.0, xs, ys, ds, _NUCLEUS)
        elif kind == GLOMERULUS:
            sub[r <= 1.0] = _LUMEN * 0.6 + _STROMA * 0.4
            sub[r <= 0.86] = _TUFT
            if ds <= 4:
                rng = np.random.default_rng([self.spec.seed, idx, 17])
                n = 40
                a, rr = rng.uniform(0, 2 * np.pi, n), 0.8 * np.sqrt(rng.random(n))
                loops = np.stack([cx + rr * rx * np.cos(a), cy + rr * ry * np.sin(a)], 1)
                if flag:  # stained glomerular capillary loops: brown but not PTCs
                    self._stamp_discs(img, loops[:20], 7.0, xs, ys, ds, _DAB)
                    self._stamp_discs(img, loops[:20], 4.5, xs, ys, ds, _LUMEN)
                self._stamp_discs(img, loops[20:], 3.5, xs, ys, ds, _NUCLEUS)

    def render_labels(self, x0: int, y0: int, w: int, h: int) -> tuple[np.ndarray, dict[int, str]]:
        """Instance label mask of PTCs in a level-0 region and {label: class name}."""
        xs = x0 + np.arange(w) + 0.5
        ys = y0 + np.arange(h) + 0.5
        labels = np.zeros((h, w), np.int32)
        classes: dict[int, str] = {}
        for i in self._objects_in(x0, y0, x0 + w, y0 + h):
            obj = self.objects[i]
            if obj[0] not in (PTC_POS, PTC_NEG):
                continue
            kind, cx, cy, rx, ry, th = obj[:6]
            dx, dy = xs[None, :] - cx, ys[:, None] - cy
            u = (dx * math.cos(th) + dy * math.sin(th)) / rx
            v = (-dx * math.sin(th) + dy * math.cos(th)) / ry
            m = u * u + v * v <= 1.0
            if m.any():
                label = len(classes) + 1
                labels[m] = label
                classes[label] = CLASS_NAMES[int(kind)]
        return labels, classes


def _level_downsamples(width: int, height: int, tile: int) -> list[int]:
    out, ds = [1], 1
    while max(width, height) / (ds * 4) >= tile:
        ds *= 4
        out.append(ds)
    return out


def _tiles(slide: SyntheticSlide, ds: int, W: int, H: int) -> Iterator[np.ndarray]:
    t = slide.spec.tile
    background = np.empty((t, t, 3), np.uint8)
    background[:] = _BG.astype(np.uint8)  # shared by every glass tile (fast path of big slides)
    bx0, by0, bx1, by1 = slide.tissue_box
    for ty in range(0, H, t):
        for tx in range(0, W, t):
            if (tx + t) * ds < bx0 or tx * ds > bx1 or (ty + t) * ds < by0 or ty * ds > by1:
                yield background
            else:
                yield slide.render(tx * ds, ty * ds, t, t, ds)


def _aperio_description(spec: SlideSpec, width: int, height: int, ds: float) -> str:
    """ImageDescription of an Aperio SVS level: OpenSlide's aperio driver keys on the 'Aperio' prefix
    and reads MPP / AppMag from the '|'-separated fields."""
    return (
        f"Aperio Image Library v12.0.15 medseg synthetic, not for clinical use\n{width}x{height} "
        f"({spec.tile}x{spec.tile}) JPEG/RGB Q={spec.jpeg_quality}|AppMag = 20|MPP = {spec.mpp * ds:.4f}"
    )


def write_slide(
    path: str | Path,
    spec: SlideSpec | SyntheticSlide,
    *,
    geojson: str | Path | None = None,
    mpp_metadata: bool = True,
    flavour: str = "tiff",
) -> SyntheticSlide:
    """Write a pyramidal tiled TIFF (JPEG tiles, mpp in resolution tags) streaming tile by tile.

    Memory is bounded by one tile per level whatever the slide size. ``mpp_metadata=False``
    leaves the scale out (to test slides without one). ``flavour='aperio'`` writes an Aperio
    SVS instead (MPP in the ImageDescription, read by OpenSlide's aperio driver).
    """
    if flavour not in ("tiff", "aperio"):
        raise ValueError(f"unknown slide flavour {flavour!r}: use tiff or aperio")
    import tifffile

    from medseg.io.atomic import atomic_path

    slide = spec if isinstance(spec, SyntheticSlide) else SyntheticSlide(spec)
    spec = slide.spec
    path = Path(path)
    desc = json.dumps({"medseg_synthetic_slide": asdict(spec), "note": "synthetic, not for clinical use"})
    with atomic_path(path) as tmp, tifffile.TiffWriter(tmp, bigtiff=spec.width * spec.height > 2**28) as tw:
        for level, ds in enumerate(_level_downsamples(spec.width, spec.height, spec.tile)):
            W, H = math.ceil(spec.width / ds), math.ceil(spec.height / ds)
            res = 1e4 / (spec.mpp * ds)
            scale = {"resolution": (res, res), "resolutionunit": "CENTIMETER"} if mpp_metadata else {}
            level_desc = desc if level == 0 else None
            if flavour == "aperio":
                scale = {}
                level_desc = (
                    _aperio_description(spec, W, H, ds) if mpp_metadata else "Aperio Image Library v12.0.15"
                )
            tw.write(
                _tiles(slide, ds, W, H),
                shape=(H, W, 3),
                dtype=np.uint8,
                tile=(spec.tile, spec.tile),
                compression="jpeg",
                compressionargs={"level": spec.jpeg_quality},
                photometric="rgb",
                **scale,
                subfiletype=1 if level else 0,
                description=level_desc,
                metadata=None,
                software="medseg synthetic",
            )
    if geojson is not None:
        from medseg.io.atomic import write_text

        write_text(geojson, json.dumps({"type": "FeatureCollection", "features": slide.ptc_features()}))
    log.info(
        "wrote synthetic slide %s (%dx%d px, %s)", path, spec.width, spec.height, counts_text(slide.counts())
    )
    return slide
