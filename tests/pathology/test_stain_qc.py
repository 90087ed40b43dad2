"""Stain QC before any C4d score (issue 10): real H&E fails, real DAB IHC passes, fluorescence and
empty images are named, ink and blur are flagged. Light: every image is <= 512 px except the
runtime check."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from medseg.pathology.stain_qc import KINDS, QCConfig, StainQC, assess_stain, tile_mosaic, tissue_mask

ROOT = Path(__file__).resolve().parents[2]
REAL = ROOT / "tests" / "data" / "real"
SHARED_SVS = ROOT.parent / "shared" / "realdata" / "slide_cmu1_he_svs" / "CMU-1-Small-Region.svs"


def _png(path: Path) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(path).convert("RGB"))


@pytest.fixture(scope="module")
def ihc() -> np.ndarray:
    """Real brightfield DAB + hematoxylin IHC (colonic glands), shipped inside scikit-image."""
    from skimage import data

    return data.immunohistochemistry()


def _assert_he(qc: StainQC) -> None:
    assert qc.kind == "brightfield_no_dab" and not qc.passed, qc
    assert "H&E" in qc.reasons[0], qc.reasons
    assert qc.dab_fraction < QCConfig().min_dab_fraction / 10, qc  # the brown gate, not luck
    assert qc.eosin_fraction >= 0.5 and qc.background_brightness > 200, qc


# --------------------------------------------------------------------------------- real slides


def test_real_he_svs_from_shared():
    """The real Aperio H&E slide (OpenSlide test data) is not DAB IHC, and the QC says H&E."""
    if not SHARED_SVS.is_file():
        pytest.skip(
            f"real-data folder absent ({SHARED_SVS.parent}); the copy in tests/data/real is tested below"
        )
    openslide = pytest.importorskip("openslide")
    with openslide.OpenSlide(str(SHARED_SVS)) as slide:
        thumb = np.asarray(slide.get_thumbnail((1024, 1024)).convert("RGB"))
    _assert_he(assess_stain(thumb))


def test_real_he_thumbnail_copy():
    """The same H&E slide from the project's own small copy (runs without ../shared)."""
    _assert_he(assess_stain(_png(REAL / "he_cmu1_thumb.png")))


def test_real_dab_ihc_passes(ihc):
    qc = assess_stain(ihc)
    assert qc.kind == "brightfield_dab" and qc.passed, qc
    assert qc.reasons == [] and qc.flags == [], qc
    assert qc.dab_fraction > 0.5 and qc.eosin_fraction < 0.01, qc
    assert qc.pen_fraction == 0.0 and qc.blur_fraction < QCConfig().blur_flag_fraction, qc


def test_real_fluorescence_nuclei():
    """Real fluorescence (DSB 2018 nuclei) as grey, and as the blue channel of a composite."""
    grey = _png(REAL / "nuclei_dsb2018_256.png")
    blue = np.zeros_like(grey)
    blue[..., 2] = grey[..., 0]
    for img in (grey, blue):
        qc = assess_stain(img)
        assert qc.kind == "fluorescence" and not qc.passed, qc
        assert "dark background" in qc.reasons[0] and "fluorescence" in qc.reasons[0], qc.reasons
        assert qc.background_brightness < 40 and qc.dab_fraction is None, qc


# ----------------------------------------------------------------------------- synthetic cases


def _fluorescence_image(seed: int = 0, size: int = 384) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = rng.normal(8, 3, (size, size, 3))
    yy, xx = np.mgrid[:size, :size]
    for i in range(20):
        cy, cx = rng.uniform(20, size - 20, 2)
        r = rng.uniform(5, 12)
        img[..., 2] += 200 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))  # DAPI
        if i % 2:
            img[..., 1] += 150 * np.exp(-((yy - cy) ** 2 + (xx - cx - 4) ** 2) / (2 * (1.5 * r) ** 2))
    return np.clip(img, 0, 255).astype(np.uint8)


def test_synthetic_fluorescence():
    img = _fluorescence_image()
    qc = assess_stain(img)
    assert qc.kind == "fluorescence" and not qc.passed, qc
    assert "dark background" in qc.reasons[0] and qc.background_brightness < 20, qc
    # the same image with OpenSlide's white fill around it (non-scanned area) is still fluorescence
    padded = np.full((600, 600, 3), 255, np.uint8)
    padded[100:484, 100:484] = img
    assert assess_stain(padded).kind == "fluorescence"


def test_background_only_images():
    for value in (255, 240):
        qc = assess_stain(np.full((256, 256, 3), value, np.uint8))
        assert qc.kind == "no_tissue" and not qc.passed and "no tissue" in qc.reasons[0], qc
    qc = assess_stain(np.zeros((256, 256, 3), np.uint8))
    assert qc.kind == "no_tissue" and not qc.passed and "dark" in qc.reasons[0], qc


def _stroke(img: np.ndarray, colour: tuple[int, int, int], width: int = 16) -> np.ndarray:
    from PIL import Image, ImageDraw

    im = Image.fromarray(img.copy())
    ImageDraw.Draw(im).line([(20, 480), (250, 300), (500, 420)], fill=colour, width=width)
    return np.asarray(im)


@pytest.mark.parametrize("colour", [(30, 60, 170), (40, 150, 60)], ids=["blue", "green"])
def test_pen_mark_is_flagged_but_dab_still_passes(ihc, colour):
    qc = assess_stain(_stroke(ihc, colour))
    assert qc.pen_fraction > 0.01, qc
    assert any("pen" in f for f in qc.flags), qc.flags
    assert qc.kind == "brightfield_dab" and qc.passed, qc


def test_blur_flag(ihc):
    from skimage.filters import gaussian

    sharp = assess_stain(ihc)
    assert not any("focus" in f for f in sharp.flags) and sharp.blur_fraction < 0.1, sharp
    blurred = gaussian(ihc, sigma=4, channel_axis=-1, preserve_range=True).astype(np.uint8)
    qc = assess_stain(blurred)
    assert qc.blur_fraction > 0.5, qc
    assert any("focus" in f for f in qc.flags), qc.flags
    assert qc.kind == "brightfield_dab", qc  # still DAB IHC; extreme blur alone is a reason to fail


def _beer_lambert(ihc: np.ndarray, dab_nuclei_fraction: float, seed: int = 0) -> np.ndarray:
    """Re-render the real IHC image from its own hematoxylin layer, with DAB (the real image's DAB
    colour and median strength) only in a fraction of the nuclei: a Ki67-like slide."""
    from scipy import ndimage as ndi
    from skimage.color import hed_from_rgb, rgb_from_hed

    x = ihc.astype(np.float64)
    white = np.percentile(x.reshape(-1, 3), 99, axis=0)
    od = -np.log10(np.clip(x, 1, None) / white)
    conc = od @ hed_from_rgb
    hema = np.clip(conc[..., 0], 0, None)
    brown = conc[..., 2] > 0.3
    dab_vec = od[brown].mean(0)
    dab_vec /= np.linalg.norm(dab_vec)
    dab_conc = float(np.median(od[brown] @ dab_vec))
    nuclei, n = ndi.label(ndi.binary_opening(ndi.gaussian_filter(hema, 1) > 0.2))
    rng = np.random.default_rng(seed)
    positive = rng.random(n + 1) < dab_nuclei_fraction
    positive[0] = False
    dab = ndi.gaussian_filter(np.where(positive[nuclei], dab_conc, 0.0), 0.7)
    od_new = hema[..., None] * rgb_from_hed[0] + dab[..., None] * dab_vec
    return np.clip(white * 10**-od_new, 0, 255).round().astype(np.uint8)


def test_ki67_like_few_brown_nuclei_pass_and_hematoxylin_only_fails(ihc):
    """A few DAB nuclei on a hematoxylin background is still a DAB IHC: the QC cannot tell C4d from
    Ki67 (both are DAB), that is the detector's job. Without any DAB the same slide fails."""
    qc = assess_stain(_beer_lambert(ihc, 0.05))
    assert qc.kind == "brightfield_dab" and qc.passed, qc
    assert qc.dab_fraction < 0.05 and qc.hematoxylin_fraction > 0.5, qc
    qc = assess_stain(_beer_lambert(ihc, 0.0))
    assert qc.kind == "brightfield_no_dab" and not qc.passed, qc
    assert "hematoxylin only" in qc.reasons[0], qc.reasons


def test_coarse_thumbnail_hides_small_dab_a_tile_mosaic_finds_it(ihc):
    """Averaged 8x, DAB nuclei blend with hematoxylin and stop looking brown (honest limit of a
    thumbnail); a mosaic of full-resolution tiles of the same slide passes again."""
    from PIL import Image

    ki67 = _beer_lambert(ihc, 0.05)
    coarse = assess_stain(np.asarray(Image.fromarray(ki67).reduce(8)))
    assert coarse.kind == "brightfield_no_dab" and "hematoxylin" in coarse.reasons[0], coarse
    tiles = [ki67[i : i + 256, j : j + 256] for i in (0, 256) for j in (0, 256)]
    mosaic = tile_mosaic(tiles)
    assert mosaic.shape == (512, 512, 3)
    assert assess_stain(mosaic).passed


# ------------------------------------------------------------------------------------ the API


def test_tissue_mask_both_polarities(ihc):
    m = tissue_mask(ihc)
    assert m.dtype == bool and m.shape == ihc.shape[:2] and 0.4 < m.mean() < 0.95
    fl = _fluorescence_image()
    m = tissue_mask(fl)
    assert 0.01 < m.mean() < 0.5 and not m[:5, :5].any()
    assert not tissue_mask(np.full((64, 64, 3), 250, np.uint8)).any()


def test_result_and_config_are_serialisable(ihc):
    qc = assess_stain(ihc[::2, ::2], mpp=4.0)
    assert qc.kind in KINDS and qc.image_size == (256, 256) and qc.mpp == 4.0
    json.dumps(qc.to_dict())
    row = qc.to_row()
    assert row["stain_qc_kind"] == "brightfield_dab" and row["stain_qc_reasons"] == ""
    json.dumps(QCConfig().to_dict())
    assert "passed" in qc.summary()
    # thresholds can be overridden one by one; a typo is an error, not a silent default
    strict = assess_stain(ihc, min_dab_fraction=0.99)
    assert strict.kind == "brightfield_no_dab" and not strict.passed
    with pytest.raises(TypeError):
        assess_stain(ihc, min_dab_fractoin=0.5)


def test_runtime_2048(ihc):
    """2048 x 2048 thumbnail: well under a second on one core (bound generous for a loaded CI box).

    CPU time of this process, not wall time: other jobs on a shared machine do not count."""
    from PIL import Image

    big = np.asarray(Image.fromarray(ihc).resize((2048, 2048)))
    best = float("inf")
    for _ in range(2):  # a second try only when the first was slow (a busy shared machine)
        t0 = time.process_time()
        qc = assess_stain(big)
        best = min(best, time.process_time() - t0)
        if best < 1.0:
            break
    assert qc.passed
    assert best < 2.5, f"assess_stain on 2048^2 took {best:.2f} s"
