"""Issue 17 section 5: a slide that is not C4d gets no C4d score (the DAB pattern check).

C4d stains capillary walls (rings and lines around a pale lumen); Ki67 fills whole nuclei (solid
round blobs on hematoxylin). The check measures the shape of the DAB objects, in micrometres, on
tissue tiles: a Ki67-like slide is ``qc_failed`` with the reason in words and no category, the C4d
slides are still scored. Also here: a DICOM WSI whose scale comes from ImagedVolumeWidth/Height.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest

from medseg.pathology.batch import score_slides
from medseg.pathology.dab_pattern import PatternConfig, assess_pattern, assess_slide_pattern, classify_objects
from medseg.pathology.score import ScoreConfig
from medseg.synthetic.slides import _BG, _DAB, _NUCLEUS, GLOMERULUS, TUBULE, SlideSpec, SyntheticSlide

from .conftest import SAMPLE
from .test_qc_scoring import OneDetection

_OD_H = -np.log10(_NUCLEUS / _BG)
_OD_DAB = -np.log10(_DAB / _BG)


class Ki67LikeSlide(SyntheticSlide):
    """The synthetic renderer's tissue, tubules and glomeruli (no PTCs, no stained loops) with nuclei
    of real size (semi-axes 2.5-4.5 um, about 2000 per mm^2), ``positive`` of them DAB-filled
    (Beer-Lambert mix: DAB 0.6-1.1 x the renderer's DAB, hematoxylin 0.15-0.4 x its nucleus)."""

    def __init__(self, spec: SlideSpec, positive: float = 0.3) -> None:
        self.positive = positive
        super().__init__(spec)
        objs = self.objects[np.isin(self.objects[:, 0], (TUBULE, GLOMERULUS))].copy()
        objs[objs[:, 0] == GLOMERULUS, 7] = 0  # no DAB capillary loops
        self.set_objects(objs)

    def _draw_nuclei(self, img, tissue, xs, ys, ds) -> None:
        cell, mpp = 128, self.spec.mpp
        reach = 4.5 / mpp
        for cx in range(int((xs[0] - reach) // cell), int((xs[-1] + reach) // cell) + 1):
            for cy in range(int((ys[0] - reach) // cell), int((ys[-1] + reach) // cell) + 1):
                rng = np.random.default_rng([self.spec.seed, cx + 2**20, cy + 2**20, 67])
                for _ in range(rng.poisson(8)):
                    px, py = (cx + rng.random()) * cell, (cy + rng.random()) * cell
                    a = rng.uniform(2.5, 4.5) / mpp
                    b, th = a * rng.uniform(0.6, 1.0), rng.uniform(0, math.pi)
                    if rng.random() < self.positive:
                        od = rng.uniform(0.15, 0.4) * _OD_H + rng.uniform(0.6, 1.1) * _OD_DAB
                    else:
                        od = rng.uniform(0.7, 1.0) * _OD_H
                    j0, j1 = np.searchsorted(xs, px - a), np.searchsorted(xs, px + a)
                    i0, i1 = np.searchsorted(ys, py - a), np.searchsorted(ys, py + a)
                    if j1 <= j0 or i1 <= i0:
                        continue
                    dx, dy = xs[None, j0:j1] - px, ys[i0:i1, None] - py
                    u = (dx * math.cos(th) + dy * math.sin(th)) / a
                    v = (-dx * math.sin(th) + dy * math.cos(th)) / b
                    m = (u * u + v * v <= 1.0) & tissue[i0:i1, j0:j1]
                    img[i0:i1, j0:j1][m] = _BG * 10 ** (-od)


@pytest.fixture(scope="module")
def ki67_slide(tmp_path_factory) -> Path:
    """A 2048 x 1536 px Ki67-like pyramidal TIFF (JPEG tiles, 0.5 um/px), 30 % positive nuclei."""
    from medseg.synthetic.slides import write_slide

    path = tmp_path_factory.mktemp("ki67") / "ki67.tiff"
    write_slide(path, Ki67LikeSlide(SlideSpec(width=2048, height=1536, seed=3)))
    return path


def _beer_lambert_ki67(dab_nuclei_fraction: float, seed: int = 0) -> np.ndarray:
    """skimage's real IHC re-rendered from its own hematoxylin layer with DAB (its real colour and
    median strength) in a fraction of its real nuclei: real nuclear shapes, Ki67-like staining."""
    from scipy import ndimage as ndi
    from skimage.color import hed_from_rgb, rgb_from_hed
    from skimage.data import immunohistochemistry

    x = immunohistochemistry().astype(np.float64)
    white = np.percentile(x.reshape(-1, 3), 99, axis=0)
    od = -np.log10(np.clip(x, 1, None) / white)
    conc = od @ hed_from_rgb
    hema = np.clip(conc[..., 0], 0, None)
    brown = conc[..., 2] > 0.3
    dab_vec = od[brown].mean(0) / np.linalg.norm(od[brown].mean(0))
    dab_conc = float(np.median(od[brown] @ dab_vec))
    nuclei, n = ndi.label(ndi.binary_opening(ndi.gaussian_filter(hema, 1) > 0.2))
    positive = np.random.default_rng(seed).random(n + 1) < dab_nuclei_fraction
    positive[0] = False
    dab = ndi.gaussian_filter(np.where(positive[nuclei], dab_conc, 0.0), 0.7)
    od_new = hema[..., None] * rgb_from_hed[0] + dab[..., None] * dab_vec
    return np.clip(white * 10**-od_new, 0, 255).round().astype(np.uint8)


def test_shapes_in_micrometres():
    """A thin DAB ring around a pale lumen is a capillary wall; a solid DAB disc of nucleus size is
    a nucleus; the same at another resolution gives the same kinds (the measure is in um)."""
    for mpp in (0.5, 0.25):
        px = 0.5 / mpp
        img = np.full((400, 400, 3), 230, np.uint8)
        yy, xx = np.mgrid[:400, :400]
        r = np.hypot(yy - 100, xx - 100)
        img[(r <= 16 * px) & (r >= 13 * px)] = _DAB.astype(np.uint8)  # wall 1.5 um, lumen 13 um
        img[np.hypot(yy - 300, xx - 300) <= 7 * px] = _DAB.astype(np.uint8)  # 7 um nucleus
        img[np.hypot(yy - 100, xx - 300) <= 7 * px] = _NUCLEUS.astype(np.uint8)  # blue: not DAB
        counts = classify_objects(img, mpp)
        assert (counts["ring"], counts["nuclear"], counts["linear"], counts["other"]) == (1, 1, 0, 0), counts


def test_ki67_like_slide_is_qc_failed_nuclear_with_no_category(ki67_slide, small_slide, tmp_path):
    """The Ki67-like slide passes the colour QC (it is DAB IHC) but its DAB is nuclear: qc_failed
    with the reason in words, no category, exit 0; the synthetic C4d slide and the shipped sample
    slide in the same batch are scored (their DAB objects are rings)."""
    out = tmp_path / "out"
    slides = [ki67_slide, small_slide[0], SAMPLE / "sample_slide.tiff"]
    res = score_slides(slides, out, ScoreConfig(), detector=OneDetection())
    assert res.exit_code == 0
    ki67, c4d, sample = res.items
    assert sample.ok and sample.metrics["dab_pattern"] == "capillary", sample
    assert ki67.status == "skipped" and ki67.metrics["status"] == "qc_failed", ki67
    assert "DAB pattern is nuclear, not capillary" in ki67.reason, ki67.reason
    assert ki67.metrics["banff_category"] is None and ki67.metrics["c4d_pos"] is None
    assert ki67.metrics["stain_qc_kind"] == "brightfield_dab" and ki67.metrics["dab_pattern"] == "nuclear"
    assert c4d.ok and c4d.metrics["dab_pattern"] == "capillary", c4d
    rows = {r["slide"]: r for r in csv.DictReader((out / "scores.csv").open(encoding="utf-8"))}
    assert rows["ki67"]["status"] == "qc_failed" and "nuclear" in rows["ki67"]["reason"]
    assert rows["ki67"]["banff_category"] == "" and float(rows["ki67"]["dab_pattern_nuclear_fraction"]) >= 0.9
    assert "nuclear" in (out / "report.html").read_text(encoding="utf-8")


def test_skip_stain_qc_scores_the_ki67_slide_and_says_why(ki67_slide, tmp_path):
    cfg = ScoreConfig(skip_stain_qc=True)
    (item,) = score_slides([ki67_slide], tmp_path / "out", cfg, detector=OneDetection()).items
    assert item.ok and "scored anyway" in item.reason and "nuclear" in item.reason, item.reason


def test_c4d_slides_keep_a_capillary_pattern(small_slide):
    """The shipped sample slide (seed 7) and a synthetic C4d slide: DAB in rings, no nucleus."""
    from medseg.pathology.slide import detect_tissue, open_slide

    for path in (SAMPLE / "sample_slide.tiff", small_slide[0]):
        with open_slide(path) as slide:
            p = assess_slide_pattern(slide, detect_tissue(slide))
        assert p.passed and p.pattern == "capillary", p
        assert p.nuclear_fraction <= 0.05 and p.counts["ring"] >= 10, p


def test_real_ihc_image_pattern():
    """skimage's real IHC (colon, FHL2): the DAB fills the cytoplasm and membranes of whole glands,
    so nearly all of it is one large sheet per gland (cut by the image edge), with no lumen rings
    and almost no separate blobs: the check does not judge it (it refuses only a nuclear pattern).
    Re-rendered with DAB in 30 % of its *real* nuclei (Ki67-like, real nuclear shapes) it is
    nuclear; with 10 % the 512 px image holds too few positive nuclei to judge."""
    from skimage.data import immunohistochemistry

    p = assess_pattern([immunohistochemistry()], 0.5)
    assert p.pattern == "not judged" and p.passed and p.sheet_fraction > 0.9, p
    p = assess_pattern([_beer_lambert_ki67(0.3)], 0.5)
    assert p.pattern == "nuclear" and not p.passed and p.nuclear_fraction >= 0.9, p
    assert p.hematoxylin_overlap >= 0.9 and "nucleus-sized" in p.reason
    assert assess_pattern([_beer_lambert_ki67(0.1)], 0.5).pattern == "not judged"


_H = np.array([0.65, 0.70, 0.29]) / np.linalg.norm([0.65, 0.70, 0.29])  # Ruifrok-Johnston OD vectors
_D = np.array([0.27, 0.57, 0.78]) / np.linalg.norm([0.27, 0.57, 0.78])
_E = np.array([0.07, 0.99, 0.11]) / np.linalg.norm([0.07, 0.99, 0.11])


def _ellipse(shape, x, y, a, b, th) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    u = ((xx - x) * math.cos(th) + (yy - y) * math.sin(th)) / a
    v = (-(xx - x) * math.sin(th) + (yy - y) * math.cos(th)) / b
    return u * u + v * v


def _scan(od: np.ndarray, rng) -> np.ndarray:
    """Beer-Lambert to RGB, camera noise, JPEG q75 (what a scanner tile looks like)."""
    import io

    from PIL import Image

    rgb = np.clip(240 * 10**-od + rng.normal(0, 2.5, od.shape), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG", quality=75)
    return np.asarray(Image.open(buf))


def _field(kind: str, seed: int, size: int = 768, mpp: float = 0.5) -> np.ndarray:
    """One 0.5 um/px field rendered by optical density, not by the slide renderer's colours.

    ``ki67``: 4000 nuclei / mm^2, half of them in clumps, textured, 25 % DAB-positive (a third of
    those weak), a faint DAB blush on the background. ``c4d``: 2500 interstitial nuclei / mm^2 and
    600 PTCs / mm^2 of 3-10 um radius, some slit-like (axis ratio down to 0.2), walls 1-3 um, 80 %
    DAB-stained, half with red cells (eosin-like OD) in the lumen, each with an endothelial nucleus.
    """
    from scipy import ndimage as ndi

    rng = np.random.default_rng(seed)
    h = w = size
    hema = 0.06 + ndi.gaussian_filter(rng.normal(0, 0.04, (h, w)), 6)
    dab = np.zeros((h, w))
    eos = np.zeros((h, w))
    area = (size * mpp / 1000) ** 2

    def stamp(arr, x, y, a, b, th, amount, soft=False, tex=False):
        r = int(a + b + 3)
        y0, y1, x0, x1 = max(0, int(y) - r), min(h, int(y) + r), max(0, int(x) - r), min(w, int(x) + r)
        if y1 <= y0 or x1 <= x0:
            return None
        q = _ellipse((y1 - y0, x1 - x0), x - x0, y - y0, a, b, th)
        m = np.clip(1 - q, 0, None) ** 0.25 if soft else (q <= 1).astype(float)
        if tex:
            m = m * np.clip(1 + 1.0 * ndi.gaussian_filter(rng.standard_normal(m.shape), 0.8), 0.2, None)
        arr[y0:y1, x0:x1] += amount * m
        return q, (y0, y1, x0, x1)

    if kind == "ki67":
        dab += 0.1 + np.clip(ndi.gaussian_filter(rng.normal(0, 0.05, (h, w)), 8) * 3, 0, None)
        n = rng.poisson(4000 * area)
        pts = rng.uniform(0, size, (n, 2))
        centres = rng.uniform(0, size, (max(1, n // 40), 2))
        pts[: n // 2] = centres[rng.integers(0, len(centres), n // 2)] + rng.normal(0, 12 / mpp, (n // 2, 2))
        for x, y in pts:
            a = rng.uniform(2.5, 5) / mpp
            b, th = a * rng.uniform(0.5, 1), rng.uniform(0, math.pi)
            stamp(hema, x, y, a, b, th, rng.uniform(0.3, 0.6), soft=True, tex=True)
            if rng.random() < 0.25:
                strength = rng.uniform(0.15, 0.35) if rng.random() < 0.3 else rng.uniform(0.4, 1.2)
                stamp(dab, x, y, a, b, th, strength, soft=True, tex=True)
    else:
        for x, y in rng.uniform(0, size, (rng.poisson(2500 * area), 2)):
            a = rng.uniform(2.5, 4.5) / mpp
            stamp(hema, x, y, a, a * rng.uniform(0.5, 1), rng.uniform(0, math.pi), 0.45)
        for x, y in rng.uniform(20, size - 20, (rng.poisson(600 * area), 2)):
            a, wall = rng.uniform(3, 10) / mpp, rng.uniform(1.0, 3.0) / mpp
            b, th = max(a * rng.uniform(0.2, 1.0), wall), rng.uniform(0, math.pi)
            q, (y0, y1, x0, x1) = stamp(np.zeros((h, w)), x, y, a + wall / 2, b + wall / 2, th, 0)
            r = np.sqrt(q)
            inner = 1 - wall / (b + wall / 2)
            wall_px, lumen = (r <= 1) & (r >= inner), r < inner
            if rng.random() < 0.8:
                dab[y0:y1, x0:x1] += rng.uniform(0.4, 1.0) * wall_px
            else:
                hema[y0:y1, x0:x1] += 0.15 * wall_px
            if rng.random() < 0.5:
                eos[y0:y1, x0:x1] += 0.35 * lumen  # red cells
            ang = rng.uniform(0, 2 * math.pi)
            stamp(hema, x + a * math.cos(ang), y + b * math.sin(ang), 5, 3, th, 0.45)
    hema, dab, eos = (ndi.gaussian_filter(c, 1.0) for c in (hema, dab, eos))
    return _scan(hema[..., None] * _H + dab[..., None] * _D + eos[..., None] * _E * 0.5, rng)


@pytest.mark.parametrize("seed", [0, 1])
def test_scanner_like_fields_by_optical_density(seed):
    """Fields rendered from stain optical densities (textured nuclei, clumps, weak positives, a DAB
    blush, red cells and endothelial nuclei in capillaries, slit-like capillaries, JPEG): the
    Ki67-like one is nuclear, the C4d-like one is capillary with a wide margin to the threshold."""
    ki67 = assess_pattern([_field("ki67", seed)], 0.5)
    assert ki67.pattern == "nuclear" and ki67.nuclear_fraction >= 0.9, ki67
    c4d = assess_pattern([_field("c4d", seed)], 0.5)
    assert c4d.pattern == "capillary" and c4d.nuclear_fraction <= 0.4, c4d


DSB = Path(__file__).resolve().parents[2].parent / "shared" / "realdata" / "nuclei_dsb2018_stage1"


@pytest.mark.skipif(
    not (DSB / "index.tsv").is_file(), reason="needs ../shared/realdata/nuclei_dsb2018_stage1"
)
def test_real_nuclei_filled_with_dab_are_nuclear():
    """Real nuclear shapes from other tissues: the brightfield (hematoxylin) images of the 2018 Data
    Science Bowl with their expert nucleus masks (about 0.25 um/px, read at 0.5), DAB painted into
    30 % of the real nuclei (OD 0.8-1.5, their counterstain halved: positive nuclei look brown).
    On these 40 images: 197 nuclear, 0 ring, 0 linear (53 other); on all 93 (image by image): 455
    nuclear, 1 ring, 6 linear."""
    import tifffile
    from PIL import Image
    from scipy import ndimage as ndi

    rows = [ln.split("\t") for ln in (DSB / "index.tsv").read_text().splitlines()[1:]]
    ids = [r[0] for r in rows if len(r) > 1 and r[1] == "brightfield"][:40]
    rng = np.random.default_rng(0)
    tiles = []
    for i in ids:
        img = np.asarray(Image.open(DSB / "images" / f"{i}.png").convert("RGB")).astype(float)
        labels = tifffile.imread(DSB / "masks" / f"{i}.tif")
        white = np.percentile(img.reshape(-1, 3), 99, axis=0)
        od = -np.log10(np.clip(img, 1, None) / white)
        positive = rng.random(labels.max() + 1) < 0.3
        positive[0] = False
        strength = rng.uniform(0.8, 1.5, labels.max() + 1)
        od = np.where(positive[labels][..., None], od * 0.5, od)
        dab = ndi.gaussian_filter(np.where(positive[labels], strength[labels], 0.0), 1.0)
        rgb = np.clip(white * 10 ** -(od + dab[..., None] * _D), 0, 255).astype(np.uint8)
        tiles.append(np.asarray(Image.fromarray(rgb).reduce(2)))
    p = assess_pattern(tiles, 0.5)
    assert p.pattern == "nuclear" and p.nuclear_fraction >= 0.9, p


def test_too_few_objects_or_check_off_is_not_judged(ki67_slide):
    from medseg.pathology.slide import detect_tissue, open_slide

    with open_slide(ki67_slide) as slide:
        tissue = detect_tissue(slide)
        assert assess_slide_pattern(slide, tissue, PatternConfig(min_objects=10**6)).pattern == "not judged"
    assert assess_pattern([np.full((64, 64, 3), 240, np.uint8)], 0.5).pattern == "not judged"


REAL_DICOM = Path(__file__).resolve().parents[1] / "data" / "real" / "dicom_wsi_camelyon_tiled_full.dcm"


def test_dicom_wsi_scale_from_imaged_volume(tmp_path, caplog):
    """The real CAMELYON DICOM WSI level with PixelSpacing removed: its ImagedVolumeWidth/Height
    (33.37 x 20.28 mm over 1152 x 700 px) give the same 28.97 um/px, with a warning and the source
    in the record; without the volume either, the slide asks for --slide-mpp."""
    import json
    import logging

    import pydicom

    from medseg.pathology.slide import open_slide

    ds = pydicom.dcmread(REAL_DICOM)
    measures = ds.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
    spacing_um = float(measures.PixelSpacing[1]) * 1000
    del measures.PixelSpacing
    path = tmp_path / "slides" / "novol.dcm"
    path.parent.mkdir()
    ds.save_as(path)
    with caplog.at_level(logging.WARNING, logger="medseg.pathology"):
        for reader in ("auto", "dicom"):
            with open_slide(path, reader=reader) as slide:
                assert slide.mpp == pytest.approx(spacing_um, rel=2e-3), (reader, slide.mpp)
                assert slide.mpp_source == "ImagedVolumeWidth/Height"
    assert "no PixelSpacing" in caplog.text and "ImagedVolumeWidth/Height" in caplog.text
    out = tmp_path / "out"
    res = score_slides([path], out, ScoreConfig(), detector=OneDetection())
    assert res.exit_code == 0  # an H&E lymph node: stain QC says so; the scale was found
    summary = json.loads((out / "novol" / "summary.json").read_text(encoding="utf-8"))
    assert summary["slide_mpp_source"] == "ImagedVolumeWidth/Height"
    assert summary["slide_mpp"] == pytest.approx(spacing_um, rel=2e-3)

    del ds.ImagedVolumeWidth
    ds.save_as(path)
    from medseg.errors import InputError

    with pytest.raises(InputError, match="--slide-mpp"):
        open_slide(path)
