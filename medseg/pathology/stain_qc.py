"""Stain QC before any C4d score: is this slide a brightfield DAB immunohistochemistry at all?

Why: the C4d detector (Faster R-CNN on brightfield DAB IHC of kidney biopsies) answers *every*
image it is given. It scored a plain H&E slide "Banff C4d3, 100 % positive", a Ki67 slide C4d3 and
called a fluorescence slide "not assessable" without a reason. This module looks at one
low-resolution RGB thumbnail per slide (about 1-4k px on the long side; no level-0 reads) and says,
in words, whether the slide is

* ``"brightfield_dab"``     light background, DAB brown on a meaningful fraction of tissue: passes;
* ``"brightfield_no_dab"``  brightfield without DAB (H&E, hematoxylin only, other chromogens);
* ``"fluorescence"``        dark background (fluorescence or dark-field);
* ``"no_tissue"``           background only.

Only ``brightfield_dab`` passes. Cheap HistoQC-style checks (out-of-focus tissue, pen / marking
ink) are *flags*; they fail the slide only when extreme.

How the stain is measured (fixed-vector colour deconvolution plus a physical "is it brown" gate):

1. Polarity: the median brightness of the image (exact-white fill left out). Brightfield is
   transmitted light (glass is bright, tissue absorbs); fluorescence / dark-field is emitted
   light (background dark, tissue bright). See :class:`QCConfig` for the numbers.
2. The image is white-balanced on its own background (per-channel 99th percentile: the glass, or
   the lightest lumen), so optical densities (OD, Beer-Lambert, base 10) are relative to the
   glass of *this* scanner and a colour cast of the scanner does not move any threshold.
3. Tissue OD is unmixed with the Ruifrok & Johnston hematoxylin / eosin / DAB vectors
   (``skimage.color.hed_from_rgb``, the matrix behind ``skimage.color.rgb2hed``). Fixed vectors
   rather than per-slide (Macenko) estimates: Macenko assumes the slide *has* two stains and
   will find a "DAB" vector in an H&E; the question here is precisely whether DAB is present.
4. Unmixing alone is not enough: three vectors explain every RGB colour exactly, and the
   scanner's eosin differs from the reference one, so on the real Aperio H&E ~87 % of tissue gets
   a "DAB" concentration > 0.1. A pixel counts as DAB only if it is also *brown*:
   OD_red <= OD_green <= OD_blue (absorbance rising towards blue: HSV hue 0-60 deg), hue <= 55,
   OD_red >= 0.2 x OD_blue (it absorbs red too) and some chroma. This is a property of the dyes'
   absorption spectra, not of any test image: hematoxylin absorbs red and green about equally and
   blue least (R-J OD 0.65/0.70/0.29), eosin absorbs green (0.07/0.99/0.11), so every
   non-negative mix of H and E absorbs green more than blue (purple 240-300 deg, pink 300-360);
   only DAB (0.27/0.57/0.78) and brown pigments (haemosiderin, formalin pigment, melanin) absorb
   blue most. Red things (eosin-stained red cells, red ink) absorb almost no red light and fail
   the red-absorption test. DAB over a hematoxylin nucleus stays brown while DAB dominates (DAB
   at least ~2-2.5x the hematoxylin OD), which is the usual look of a positive nucleus.

What this QC cannot do: it answers "is this a DAB IHC slide", not "is it a C4d stain". A Ki67,
CD34 or any other DAB IHC passes (a few brown nuclei on a hematoxylin background are enough), and
no colour test can tell C4d from Ki67: both are DAB. C4d specificity is the detector's job (it
must only count PTC-shaped linear/circumferential staining) and the pathologist's (the stain name
on the slide label / in the LIS, which the caller should check when it has it); after this QC,
:mod:`medseg.pathology.dab_pattern` refuses a slide whose DAB objects are solid nuclei rather
than capillary walls (a Ki67-like pattern). A C4d IHC with
*no* DAB at all, not even its glomerular internal control, fails as ``"brightfield_no_dab"``:
that is not a valid C4d0 but a technically inadequate stain, and must be read by a person.

Resolution matters for small DAB objects: once a positive nucleus or a stained capillary wall is
averaged with hematoxylin into one pixel, that pixel is no longer brown (the Ki67-like test image:
DAB on 0.7 % of tissue at full resolution, 0.5 % box-reduced 4x, 0.05 % reduced 8x). H&E,
fluorescence and empty slides are recognised at any thumbnail size, but before declaring a
hematoxylin-stained slide "no DAB" the caller should look again at a few tissue tiles read at
~1-2 um/px (:func:`tile_mosaic`). The blur check sees only defocus wider than ~2 thumbnail pixels
(at 8-16 um/px: gross focus failures; fine focus is for tile-level QC).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, replace

import numpy as np

KINDS = ("brightfield_dab", "brightfield_no_dab", "fluorescence", "no_tissue")


@dataclass(frozen=True)
class QCConfig:
    """Every threshold of the stain QC (store ``config.to_dict()`` next to the results).

    Brightness values are on the 0-255 scale of 8-bit RGB, ODs are base-10 optical densities
    relative to the slide's own background, hues are HSV degrees of the white-balanced image,
    fractions are of tissue pixels unless said otherwise. Why each default:

    Polarity and tissue
        ``dark_background_max`` = 70: brightfield glass is white-balanced to >= ~200 and even a
        field full of tissue has a median OD (mean of R, G, B) well below 0.5, i.e. a median
        brightness > ~80 (the real all-tissue DAB image: 153; the real H&E: 241). A
        fluorescence / dark-field image is dark wherever there is no emitter, so its median
        pixel is background (the real DSB 2018 nuclei image: 10-26). 70 sits between.
        ``glass_min_fraction`` = 0.10: if a tenth of the image is light and neutral (every
        channel >= 180, spread <= 40) it is brightfield however dark the rest is (black
        non-scanned fill, a label, a slide edge); fluorescence has no glass-like areas.
        ``tissue_od_min``/``tissue_od_max`` = 0.08/0.12 and ``tissue_sat_min``/``tissue_sat_max``
        = 0.04/0.07: clamps for per-slide Otsu thresholds on the summed OD (R+G+B) and on the
        saturation. Glass after white balance has a summed OD ~0.02-0.05 and a saturation
        ~0.02 (99th percentile on two real scans 0.05-0.11 / 0.02-0.03, dust included); pale
        stroma and interstitium are ~0.1-0.2 / 0.05-0.1. Where a slide has glass, Otsu splits
        glass from *stained* tissue far above the clamp (0.4-0.7), so the upper clamp acts and
        pale tissue is kept (the DAB fraction is of the whole section, not of its dark part,
        and does not jump when the counterstain is paler); the lower clamp keeps an all-glass
        image empty (< 1 % false tissue on dusty glass); an all-tissue image is not split.
        ``black_max`` = 30: no section absorbs >= 88 % of red, green *and* blue light (DAB and
        hematoxylin both leave a channel above ~80), so darker pixels are ink, edges or fill,
        never tissue. ``padding_black_max`` = 8: darker still is non-scanned fill, not ink.
        ``fluorescence_min_delta`` = 20: a fluorescence "tissue" pixel is at least this much
        brighter (brightest channel) than the median background, far above camera noise.
        ``min_tissue_fraction`` = 0.001 and ``min_tissue_pixels`` = 100: less than that is
        background (0.1 % of a 25 x 50 mm scan is ~1.3 mm^2, less than one biopsy core).

    Stains (colour deconvolution with the Ruifrok-Johnston vectors, see the module docstring)
        ``dab_od_min`` = 0.10: DAB concentration (OD along the unit DAB vector) of a just
        visible brown (transmission ~80 % in blue); fainter pixels have a hue dominated by
        noise. Kept low because thin staining is averaged with unstained tissue on a thumbnail;
        the brown gate, not this number, is what keeps H&E out (0.05-0.15 change nothing on the
        test images).
        ``dab_hue_max`` = 55 deg, ``dab_red_od_min`` = 0.2, ``dab_sat_min`` = 0.08: brown, not
        yellow, not red, not grey. Pure DAB is 17-23 deg (R-J) and the real DAB in the
        skimage IHC image 20-40 deg, with OD_red/OD_blue 0.3-0.7; eosin-red cells and red ink
        have OD_red/OD_blue ~0.1. Pure DAB at OD 0.10 has saturation 0.11; greys (folds, dirt)
        have ~0 and an undefined hue.
        ``min_dab_fraction`` = 0.003 (0.3 % of tissue): a DAB IHC has far more (a C4d slide at
        least its glomerular internal control, a Ki67 slide its positive nuclei: 2 % positive
        nuclei already give 0.5 %); an H&E has essentially none once the brown gate is applied
        (two real H&E scans: 0.00-0.02 %), and brown pigment rarely covers 0.3 % of a section.
        ``eosin_od_min`` = 0.05 with hue >= 290 or < 10 deg, ``hematoxylin_od_min`` = 0.10 with
        hue 180-290 deg: pink and blue-purple pixels, used for the words.
        ``he_min_eosin_fraction`` = 0.25: IHC is counterstained with hematoxylin only, so pink on
        a quarter of the tissue means H&E (the real Aperio H&E: ~75 %; the real DAB IHC: 0 %).
        ``he_dab_override`` = 0.05: with that much eosin, DAB must cover >= 5 % of tissue for
        the slide to still count as DAB IHC (then it passes with a flag).

    Pen / marking ink (flags)
        Colours no H/E/DAB mixture makes: green-cyan (hue 70-190 deg, saturation >=
        ``pen_sat_min`` 0.20); blue that absorbs red but hardly blue (hue 190-260, blue OD <=
        ``pen_blue_od_ratio`` 0.25 x red OD, red OD >= 0.3; hematoxylin's ratio is ~0.45);
        saturated red (hue >= 345 or < 8, saturation >= ``pen_red_sat_min`` 0.75; eosin is
        paler); black (``padding_black_max`` < brightest channel < ``black_max``). Only
        connected regions whose 2 x 2-eroded core covers >= ``pen_min_area_fraction`` 0.02 % of
        the image (and 50 px) count: strokes are thick and uniform at thumbnail scale, stained
        nuclei and JPEG fringes are specks. ``pen_flag_fraction`` = 0.005 of the tissue+ink area
        flags, ``pen_fail_fraction`` = 0.5 fails (ink over half the tissue hides what to score).

    Blur (flags)
        Tiles of ``blur_tile`` = 32 px with >= ``blur_tile_min_tissue`` = 50 % tissue and a grey
        standard deviation >= ``blur_min_contrast`` = 2 levels (flat tiles are not judged). A
        tile is out of focus when the variance of the Laplacian of the grey image is below
        ``blur_max_ratio`` ** 2 (0.15 ** 2) times the tile's grey variance. Normalising by the
        contrast judges pale and dark stains alike: sharp tissue has a ratio (of standard
        deviations) of ~0.5-2 (real IHC: >= 0.47, real H&E: >= 0.99 at the 5th percentile),
        white noise 4.5, a Gaussian blur of sigma 2 px brings it to ~0.1, sigma 4 px to ~0.05.
        ``blur_flag_fraction`` = 0.10 of judged tiles flags, ``blur_fail_fraction`` = 0.9 fails.

    ``max_side`` = 2048: larger thumbnails are box-reduced by an integer factor first (the stain
    fractions do not need more pixels; this bounds the run time to well under a second).
    """

    dark_background_max: float = 70.0
    glass_min_fraction: float = 0.10
    tissue_od_min: float = 0.08
    tissue_od_max: float = 0.12
    tissue_sat_min: float = 0.04
    tissue_sat_max: float = 0.07
    black_max: float = 30.0
    padding_black_max: float = 8.0
    fluorescence_min_delta: float = 20.0
    min_tissue_fraction: float = 0.001
    min_tissue_pixels: int = 100

    dab_od_min: float = 0.10
    dab_hue_max: float = 55.0
    dab_red_od_min: float = 0.2
    dab_sat_min: float = 0.08
    min_dab_fraction: float = 0.003
    eosin_od_min: float = 0.05
    hematoxylin_od_min: float = 0.10
    he_min_eosin_fraction: float = 0.25
    he_dab_override: float = 0.05

    pen_sat_min: float = 0.20
    pen_blue_od_ratio: float = 0.25
    pen_red_sat_min: float = 0.75
    pen_min_area_fraction: float = 0.0002
    pen_flag_fraction: float = 0.005
    pen_fail_fraction: float = 0.5

    blur_tile: int = 32
    blur_tile_min_tissue: float = 0.5
    blur_min_contrast: float = 2.0
    blur_max_ratio: float = 0.15
    blur_flag_fraction: float = 0.10
    blur_fail_fraction: float = 0.9

    max_side: int = 2048

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class StainQC:
    """The verdict for one slide, with the numbers behind it (all fractions are 0-1).

    ``reasons`` says in words why the slide did not pass (empty when it passed); ``flags`` are
    warnings (blur, ink, eosin in an IHC) that do not fail it unless extreme (then the reason is
    in ``reasons`` too). Stain fractions are of tissue pixels (ink excluded) and ``None`` where they
    mean nothing (fluorescence, no tissue); ``pen_fraction`` is of the tissue+ink area.
    """

    kind: str
    passed: bool
    reasons: list[str]
    dab_fraction: float | None
    hematoxylin_fraction: float | None
    eosin_fraction: float | None
    background_brightness: float  # median brightness (0-255) of the non-tissue pixels
    tissue_fraction: float  # of the image
    blur_fraction: float | None  # of judged tissue tiles; None when no tile could be judged
    pen_fraction: float
    flags: list[str] = field(default_factory=list)
    image_size: tuple[int, int] = (0, 0)  # (width, height) of the thumbnail given
    mpp: float | None = None  # microns per analysed pixel, when the caller said
    dab_pattern: dict | None = None  # medseg.pathology.dab_pattern.DabPattern.to_dict(), when checked

    def to_dict(self) -> dict:
        """JSON-able dict (floats rounded to 6 digits) for summary.json."""
        d = asdict(self)
        for k, v in d.items():
            if isinstance(v, float):
                d[k] = round(v, 6)
        d["image_size"] = list(self.image_size)
        return d

    def to_row(self, prefix: str = "stain_qc_") -> dict:
        """Flat scalars for one CSV row (lists joined with "; ", None as empty)."""
        row = {}
        for k, v in self.to_dict().items():
            if isinstance(v, dict):  # the DAB pattern record: its own columns (score._qc_fields)
                continue
            if isinstance(v, list):
                v = "; ".join(str(x) for x in v) if k != "image_size" else "x".join(str(x) for x in v)
            row[prefix + k] = "" if v is None else v
        return row

    def summary(self) -> str:
        """One line for a log or a report."""
        head = f"stain QC {'passed' if self.passed else 'FAILED'} ({self.kind})"
        if self.reasons:
            return f"{head}: {'; '.join(self.reasons)}"
        text = f"{head}: DAB on {_pct(self.dab_fraction)} of tissue"
        return text + (f"; {'; '.join(self.flags)}" if self.flags else "")


def _pct(x: float | None) -> str:
    if x is None or not math.isfinite(x):
        return "n/a"
    return f"{100 * x:.1f} %" if x >= 0.001 or x == 0 else f"{100 * x:.2f} %"


# ----------------------------------------------------------------------------------------- helpers

_BITS = 6  # colour table resolution per channel (4 grey levels per bin: OD error < 0.01 above level 100)
_NQ = 1 << (3 * _BITS)  # 262 144 colours; code _NQ marks padding (exact white: saturated glass / fill)


def _check_rgb(rgb: np.ndarray) -> np.ndarray:
    rgb = np.asarray(rgb)
    if rgb.ndim == 3 and rgb.shape[-1] == 4:  # RGBA: drop alpha (OpenSlide thumbnails are composited)
        rgb = rgb[..., :3]
    if rgb.ndim != 3 or rgb.shape[-1] != 3 or 0 in rgb.shape:
        raise ValueError(f"expected a non-empty RGB image of shape (H, W, 3), got {rgb.shape}")
    if rgb.dtype != np.uint8:
        if np.issubdtype(rgb.dtype, np.floating) and float(np.nanmax(rgb)) <= 1.0:
            rgb = rgb * 255.0
        rgb = np.clip(np.nan_to_num(rgb.astype(np.float32)), 0, 255).round().astype(np.uint8)
    return rgb


def _reduce(rgb: np.ndarray, max_side: int) -> tuple[np.ndarray, int]:
    """Box-reduce images larger than ``max_side`` by an integer factor (bounds the run time)."""
    f = math.ceil(max(rgb.shape[:2]) / max_side) if max_side > 0 else 1
    if f <= 1:
        return rgb, 1
    from PIL import Image

    return np.asarray(Image.fromarray(np.ascontiguousarray(rgb)).reduce(f)), f


def _pack(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(packed r | g << 8 | b << 16 as uint32, 18-bit colour code with exact white set to ``_NQ``).

    Exact white is what OpenSlide puts where nothing was scanned (and what clipped glass looks
    like): it is background for either polarity, so it is left out of every statistic. Exact black
    is *not* left out: it is the background of a thresholded fluorescence image.
    """
    h, w = rgb.shape[:2]
    p4 = np.zeros((h, w, 4), np.uint8)
    p4[..., :3] = rgb
    packed = p4.view("<u4")[..., 0]
    code = ((packed >> 2) & 0x3F) | ((packed >> 4) & 0xFC0) | ((packed >> 6) & 0x3F000)
    code[packed == 0xFFFFFF] = _NQ
    return packed, code


def _weighted_quantile(values: np.ndarray, weights: np.ndarray, q: float) -> float:
    total = float(weights.sum())
    if total <= 0 or values.size == 0:
        return float("nan")
    order = np.argsort(values, kind="stable")
    cw = np.cumsum(weights[order])
    return float(values[order][min(int(np.searchsorted(cw, q * total)), values.size - 1)])


def _otsu(values: np.ndarray, weights: np.ndarray, lo: float, hi: float, nbins: int = 256) -> float:
    """Otsu threshold of a weighted sample (colours x pixel counts), clamped to [lo, hi]."""
    if values.size < 2:
        return lo
    vmin, vmax = float(values.min()), float(values.max())
    if vmax <= vmin:
        return lo
    hist, edges = np.histogram(values, bins=nbins, range=(vmin, vmax), weights=weights)
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centres)
    mu0 = m0 / np.maximum(w0, 1e-12)
    mu1 = (m0[-1] - m0) / np.maximum(w1, 1e-12)
    between = w0 * w1 * (mu0 - mu1) ** 2
    return float(np.clip(centres[int(np.argmax(between[:-1]))], lo, hi))


@dataclass
class _Hist:
    """Colour histogram of the thumbnail: which quantised colours occur and how often.

    Every per-pixel test is computed once per *colour* that occurs (a few 10 000) and applied to
    the pixels with one table lookup, which keeps a 2048 x 2048 thumbnail well under a second.
    """

    counts: np.ndarray  # (_NQ + 1,) pixels per colour code, padding last
    present: np.ndarray  # colour codes (< _NQ) that occur
    weights: np.ndarray  # their pixel counts (float64)
    raw: np.ndarray  # (P, 3) float32 bin-centre RGB, 0-255
    grey: np.ndarray  # (P,) mean of R, G, B
    dark: bool  # dark-background polarity
    median: float  # median brightness of non-padding pixels
    glass: float  # fraction of non-padding pixels that are light and neutral (glass-like)

    def table(self, values: np.ndarray) -> np.ndarray:
        """Full lookup table (padding entry False/0) from per-present-colour values."""
        out = np.zeros(_NQ + 1, values.dtype)
        out[self.present] = values
        return out

    def white_point(self) -> np.ndarray:
        """Per-channel 99th percentile (the glass, or the lightest lumen) of non-padding pixels."""
        return np.clip(
            np.array([_weighted_quantile(self.raw[:, c], self.weights, 0.99) for c in range(3)], np.float32),
            128,
            255,
        )


def _histogram(packed: np.ndarray, code: np.ndarray, cfg: QCConfig) -> _Hist:
    counts = np.bincount(code.ravel(), minlength=_NQ + 1)
    present = np.flatnonzero(counts[:_NQ])
    raw = np.stack([present & 63, (present >> 6) & 63, present >> 12], -1).astype(np.float32) * 4 + 1.5
    grey = (raw[:, 0] + raw[:, 1] + raw[:, 2]) / 3
    weights = counts[present].astype(np.float64)
    median = _weighted_quantile(grey, weights, 0.5) if present.size else 255.0  # all exact white
    lo = np.minimum(np.minimum(raw[:, 0], raw[:, 1]), raw[:, 2])
    hi = np.maximum(np.maximum(raw[:, 0], raw[:, 1]), raw[:, 2])
    glass = float(weights[(lo >= 180) & (hi - lo <= 40)].sum() / max(1.0, weights.sum()))
    # dark median = dark-field, unless a tenth of the image is glass: then the dark part is black
    # padding / a slide edge / a label of a brightfield scan (no fluorescence image has glass)
    dark = median < cfg.dark_background_max and glass < cfg.glass_min_fraction
    return _Hist(counts, present, weights, raw, grey, dark, median, glass)


class _Colours:
    """Stain-relevant quantities of the colours that occur, relative to the slide's white point."""

    def __init__(self, hist: _Hist) -> None:
        from skimage.color import hed_from_rgb

        i0 = hist.white_point()
        raw = hist.raw
        self.raw_max = np.maximum(np.maximum(raw[:, 0], raw[:, 1]), raw[:, 2])
        trans = np.minimum(raw / i0[None, :], 1.0)
        self.od = -np.log10(trans)
        self.od_sum = self.od[:, 0] + self.od[:, 1] + self.od[:, 2]
        r, g, b = trans[:, 0], trans[:, 1], trans[:, 2]
        vmax = np.maximum(np.maximum(r, g), b)
        delta = vmax - np.minimum(np.minimum(r, g), b)
        self.vmax = vmax
        self.sat = delta / np.maximum(vmax, 1e-6)
        d = np.where(delta > 0, delta, 1.0)
        h = np.where(
            vmax == r, ((g - b) / d) % 6.0, np.where(vmax == g, (b - r) / d + 2.0, (r - g) / d + 4.0)
        )
        self.hue = np.where(delta > 0, h * 60.0, 0.0).astype(np.float32)  # HSV hue, degrees
        self.brown_order = (r >= g) & (g >= b)  # absorbance rises towards blue: OD_R <= OD_G <= OD_B
        self.conc = self.od @ np.asarray(hed_from_rgb, np.float32)  # H, E, DAB (Ruifrok-Johnston)


def _brightfield_tables(hist: _Hist, col: _Colours, cfg: QCConfig) -> tuple[np.ndarray, np.ndarray]:
    """(tissue table, ink-candidate table) for brightfield; tissue thresholds are Otsu within clamps."""
    t_od = _otsu(col.od_sum, hist.weights, cfg.tissue_od_min, cfg.tissue_od_max)
    t_sat = _otsu(col.sat, hist.weights, cfg.tissue_sat_min, cfg.tissue_sat_max)
    black = col.raw_max < cfg.black_max
    tissue = ((col.od_sum > t_od) | (col.sat > t_sat)) & ~black
    h, s, od = col.hue, col.sat, col.od
    green = (h >= 70) & (h < 190) & (s >= cfg.pen_sat_min)
    blue = (h >= 190) & (h < 260) & (od[:, 0] >= 0.3) & (od[:, 2] <= cfg.pen_blue_od_ratio * od[:, 0])
    red = ((h >= 345) | (h < 8)) & (s >= cfg.pen_red_sat_min)
    ink = ((green | blue | red) & (col.vmax < 0.97)) | (black & (col.raw_max > cfg.padding_black_max))
    return hist.table(tissue), hist.table(ink)


def _fluorescence_table(hist: _Hist, cfg: QCConfig) -> np.ndarray:
    raw = hist.raw
    signal = np.maximum(np.maximum(raw[:, 0], raw[:, 1]), raw[:, 2])
    bg = _weighted_quantile(signal, hist.weights, 0.5)
    lo = (0.0 if not math.isfinite(bg) else bg) + cfg.fluorescence_min_delta
    t = _otsu(signal, hist.weights, lo, max(lo, 200.0))
    return hist.table(signal > t)


def _clean(mask: np.ndarray) -> np.ndarray:
    """Drop isolated pixels (JPEG specks, dust) with a 3 x 3 opening."""
    from scipy import ndimage as ndi

    return ndi.binary_opening(mask, structure=np.ones((3, 3), bool))


def _ink_regions(cand: np.ndarray, min_px: int) -> np.ndarray:
    """Connected ink-coloured regions that contain a *thick* core of at least ``min_px`` pixels.

    The core is the set of 2 x 2 blocks that are entirely ink-coloured (a cheap erosion): pen
    strokes are thick and uniform, while JPEG colour fringes, lines along the edge of black padding
    and stray stained pixels are one or two pixels wide.
    """
    from scipy import ndimage as ndi

    H, W = cand.shape
    h, w = H // 2 * 2, W // 2 * 2
    if not cand.any() or h == 0 or w == 0:
        return np.zeros_like(cand)
    core = cand[:h:2, :w:2] & cand[1:h:2, :w:2] & cand[:h:2, 1:w:2] & cand[1:h:2, 1:w:2]
    lab, n = ndi.label(core)
    if n == 0:
        return np.zeros_like(cand)
    big = np.bincount(lab.ravel(), minlength=n + 1) * 4 >= min_px
    big[0] = False
    seeds = np.zeros_like(cand)
    seeds[:h, :w] = np.repeat(np.repeat(big[lab], 2, 0), 2, 1)
    lab, n = ndi.label(cand)
    keep = np.zeros(n + 1, bool)
    keep[np.unique(lab[seeds])] = True
    keep[0] = False
    return keep[lab]


def tile_mosaic(tiles: list[np.ndarray], columns: int | None = None) -> np.ndarray:
    """Paste RGB tiles (any sizes) into one image on a white canvas, for :func:`assess_stain`.

    Why: on a whole-slide thumbnail (8-16 um/px) small or thin DAB objects (positive nuclei,
    capillary walls) are averaged with hematoxylin and stop looking brown. A mosaic of a few
    tissue tiles read at ~1-2 um/px shows them as they are; white gaps count as background.
    """
    if not tiles:
        raise ValueError("no tiles")
    tiles = [_check_rgb(t) for t in tiles]
    cols = columns or math.ceil(math.sqrt(len(tiles)))
    rows = math.ceil(len(tiles) / cols)
    th = max(t.shape[0] for t in tiles)
    tw = max(t.shape[1] for t in tiles)
    out = np.full((rows * th, cols * tw, 3), 255, np.uint8)
    for i, t in enumerate(tiles):
        r, c = divmod(i, cols)
        out[r * th : r * th + t.shape[0], c * tw : c * tw + t.shape[1]] = t
    return out


def tissue_mask(rgb: np.ndarray, config: QCConfig | None = None, *, clean: bool = True) -> np.ndarray:
    """Boolean tissue mask of a thumbnail, for either polarity (decided from the image).

    Brightfield (light background): tissue absorbs light or is coloured - summed optical density
    (relative to this slide's glass) or saturation above a per-slide Otsu threshold clamped to
    physical bounds (an all-glass or all-tissue image is not split in two), and not black (ink,
    slide edges). Dark background (fluorescence / dark-field): tissue is the signal, brightest
    channel clearly above the median background. ``clean`` removes isolated pixels. Pen ink is
    *not* removed here (see :func:`assess_stain`).
    """
    cfg = config or QCConfig()
    rgb = _check_rgb(rgb)
    packed, code = _pack(rgb)
    hist = _histogram(packed, code, cfg)
    if hist.dark:
        table = _fluorescence_table(hist, cfg)
    else:
        table, _ = _brightfield_tables(hist, _Colours(hist), cfg)
    mask = table[code]
    return _clean(mask) if clean else mask


def _blur_fraction(packed: np.ndarray, tissue: np.ndarray, cfg: QCConfig) -> float | None:
    """Fraction of judged tissue tiles whose Laplacian variance, relative to the tile's grey
    variance, says "out of focus" (None when no tile can be judged)."""
    t = cfg.blur_tile
    H, W = tissue.shape
    nh, nw = H // t, W // t
    if nh == 0 or nw == 0:
        return None
    p = packed[: nh * t, : nw * t]
    grey = ((p & 255).astype(np.float32) + ((p >> 8) & 255) + ((p >> 16) & 255)) / 3.0
    lap = np.zeros_like(grey)
    lap[1:-1, 1:-1] = (
        grey[1:-1, :-2] + grey[1:-1, 2:] + grey[:-2, 1:-1] + grey[2:, 1:-1] - 4 * grey[1:-1, 1:-1]
    )

    def tile_var(a: np.ndarray) -> np.ndarray:
        a = a.reshape(nh, t, nw, t)
        m = a.mean((1, 3))
        return (a * a).mean((1, 3)) - m * m

    tis = tissue[: nh * t, : nw * t].reshape(nh, t, nw, t).mean((1, 3)) >= cfg.blur_tile_min_tissue
    g = tile_var(grey)
    judged = tis & (g >= cfg.blur_min_contrast**2)
    if not judged.any():
        return None
    blurred = tile_var(lap) < (cfg.blur_max_ratio**2) * g
    return float((blurred & judged).sum() / judged.sum())


# ------------------------------------------------------------------------------------------ verdict


def assess_stain(
    rgb: np.ndarray, config: QCConfig | None = None, *, mpp: float | None = None, **overrides
) -> StainQC:
    """Decide whether a slide thumbnail is brightfield DAB IHC; only that kind passes.

    ``rgb``: (H, W, 3) uint8 RGB of the whole slide at low resolution (1-4k px on the long side;
    the tissue-detection thumbnail is fine; larger images are box-reduced to ``max_side``).
    ``config``: thresholds (default :class:`QCConfig`); keyword ``overrides`` replace single
    fields, e.g. ``assess_stain(img, min_dab_fraction=0.01)``. ``mpp``: microns per thumbnail
    pixel, only recorded (it says how coarse the blur check was).
    """
    cfg = config or QCConfig()
    if overrides:
        names = {f.name for f in fields(QCConfig)}
        bad = sorted(set(overrides) - names)
        if bad:
            raise TypeError(f"unknown QC threshold(s): {', '.join(bad)}")
        cfg = replace(cfg, **overrides)
    rgb = _check_rgb(rgb)
    size = (rgb.shape[1], rgb.shape[0])
    rgb, factor = _reduce(rgb, cfg.max_side)
    if mpp is not None:
        mpp = float(mpp) * factor
    packed, code = _pack(rgb)
    n = code.size
    hist = _histogram(packed, code, cfg)
    min_tissue = max(cfg.min_tissue_pixels / factor**2, cfg.min_tissue_fraction * n)

    def verdict(kind, reasons, *, tissue_fraction, bg, **kw) -> StainQC:
        base = dict(
            dab_fraction=None,
            hematoxylin_fraction=None,
            eosin_fraction=None,
            blur_fraction=None,
            pen_fraction=0.0,
            flags=[],
        )
        base.update(kw)
        return StainQC(
            kind=kind,
            passed=kind == "brightfield_dab" and not reasons,
            reasons=reasons,
            background_brightness=float(bg),
            tissue_fraction=float(tissue_fraction),
            image_size=size,
            mpp=mpp,
            **base,
        )

    def background(mask: np.ndarray) -> float:
        c = np.bincount(code[~mask], minlength=_NQ + 1)[hist.present].astype(np.float64)
        return _weighted_quantile(hist.grey, c, 0.5) if c.sum() >= 0.01 * n else hist.median

    if hist.dark:
        tissue = _fluorescence_table(hist, cfg)[code]
        nt = int(tissue.sum())
        bg = background(tissue)
        if nt < min_tissue:
            return verdict(
                "no_tissue",
                [
                    f"no tissue found: the image is dark (median brightness {bg:.0f}/255) "
                    "with no signal - an empty fluorescence / dark-field scan or a blank image"
                ],
                tissue_fraction=nt / n,
                bg=bg,
            )
        return verdict(
            "fluorescence",
            [
                f"dark background (median brightness {bg:.0f}/255): looks like a fluorescence "
                "or dark-field image, not brightfield IHC"
            ],
            tissue_fraction=nt / n,
            bg=bg,
        )

    col = _Colours(hist)
    tissue_t, ink_t = _brightfield_tables(hist, col, cfg)
    pen = _ink_regions(ink_t[code], max(50, int(cfg.pen_min_area_fraction * n)))
    tissue = tissue_t[code] & ~pen
    nt, npen = int(tissue.sum()), int(pen.sum())
    bg = background(tissue | pen | hist.table(col.raw_max <= cfg.padding_black_max)[code])
    if nt < min_tissue:
        return verdict(
            "no_tissue",
            [
                f"no tissue found: {_pct(nt / n)} of the image differs from the background "
                f"(median brightness {bg:.0f}/255)"
            ],
            tissue_fraction=nt / n,
            bg=bg,
            pen_fraction=npen / max(1, nt + npen),
        )

    # stain measures: pixel counts per colour on tissue, dotted with per-colour stain tests
    ct = np.bincount(code[tissue], minlength=_NQ + 1)[hist.present].astype(np.float64)
    conc, hue, sat = col.conc, col.hue, col.sat
    od = col.od
    dab = (
        (conc[:, 2] > cfg.dab_od_min)
        & col.brown_order
        & (hue <= cfg.dab_hue_max)
        & (sat >= cfg.dab_sat_min)
        & (od[:, 0] >= cfg.dab_red_od_min * od[:, 2])
    )
    eos = (conc[:, 1] > cfg.eosin_od_min) & ((hue >= 290) | (hue < 10)) & (sat >= 0.05) & ~dab
    hem = (conc[:, 0] > cfg.hematoxylin_od_min) & (hue >= 180) & (hue < 290)
    dab_f, eos_f, hem_f = (float(ct[m].sum() / nt) for m in (dab, eos, hem))
    pen_f = npen / (nt + npen)
    blur_f = _blur_fraction(packed, tissue, cfg)

    flags: list[str] = []
    reasons: list[str] = []
    if pen_f >= cfg.pen_flag_fraction:
        flags.append(
            f"ink or pen marks (blue/green/red/black, not stain colours) on {_pct(pen_f)} of the "
            "tissue+ink area: check they do not cover the region to score"
        )
        if pen_f >= cfg.pen_fail_fraction:
            reasons.append(f"ink or pen marks cover {_pct(pen_f)} of the tissue+ink area")
    if blur_f is not None and blur_f >= cfg.blur_flag_fraction:
        at = f" at {mpp:.1f} um/px" if mpp else ""
        flags.append(f"out of focus: {_pct(blur_f)} of tissue tiles look blurred even on the thumbnail{at}")
        if blur_f >= cfg.blur_fail_fraction:
            reasons.append(f"out of focus: {_pct(blur_f)} of tissue tiles are blurred")

    stains = f"eosin on {_pct(eos_f)} of tissue, hematoxylin on {_pct(hem_f)}, DAB on {_pct(dab_f)}"
    if eos_f >= cfg.he_min_eosin_fraction and dab_f < cfg.he_dab_override:
        kind = "brightfield_no_dab"
        reasons.insert(0, f"no DAB stain found: looks like H&E ({stains})")
    elif dab_f < cfg.min_dab_fraction:
        kind = "brightfield_no_dab"
        if hem_f < 0.05 and eos_f < 0.05:
            what = "no recognisable H, E or DAB colour (another chromogen, or an unstained section?)"
        elif eos_f >= 0.03:
            what = (
                "hematoxylin with some eosin: looks like an H&E with little eosin (e.g. lymphoid tissue) "
                "or a counterstained section without DAB"
            )
        else:
            what = (
                "looks like hematoxylin only: an IHC without any positive staining (not even its internal "
                "control) or a counterstain-only section"
            )
        reasons.insert(
            0,
            f"no DAB stain found (DAB on {_pct(dab_f)} of tissue, need >= "
            f"{_pct(cfg.min_dab_fraction)}): {what}; {stains}",
        )
    else:
        kind = "brightfield_dab"
        if eos_f >= cfg.he_min_eosin_fraction:
            flags.append(f"eosin-like pink on {_pct(eos_f)} of tissue: unusual for an IHC counterstain")
    return verdict(
        kind,
        reasons,
        tissue_fraction=nt / n,
        bg=bg,
        dab_fraction=dab_f,
        hematoxylin_fraction=hem_f,
        eosin_fraction=eos_f,
        blur_fraction=blur_f,
        pen_fraction=pen_f,
        flags=flags,
    )
