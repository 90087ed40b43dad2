"""From what a microscope writes to what the cell nets read: channel, stain, nuclear plane, normalisation.

The nets take one plane with bright objects on a dark background (fluorescence-like) or the
phase-contrast look they were trained on. This module turns any input into that plane:

* ``--channel N`` picks one channel of a multi-channel image (RGB(A) samples or a TIFF channel axis).
* ``--stain``: ``fluo`` (bright nuclei on dark background), ``phase`` (grey background, dark
  cells with halo), ``he`` / ``ihc`` (RGB brightfield: colour deconvolution, Ruifrok & Johnston
  2001 via ``skimage.color.rgb2hed``, to the hematoxylin optical density, where nuclei are
  bright), or ``auto`` (decided from the image by :func:`detect_stain`, reported per image).
* :func:`normalise_for_stain`: per-image percentile normalisation (1-99.8 %, as StarDist and
  Cellpose), then, for fluorescence-like planes, a local contrast normalisation so that dim
  nuclei next to saturated ones reach the same range (real images spread brightness over two
  decades; a global stretch leaves the dim ones near zero).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from medseg.errors import InputError

log = logging.getLogger("medseg.cells")

STAINS = ("auto", "fluo", "phase", "he", "ihc")
BRIGHTFIELD = ("he", "ihc")
# the plane an H&E image becomes (weights record which one they read: ``he_plane_of``)
HE_PLANES = ("hematoxylin", "optical_density")
LOCAL_WINDOW = 48  # px at the model's training scale (about 2 training diameters)
BACKGROUND_WINDOW = 128  # px: local background (minimum) window
LOCAL_SNR = 20.0  # local contrast range never below 20 x the noise level (noise is not stretched)
LOCAL_MIN_FLOOR = 1e-3  # ... nor below 0.1 % of the percentile range


@dataclass
class StainDecision:
    stain: str  # fluo | phase | he | ihc
    how: str  # "given" or the reason auto chose it

    def to_dict(self) -> dict[str, str]:
        return {"stain": self.stain, "how": self.how}


def _rel_background(gray: np.ndarray) -> float:
    """Where the background (the histogram's mode) sits between the 1st and 99.8th percentile:
    near 0 for a dark background, mid-range for phase contrast, near 1 for bright glass. The mode,
    not the median: in a crowded image most pixels may be cells."""
    from scipy.ndimage import uniform_filter1d

    x = _sample(gray).astype(np.float64)
    lo, hi = np.percentile(x, [1.0, 99.8])
    if hi - lo <= 0:
        return 0.0
    hist, _ = np.histogram(np.clip((x - lo) / (hi - lo), 0, 1), bins=50, range=(0, 1))
    return float((np.argmax(uniform_filter1d(hist.astype(np.float64), 3)) + 0.5) / 50)


def _sample(a: np.ndarray) -> np.ndarray:
    step = max(min(a.shape[0], a.shape[1]) // 1024, 1)
    return a[::step, ::step]


def _sample_share(a: np.ndarray) -> np.ndarray:
    """Every k-th pixel (k >= 1), about 65 000 of them at least: enough for a pixel share (its
    sampling error under 0.2 %) at a quarter of the colour-space conversion's cost on a 512^2 tile."""
    step = max(int(np.sqrt(a.shape[0] * a.shape[1] / 65536)), 1)
    return a[::step, ::step]


def _is_gray_rgb(rgb: np.ndarray) -> bool:
    """RGB that carries one image: channels (nearly) equal, a tinted grey image (every pair of
    channels that vary correlated above 0.98), or one channel alone (e.g. DAPI saved in the blue
    channel of an RGB file, the others empty). A fluorescence composite's channels show different
    objects."""
    s = _sample(rgb[..., :3]).astype(np.float32)
    r, g, b = s[..., 0], s[..., 1], s[..., 2]  # channel-wise ufuncs: 5x faster than max(-1)/min(-1)
    spread = float(np.percentile(np.maximum(np.maximum(r, g), b) - np.minimum(np.minimum(r, g), b), 99))
    full = float(s.max() - s.min())
    if full == 0 or spread <= 0.02 * full:
        return True
    flat = s.reshape(-1, 3).T
    flat = flat[flat.std(axis=1) > 0]  # a constant channel carries nothing
    return len(flat) == 1 or bool(np.corrcoef(flat).min() > 0.98)


def _white_level(rgb: np.ndarray) -> float:
    if np.issubdtype(rgb.dtype, np.integer):
        return float(np.iinfo(rgb.dtype).max)
    return 1.0 if float(rgb.max(initial=0)) <= 1.0 else float(rgb.max())


def hematoxylin(rgb: np.ndarray) -> np.ndarray:
    """Hematoxylin optical density (H, W) of a brightfield RGB image: nuclei bright, glass dark."""
    from skimage.color import rgb2hed

    scaled = np.clip(rgb[..., :3].astype(np.float32) / _white_level(rgb), 0, 1)
    return np.clip(rgb2hed(scaled)[..., 0], 0, None).astype(np.float32)


def optical_density(rgb: np.ndarray) -> np.ndarray:
    """Summed optical density (H, W) of an RGB brightfield image: nuclei, the densest structures of an
    H&E section, bright and solid. Why an alternative to the hematoxylin channel: the fixed Ruifrok
    vectors split near-black pixels (8-bit values below ~40, where the ratios between channels are
    JPEG noise) erratically between hematoxylin, eosin and DAB (on a real CMU-1 H&E tile, hematoxylin
    values 0.24-1.78 for such pixels), so strongly stained nuclei come out speckled. The sum is
    monotonic in every channel. Pixels are floored at 1/255 (OD at most 3 x 5.5)."""
    x = np.clip(rgb[..., :3].astype(np.float32) / _white_level(rgb), 1.0 / 255.0, 1.0)
    return (-np.log(x)).sum(axis=-1).astype(np.float32)


def he_plane_of(normalisation: dict | None) -> str:
    """The H&E plane weights were trained on (``hematoxylin`` for every weights file without the
    ``he_plane`` key)."""
    plane = (normalisation or {}).get("he_plane", HE_PLANES[0])
    return plane if plane in HE_PLANES else HE_PLANES[0]


def _brown_share(rgb01: np.ndarray) -> float:
    """Share of the tissue (saturated, not white) pixels whose hue is brown (DAB: 10-60 degrees);
    hematoxylin is blue-purple, eosin pink (300-10 degrees)."""
    from skimage.color import rgb2hsv

    hsv = rgb2hsv(_sample_share(rgb01))
    tissue = (hsv[..., 1] > 0.15) & (hsv[..., 2] < 0.95)
    if not tissue.any():
        return 0.0
    hue = hsv[..., 0][tissue] * 360
    return float(np.mean((hue >= 10) & (hue <= 60)))


def _he_tissue_share(rgb01: np.ndarray) -> float:
    """Share of all pixels that are stained H&E tissue: saturated (> 0.2), not dark (value > 0.25), hue
    pink to purple (240-360 or 0-10 degrees). A tile full of tissue shows no glass, so the image's
    median is dark-ish, but unlike a fluorescence composite (black background) most of it is lit."""
    from skimage.color import rgb2hsv

    hsv = rgb2hsv(_sample_share(rgb01))
    hue = hsv[..., 0] * 360
    stained = (hsv[..., 1] > 0.2) & (hsv[..., 2] > 0.25) & ((hue >= 240) | (hue <= 10))
    return float(stained.mean())


EMPTY_LEVEL, EMPTY_CONTRAST = 0.6, 0.1  # of the pixel type's full scale
# stored grey levels (any bit depth) between the 1st and 99.8th percentile below which a plane is empty:
# empty background crops of real DSB 2018 fluorescence images span 2-3 and were normalised into 27-29
# "cells"; the least contrasted DSB image spans 17 (8-bit), the 16-bit test image about 200
EMPTY_LEVELS = 4


def empty_field(plane: np.ndarray, dtype: str) -> str | None:
    """Why a plane is an empty bright field (glass, an unlit white frame), or None.

    Bright (median at least ``EMPTY_LEVEL`` of the stored type's full scale) and without contrast (1st to
    99.8th percentile under ``EMPTY_CONTRAST`` of it): nothing on the glass to segment. Normalised, such
    a plane's JPEG blocks and noise would be read as hundreds of "cells" (seen on the glass tiles of the
    real CMU-1 slide: 448-734). Measured on real data: empty CMU-1 glass tiles 0.003-0.09 contrast at
    0.95 level; the least contrasted bright DSB 2018 image 0.15. Or, at any brightness, fewer than
    ``EMPTY_LEVELS`` stored grey levels between those percentiles: an empty dark field, whose noise the
    normalisation would stretch likewise. Integer images only: a float image has no known full scale.
    """
    kind = np.dtype(dtype)
    if not np.issubdtype(kind, np.integer):  # float: no full scale; bool is not an integer type here
        return None
    top = float(np.iinfo(kind).max)
    gray = _sample(plane).astype(np.float32)
    gray = gray.mean(axis=-1) if gray.ndim == 3 else gray
    lo, mid, hi = np.percentile(gray, [1.0, 50.0, 99.8])
    if mid >= EMPTY_LEVEL * top and hi - lo < EMPTY_CONTRAST * top:
        return f"empty bright field: no contrast ({(hi - lo) / top:.0%} of the range at {mid / top:.0%} brightness; glass?)"
    if hi - lo < EMPTY_LEVELS and np.unique(gray).size > 2:  # (a two-valued image is a binary picture)
        return f"empty field: no contrast (the image spans {hi - lo:.1f} grey levels between its 1st and 99.8th percentile)"
    return None


def detect_stain(plane: np.ndarray, *, path: object = None) -> StainDecision:
    """Decide fluo / phase / he / ihc from one plane (gray (H, W) or RGB (H, W, 3|4)).

    Gray: dark background (histogram mode in the lowest 20 % of the range) -> fluo; mid-grey background
    -> phase; bright background (grey brightfield, dark nuclei) -> ``he``, which inverts a grey plane.
    RGB: equal or fully correlated (tinted grey) channels -> as gray; bright background -> brightfield, ``ihc`` when more than 15 %
    of the tissue pixels are brown (DAB), else ``he``; a tile full of H&E tissue (no glass: median
    above 0.2 and more than 60 % of the pixels lit, saturated pink/purple) -> ``he``; any other dark colour image is a multi-channel
    fluorescence composite: which channel holds the nuclei is not knowable -> error naming
    ``--stain`` and ``--channel``.
    """
    if plane.ndim == 3 and not _is_gray_rgb(plane):
        from skimage.color import rgb2gray

        scaled = np.clip(_sample(plane[..., :3]).astype(np.float32) / _white_level(plane), 0, 1)
        gray = rgb2gray(scaled)
        if float(np.median(gray)) > 0.45:
            brown = _brown_share(scaled)
            if brown > 0.15:
                return StainDecision("ihc", f"brightfield RGB, {brown:.0%} of the tissue brown (DAB)")
            return StainDecision("he", f"brightfield RGB, {brown:.0%} of the tissue brown (no DAB)")
        he_share = _he_tissue_share(scaled)
        if float(np.median(gray)) > 0.2 and he_share > 0.6:
            return StainDecision(
                "he", f"dense brightfield tissue, {he_share:.0%} of the pixels H&E pink/purple"
            )
        raise InputError(
            "cannot determine the stain: a dark colour image (multi-channel fluorescence?); "
            "pass --stain fluo with --channel N for the nuclear channel, or --stain he|ihc|phase",
            path=path,
        )
    gray = plane[..., :3].max(axis=-1) if plane.ndim == 3 else plane  # a one-channel RGB: that channel
    rel = _rel_background(gray)
    if rel < 0.2:
        return StainDecision("fluo", f"dark background (at {rel:.0%} of the range)")
    if rel < 0.75:
        return StainDecision("phase", f"grey background (at {rel:.0%} of the range)")
    # grey brightfield (bright glass, dark nuclei; e.g. the DSB 2018 grey brightfield images): the
    # brightfield path inverts a grey plane, so nuclei become bright on dark as the nets read them
    return StainDecision(
        "he", f"grey brightfield: bright background (at {rel:.0%} of the range), dark nuclei"
    )


def nuclear_plane(plane: np.ndarray, stain: str, *, he_plane: str = HE_PLANES[0]) -> np.ndarray:
    """The (H, W) float32 plane the net reads, in raw units (before normalisation). ``he_plane``:
    what an RGB ``he`` image becomes (``hematoxylin`` or ``optical_density``, as the weights say);
    ``ihc`` always uses the hematoxylin channel (DAB is dense too and must not read as nuclei)."""
    if plane.ndim == 3:
        if stain in BRIGHTFIELD and not _is_gray_rgb(plane):
            if stain == "he" and he_plane == "optical_density":
                return optical_density(plane)
            return hematoxylin(plane)
        from skimage.color import rgb2gray

        plane = rgb2gray(plane[..., :3].astype(np.float32)).astype(np.float32, copy=False)
    if stain in BRIGHTFIELD:  # a grey brightfield plane: dark nuclei on bright glass
        return (float(plane.max(initial=0)) - plane).astype(np.float32)
    return plane.astype(np.float32, copy=False)


def percentile_normalise(plane: np.ndarray, *, low: float = 1.0, high: float = 99.8) -> np.ndarray:
    """Percentile-normalise to about [0, 1]; constant planes (all-zero images) become all zero."""
    plane = plane.astype(np.float32, copy=False)
    lo, hi = np.percentile(_sample(plane), [low, high])
    # constant up to float precision, relative to the values' own scale: a float image in small units
    # (values about 1e-9 and below) is not constant, it was returned all zero (0 cells) before
    if hi - lo <= 1e-6 * max(abs(hi), abs(lo)):
        return np.zeros_like(plane)
    return ((plane - lo) / (hi - lo)).astype(np.float32)


def noise_sigma(x: np.ndarray) -> float:
    """Robust noise level: MAD of the high-pass (x - gaussian(x, 1)) over the darker half (background)."""
    from scipy import ndimage as ndi

    x = _sample(x).astype(np.float32)
    high = x - ndi.gaussian_filter(x, 1)
    smooth = ndi.gaussian_filter(x, 2)
    sel = high[smooth <= np.percentile(smooth, 50)]
    if sel.size == 0:
        return 0.0
    mad = 1.4826 * float(np.median(np.abs(sel - np.median(sel))))
    return mad if mad > 0 else float(sel.std())  # quantised (8-bit) data: MAD can be 0


def local_normalise(plane: np.ndarray, *, window: int = LOCAL_WINDOW, snr: float = LOCAL_SNR) -> np.ndarray:
    """Bright objects on dark: (x - local background) / (local peak - local background), in [0, 1.2].

    After the percentile normalisation: the local background is the minimum of the lightly smoothed
    plane over ``BACKGROUND_WINDOW``; the local peak a grey closing (max then min) over ``window``,
    smoothed with sigma window / 8. The closing, unlike a blurred maximum, does not spread a saturated
    nucleus's peak onto dim neighbours beyond its own window. The denominator never drops below
    ``snr`` x the noise level, so empty regions and noise are not stretched to full contrast, while a
    dim nucleus 1 % as bright as a saturated one (at 30 x the noise) still reaches the full range.
    """
    from scipy import ndimage as ndi

    x = percentile_normalise(plane)
    if not x.any():
        return x
    background = ndi.minimum_filter(ndi.gaussian_filter(x, 2), size=BACKGROUND_WINDOW)
    peak = ndi.gaussian_filter(ndi.grey_closing(x, size=(window, window)), window / 8)
    floor = max(snr * noise_sigma(x), LOCAL_MIN_FLOOR)
    out = (x - background) / np.maximum(peak - background, floor)
    return np.clip(out, 0.0, 1.2).astype(np.float32)


def normalise_for_stain(plane: np.ndarray, stain: str, *, local: bool = True) -> np.ndarray:
    """What the net reads: local contrast for fluorescence-like planes (fluo, he, ihc), percentile
    normalisation for phase contrast (its grey background and halo are the signal). ``local=False``
    (weights trained so, see :func:`uses_local_contrast`): percentile normalisation for every stain."""
    if stain == "phase" or not local:
        return percentile_normalise(plane)
    return local_normalise(plane)


def uses_local_contrast(normalisation: dict | None) -> bool:
    """Whether weights were trained on locally contrast-normalised planes (the default, and what every
    weights file without the ``local_contrast`` key was trained on). The local stretch lifts dim nuclei
    but also background noise and brightfield stroma; the DSB 2018 real-data weights use percentiles."""
    return bool((normalisation or {}).get("local_contrast", True))


def prepare_plane(
    plane: np.ndarray,
    stain: str = "auto",
    *,
    path: object = None,
    local: bool = True,
    he_plane: str = HE_PLANES[0],
) -> tuple[np.ndarray, StainDecision]:
    """Raw plane (gray or RGB) -> (normalised nuclear plane, stain decision): what training and
    inference both feed the net, so that user-trained weights see at inference what they saw."""
    decision = detect_stain(plane, path=path) if stain == "auto" else StainDecision(stain, "given")
    nuclear = nuclear_plane(plane, decision.stain, he_plane=he_plane)
    return normalise_for_stain(nuclear, decision.stain, local=local), decision
