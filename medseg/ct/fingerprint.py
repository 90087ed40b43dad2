"""Does this series look like its kernel?  A measured sharpness/noise fingerprint of a CT series.

Kernel names are vendor-specific (Siemens B30f/Br40/Qr40, Philips B/C/UB/YA, GE STANDARD/BONE,
Canon FC13/FC51...), so whether a series "looks like" a smooth or a sharp kernel is measured from
the pixels, never looked up from its name. Up to 16 evenly spaced slices are measured:

* ``noise_sd_hu`` -- noise SD in the most uniform soft-tissue patches: ~13 mm patches lying wholly
  in the body where the 2 mm local mean is in [-100, 150] HU, ranked by variance; the lowest
  quarter (4 to 400 patches) is plane-detrended and the median SD kept, so anatomy edges do not
  count. Sharp kernels amplify quantum noise: B70f has ~5x the noise of B30f at the same dose.
* ``nps_ratio`` -- the shape of the noise power spectrum (as in AAPM TG-233) of those patches:
  mean power at 0.35-0.5 cycles/mm over mean power at 0.08-0.2 cycles/mm. Independent of dose
  (the noise amplitude cancels out); sharp kernels push noise to high frequencies.
* ``hf_ratio`` -- the same band ratio for the radial 2-D power spectrum of the body region (the
  image times a 2 mm-smoothed body mask, summed over slices): edges of bone, vessels and skin plus
  noise, so it follows the kernel's MTF as well as its noise.

Out-of-field padding (<= -1500 HU: -2048, -3024...) counts as air; air outside the body is
tapered off the spectrum and never enters a noise patch. Frequencies are in cycles/mm and both
bands lie below the Nyquist frequency of pixels up to 1 mm, so the pixel size hardly changes the
answer (synthetic B30f: 1.01 / 1.00 / 0.99 at 0.5 / 0.7 / 0.9 mm; B70f 3.9 / 3.7 / 3.4, whose
noise really does depend on the pixel size).

``sharpness`` is the geometric mean of the available features relative to a B30f-like reference,
as amplitudes (``(value / REFERENCE) ** EXPONENT``), so B30f is about 1 and each Siemens step
multiplies it by 1.5-2.5 (synthetic, 18 HU: B10f 0.5, B30f 0.9, B50f 2.3, B70f 3.4). Real Philips
head phantom, one acquisition: standard kernel UB (iDose) 0.46, bone kernel YA 1.55.

Absolute sharpness also depends on dose, anatomy and iterative reconstruction; the robust signal
is *relative*, between series of one acquisition (input, converted output, reference):
:func:`compare_fingerprints`, :func:`check_kernel_claims` and :func:`kernel_check_report`.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass

import numpy as np

PADDING_HU = -1500.0  # values at or below are out-of-field padding (-2048, -3024, -3072...)
SOFT_TISSUE_HU = (-100.0, 150.0)
BODY_HU = -500.0  # body: regions above this, filled (lungs, airways, air inside head phantoms)
MID_BAND = (0.08, 0.20)  # cycles/mm
HIGH_BAND = (0.35, 0.50)  # cycles/mm (<= Nyquist for pixels up to 1 mm)
PATCH_MM = 13.0  # side of a noise patch
MAX_SLICES = 16

# Feature values of a B30f-like reconstruction (synthetic phantom at 18 HU soft-tissue noise):
# sharpness = geometric mean over available features of (value / reference) ** exponent.
REFERENCE = {"noise_sd_hu": 16.0, "nps_ratio": 0.45, "hf_ratio": 0.008}
EXPONENT = {"noise_sd_hu": 1.0, "nps_ratio": 0.5, "hf_ratio": 0.5}

# sharpness_class: < 0.7 smooth, < 1.6 medium, < 3.0 sharp, else very sharp. On the synthetic
# phantom (B30f noise 9-30 HU) B10f measures 0.41-0.61, B30f 0.77-1.18, B50f 1.84-2.79,
# B70f 2.80-4.62 (B70f at the lowest noise reads as "sharp").
CLASS_THRESHOLDS = ((0.7, "smooth"), (1.6, "medium"), (3.0, "sharp"), (math.inf, "very sharp"))
CLASSES = tuple(name for _, name in CLASS_THRESHOLDS)
# Relative checks between series of one acquisition. Adjacent Siemens steps differ by a sharpness
# ratio of 1.5-2.5 (B30f/B10f ~1.9, B50f/B30f ~2.4, B70f/B50f ~1.5), so:
CLEAR_RATIO = 1.25  # a ratio beyond this is a real difference (input vs reference/output)
MUCH_RATIO = 1.6  # converted output vs reference: beyond this they are not the same kernel


@dataclass(frozen=True)
class KernelFingerprint:
    """Measured sharpness/noise signature of one CT series (see the module docstring)."""

    sharpness: float
    noise_sd_hu: float  # NaN where no uniform soft tissue was found
    nps_ratio: float  # NaN where no uniform soft tissue was found
    hf_ratio: float  # NaN where no body was found
    slices: int  # slices measured
    noise_patches: int
    pixel_mm: float

    def to_dict(self) -> dict:
        return {
            k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in asdict(self).items()
        }

    def describe(self) -> str:
        def fmt(v, spec):
            return format(v, spec) if math.isfinite(v) else "n/a"

        return (
            f"sharpness {fmt(self.sharpness, '.2f')} ({sharpness_class(self)}; noise "
            f"{fmt(self.noise_sd_hu, '.1f')} HU, noise spectrum ratio {fmt(self.nps_ratio, '.2f')}, "
            f"image spectrum ratio {fmt(self.hf_ratio, '.3f')})"
        )


def _odd(n: float, minimum: int = 3) -> int:
    n = max(minimum, int(round(n)))
    return n if n % 2 else n + 1


def _span_fill(mask: np.ndarray) -> np.ndarray:
    """Pixels enclosed by ``mask`` both along their row and along their column (a cheap hull that
    also fills regions whose outline has gaps, such as a skull cut between sutures)."""

    def inside(m: np.ndarray, axis: int) -> np.ndarray:
        fwd = np.maximum.accumulate(m, axis=axis)
        back = np.flip(np.maximum.accumulate(np.flip(m, axis=axis), axis=axis), axis=axis)
        return fwd & back

    return inside(mask, 0) & inside(mask, 1)


def _box(mask: np.ndarray, size: int, op: str) -> np.ndarray:
    """Binary dilation ('grow') or erosion ('shrink') by a square box, via a box filter (fast)."""
    from scipy import ndimage as ndi

    mean = ndi.uniform_filter(
        mask.astype(np.float32), size, mode="constant", cval=0.0 if op == "grow" else 1.0
    )
    return mean > 1e-3 if op == "grow" else mean > 1.0 - 1e-3


def _body_mask(img: np.ndarray, px: float) -> np.ndarray:
    """Body region of a slice with pixels of ``px`` mm: above -500 HU, closed over ~6 mm gaps;
    components that are only thin shells (head rests, table tops, blankets: little left after a
    ~4 mm opening) or under 5 % of the largest are dropped; the rest is filled along rows and
    columns (lungs, airways, air inside head phantoms, skulls cut open between sutures)."""
    from scipy import ndimage as ndi

    above = ndi.uniform_filter(img, 3) > BODY_HU
    gap = _odd(6.0 / px)
    closed = _box(_box(above, gap, "grow"), gap, "shrink") | above
    labels, n = ndi.label(closed)
    if n == 0:
        return closed
    thin = _odd(4.0 / px)
    solid = _box(_box(above, thin, "shrink"), thin, "grow") & above
    score = np.bincount(labels[solid], minlength=n + 1)
    score[0] = 0
    keep = np.nonzero((score > 0) & (score >= 0.05 * score.max()))[0]
    body = _span_fill(np.isin(labels, keep))
    return ndi.binary_fill_holes(_box(_box(body, gap, "grow"), gap, "shrink") | body)


def _band_masks(shape: tuple[int, int], spacing_yx: tuple[float, float], *, half: bool = False):
    """Boolean (mid, high) band masks on an FFT grid (``half``: the rfft2 grid)."""
    fy = np.fft.fftfreq(shape[0], d=spacing_yx[0])
    fx = np.fft.rfftfreq(shape[1], d=spacing_yx[1]) if half else np.fft.fftfreq(shape[1], d=spacing_yx[1])
    f2 = fy[:, None] ** 2 + fx[None, :] ** 2
    return (
        (f2 >= MID_BAND[0] ** 2) & (f2 <= MID_BAND[1] ** 2),
        (f2 >= HIGH_BAND[0] ** 2) & (f2 <= HIGH_BAND[1] ** 2),
    )


@dataclass
class _Slice:
    """One measured slice: the HU image, its body mask, and the image binned to ~1 mm with its
    soft-tissue mask (to find uniform patches cheaply)."""

    img: np.ndarray
    body: np.ndarray
    coarse: np.ndarray
    soft_coarse: np.ndarray
    factor: int

    @classmethod
    def build(cls, img: np.ndarray, spacing_yx: tuple[float, float]) -> _Slice | None:
        from scipy import ndimage as ndi

        px = min(spacing_yx)
        c = max(1, int(1.0 / px))  # masks on a ~1 mm grid: 4x cheaper for 0.45 mm pixels
        h, w = (img.shape[0] // c) * c, (img.shape[1] // c) * c
        coarse = img[:h, :w].reshape(h // c, c, w // c, c).mean(axis=(1, 3)) if c > 1 else img
        body_c = _body_mask(coarse, px * c)
        if body_c.sum() < 0.01 * body_c.size:
            return None
        local = ndi.uniform_filter(coarse, _odd(2.0 / (px * c)))
        soft_c = (local >= SOFT_TISSUE_HU[0]) & (local <= SOFT_TISSUE_HU[1]) & body_c
        body = np.repeat(np.repeat(body_c, c, axis=0), c, axis=1) if c > 1 else body_c
        body = np.pad(body, ((0, img.shape[0] - h), (0, img.shape[1] - w)), mode="edge")
        return cls(img, body, coarse.astype(np.float64), soft_c, c)

    def candidates(self, size: int) -> tuple[np.ndarray, np.ndarray]:
        """Centres (k, 2) of all-soft-tissue patches of odd side ``size`` (full-resolution pixels,
        on a half-overlapping grid) and the variances of the binned patches (to rank uniformity)."""
        from scipy import ndimage as ndi

        c = self.factor
        size_c = _odd(size / c + (1 if c > 1 else 0))
        full = ndi.minimum_filter(self.soft_coarse, size=size_c, mode="constant", cval=0)
        stride = max(1, size_c // 2)
        grid = np.zeros_like(full)
        grid[size_c // 2 :: stride, size_c // 2 :: stride] = True
        at = np.argwhere(full & grid)
        centres = at * c + c // 2
        half = size // 2
        inside = ((centres >= half) & (centres + half < np.array(self.img.shape))).all(axis=1)
        at, centres = at[inside], centres[inside]
        if len(at) == 0:
            return centres, np.empty(0)
        mean = ndi.uniform_filter(self.coarse, size_c)[at[:, 0], at[:, 1]]
        mean2 = ndi.uniform_filter(self.coarse**2, size_c)[at[:, 0], at[:, 1]]
        return centres, mean2 - mean**2


def _body_spectrum(sl: _Slice, spacing_yx) -> tuple[float, float]:
    """(mean power in the mid band, in the high band) of the apodised body region."""
    from scipy import ndimage as ndi

    dy, dx = spacing_yx
    margin = _odd(6.0 / min(dy, dx))
    ys = np.nonzero(sl.body.any(axis=1))[0]
    xs = np.nonzero(sl.body.any(axis=0))[0]
    y0, y1 = max(0, ys[0] - margin), min(sl.img.shape[0], ys[-1] + margin + 1)
    x0, x1 = max(0, xs[0] - margin), min(sl.img.shape[1], xs[-1] + margin + 1)
    crop = sl.img[y0:y1, x0:x1].astype(np.float64)
    weight = ndi.gaussian_filter(sl.body[y0:y1, x0:x1].astype(np.float64), (2.0 / dy, 2.0 / dx), truncate=3.0)
    mean = float((crop * weight).sum() / weight.sum())
    power = np.abs(np.fft.rfft2((crop - mean) * weight)) ** 2 * (dy * dx / float((weight**2).sum()))
    mid, high = _band_masks(crop.shape, spacing_yx, half=True)
    return float(power[mid].mean()), float(power[high].mean())


def _noise(slices: list[_Slice], spacing_yx) -> tuple[float, float, int]:
    """(noise SD in HU, NPS high/mid band ratio, number of patches) from the most uniform
    soft-tissue patches: the lowest-variance quarter (at least 4, at most 400) of all candidates."""
    tries = []
    for patch_mm in (PATCH_MM, PATCH_MM * 0.65):  # smaller patches where the soft tissue is scant
        size = _odd(patch_mm / min(spacing_yx), minimum=7)
        tries.append((size, [sl.candidates(size) for sl in slices]))
        if sum(len(c) for c, _ in tries[-1][1]) >= 4:
            break
    size, found = max(tries, key=lambda t: (sum(len(c) for c, _ in t[1]) >= 4, sum(len(c) for c, _ in t[1])))
    if sum(len(c) for c, _ in found) == 0:
        return math.nan, math.nan, 0
    index = np.concatenate([np.full(len(c), i) for i, (c, _) in enumerate(found)])
    centres = np.concatenate([c for c, _ in found])
    var = np.concatenate([v for _, v in found])
    keep = min(len(var), max(4, min(int(np.ceil(0.25 * len(var))), 400)))
    chosen = np.argsort(var, kind="stable")[:keep]
    offsets = np.arange(size) - size // 2
    patches = (
        np.stack(
            [
                slices[index[j]].img[centres[j, 0] + offsets[:, None], centres[j, 1] + offsets[None, :]]
                for j in chosen
            ]
        )
        .astype(np.float64)
        .reshape(len(chosen), -1)
    )
    yy, xx = np.meshgrid(offsets, offsets, indexing="ij")
    design = np.stack([np.ones(size * size), yy.ravel(), xx.ravel()], axis=1)
    residual = patches - (patches @ np.linalg.pinv(design).T) @ design.T  # plane-detrended
    noise_sd = float(np.sqrt(np.median(residual.var(axis=1))))
    nps = (np.abs(np.fft.fft2(residual.reshape(-1, size, size))) ** 2).mean(axis=0)
    mid, high = _band_masks((size, size), spacing_yx)
    ratio = float(nps[high].mean() / nps[mid].mean()) if nps[mid].mean() > 0 else math.nan
    return noise_sd, ratio, len(chosen)


def combine_sharpness(noise_sd_hu: float, nps_ratio: float, hf_ratio: float) -> float:
    """Geometric mean over the finite features of ``(value / REFERENCE) ** EXPONENT``."""
    values = {"noise_sd_hu": noise_sd_hu, "nps_ratio": nps_ratio, "hf_ratio": hf_ratio}
    logs = [EXPONENT[k] * math.log(v / REFERENCE[k]) for k, v in values.items() if math.isfinite(v) and v > 0]
    return float(math.exp(sum(logs) / len(logs))) if logs else math.nan


def kernel_fingerprint(
    volume_hu: np.ndarray, spacing_yx: tuple[float, float] = (1.0, 1.0), *, max_slices: int = MAX_SLICES
) -> KernelFingerprint:
    """Fingerprint a (z, y, x) (or (y, x)) HU volume from up to ``max_slices`` evenly spaced slices.

    ``spacing_yx`` is the pixel size (dy, dx) in mm; a (dz, dy, dx) triple such as
    ``VolumeMeta.spacing`` is accepted too. Out-of-field padding (<= -1500 HU) and non-finite
    values are treated as air; air outside the body is excluded from the noise measurement and
    tapered off in the spectrum. Takes ~0.1 s for a 512x512 slice, so under 2 s for any series.
    """
    vol = np.asarray(volume_hu)
    if vol.ndim == 2:
        vol = vol[None]
    if vol.ndim != 3 or vol.shape[0] == 0 or min(vol.shape[1:]) < 16:
        raise ValueError(f"expected a (z, y, x) volume of at least 16x16 pixels, got shape {vol.shape}")
    spacing_yx = tuple(spacing_yx)
    if len(spacing_yx) == 3:
        spacing_yx = spacing_yx[1:]
    if len(spacing_yx) != 2:
        raise ValueError(f"spacing must be (dy, dx) or (dz, dy, dx) in mm, got {spacing_yx}")
    dy, dx = (float(s) for s in spacing_yx)
    if not (dy > 0 and dx > 0):
        raise ValueError(f"pixel spacing must be positive, got {spacing_yx}")
    spacing = (dy, dx)
    picks = np.unique(np.linspace(0, vol.shape[0] - 1, min(vol.shape[0], max_slices)).round().astype(int))
    slices: list[_Slice] = []
    mid_sum = high_sum = 0.0
    for z in picks:
        img = np.array(vol[z], dtype=np.float32)
        img[~np.isfinite(img) | (img <= PADDING_HU)] = -1000.0
        sl = _Slice.build(img, spacing)
        if sl is None:
            continue
        mid, high = _body_spectrum(sl, spacing)
        mid_sum, high_sum = mid_sum + mid, high_sum + high
        slices.append(sl)
    hf_ratio = high_sum / mid_sum if mid_sum > 0 else math.nan
    noise_sd, nps_ratio, patches = _noise(slices, spacing) if slices else (math.nan, math.nan, 0)
    return KernelFingerprint(
        sharpness=combine_sharpness(noise_sd, nps_ratio, hf_ratio),
        noise_sd_hu=noise_sd,
        nps_ratio=nps_ratio,
        hf_ratio=hf_ratio,
        slices=len(slices),
        noise_patches=patches,
        pixel_mm=float(math.sqrt(dy * dx)),
    )


def sharpness_class(fp: KernelFingerprint | float) -> str:
    """'smooth' (< 0.7), 'medium' (< 1.6), 'sharp' (< 3.0) or 'very sharp'; 'unknown' when unmeasured.

    Calibrated on the synthetic Siemens-like phantom: B10f smooth, B30f medium, B50f sharp,
    B70f very sharp. Absolute values also depend on dose and iterative reconstruction, so prefer
    the relative checks of :func:`check_kernel_claims`.
    """
    value = fp.sharpness if isinstance(fp, KernelFingerprint) else float(fp)
    if not math.isfinite(value):
        return "unknown"
    return next(name for limit, name in CLASS_THRESHOLDS if value < limit)


def compare_fingerprints(a: KernelFingerprint, b: KernelFingerprint) -> float:
    """Sharpness ratio a / b: > 1 means ``a`` looks sharper than ``b`` (NaN if either is unmeasured)."""
    if not (math.isfinite(a.sharpness) and math.isfinite(b.sharpness)) or b.sharpness <= 0:
        return math.nan
    return a.sharpness / b.sharpness


# Siemens-style names: a prefix (B, H, C, D, I, J, Q, S, T, U with an optional second letter:
# Br, Bv, Bl, Bf, Hr, Qr, Ur...), two digits that grow with sharpness, an optional suffix
# (f, s, h, u, d...), optionally an iterative strength ("Br40d\\3", "I30f 3").
_SIEMENS = re.compile(r"^([BCDHIJQSTU][A-Za-z]?)(\d{2})([A-Za-z]{0,2})(?:\s*[\\/ ,]\s*\d)?$")


def nominal_sharpness_order(name: str | None) -> int | None:
    """Rank of a Siemens-style kernel name by its nominal sharpness (the number in it: B10f -> 10,
    Br40d -> 40, Qr40 -> 40, Hr38 -> 38, 'B70f\\3' -> 70); None for names that do not encode
    sharpness this way (Philips B/C/UB/YA, GE STANDARD/BONE, Canon FC13...)."""
    if name is None:
        return None
    text = str(name).strip()
    if len(text) >= 2:
        text = text[0].upper() + text[1:]  # 'b30f' -> 'B30f'
    match = _SIEMENS.match(text)
    return int(match.group(2)) if match else None


def nominal_class(name: str | None) -> str | None:
    """Expected :func:`sharpness_class` of a Siemens-style name (<= 25 smooth, <= 44 medium,
    <= 64 sharp, else very sharp); None for other vendors."""
    order = nominal_sharpness_order(name)
    if order is None:
        return None
    return "smooth" if order <= 25 else "medium" if order <= 44 else "sharp" if order <= 64 else "very sharp"


def expected_direction(
    claimed_from: str | None, claimed_to: str | None, expect: str | None = None
) -> str | None:
    """'smoother', 'sharper' or None: from the names when both are Siemens-style, else ``expect``."""
    if expect not in (None, "smoother", "sharper"):
        raise ValueError(f"expect must be 'smoother', 'sharper' or None, not {expect!r}")
    a, b = nominal_sharpness_order(claimed_from), nominal_sharpness_order(claimed_to)
    if a is not None and b is not None:
        return "smoother" if b < a else "sharper" if b > a else None
    return expect


def _measured(fp: KernelFingerprint | None) -> bool:
    return fp is not None and math.isfinite(fp.sharpness) and fp.sharpness > 0


def check_kernel_claims(
    input_fp: KernelFingerprint,
    claimed_from: str | None,
    output_fp: KernelFingerprint | None = None,
    reference_fp: KernelFingerprint | None = None,
    claimed_to: str | None = None,
    *,
    expect: str | None = None,
) -> list[str]:
    """Warnings, in words, where the series do not look like the kernels they are claimed to be.

    ``input_fp`` is the series given as ``claimed_from``; ``output_fp`` its converted output;
    ``reference_fp`` the series given as the ``claimed_to`` reference. The direction of the
    conversion comes from the names when both are Siemens-style (B50f -> B30f: smoother), else
    from ``expect`` ('smoother' / 'sharper' / None). Checks, all relative except the last:

    * the converted output must be smoother (sharper) than the input, by a sharpness ratio of
      ``CLEAR_RATIO`` (or at all, for Siemens names less than 20 apart, e.g. B40f -> B30f);
    * the reference must be smoother (sharper) than the input by the same margin: a B70f series
      given as the B30f reference of a B50f input is sharper than the input;
    * the reference and the converted output must agree within ``MUCH_RATIO`` (a mismatch is
      blamed on the reference when it also failed the previous check or no direction is known);
    * Siemens-style names only: a series whose measured :func:`sharpness_class` is two classes
      away from its name's (a "B70f" that looks smooth) -- unless the reference was already flagged.

    A series whose sharpness could not be measured gets one warning and no checks.
    An empty list means nothing looked wrong.
    """
    src, dst = claimed_from or "the source kernel", claimed_to or "the target kernel"
    direction = expected_direction(claimed_from, claimed_to, expect)
    a, b = nominal_sharpness_order(claimed_from), nominal_sharpness_order(claimed_to)
    margin = 1.0 if a is not None and b is not None and abs(a - b) < 20 else CLEAR_RATIO
    warnings: list[str] = []
    for label, fp in (("input", input_fp), ("converted output", output_fp), ("reference", reference_fp)):
        if fp is not None and not _measured(fp):
            warnings.append(
                f"could not measure the sharpness of the {label} series (no body or uniform soft "
                "tissue found): its kernel was not checked"
            )
    inp = input_fp if _measured(input_fp) else None
    out = output_fp if _measured(output_fp) else None
    ref = reference_fp if _measured(reference_fp) else None

    def vs(x: KernelFingerprint, y: KernelFingerprint) -> str:
        return f"sharpness {x.sharpness:.2f} vs {y.sharpness:.2f}"

    def wrong_way(x: KernelFingerprint, y: KernelFingerprint) -> str | None:
        """How ``x`` fails to be ``direction`` than ``y`` ('sharper than', 'no smoother than'...)."""
        ratio = compare_fingerprints(x, y)
        if direction == "smoother" and ratio > 1 / margin:
            return "sharper than" if ratio >= CLEAR_RATIO else "no smoother than"
        if direction == "sharper" and ratio < margin:
            return "smoother than" if ratio <= 1 / CLEAR_RATIO else "no sharper than"
        return None

    output_bad = reference_bad = False
    if inp is not None and out is not None and direction is not None and (how := wrong_way(out, inp)):
        verb = "smooth" if direction == "smoother" else "sharpen"
        warnings.append(
            f"the converted output looks {how} the input ({vs(out, inp)}), but the {src} -> {dst} "
            f"conversion should {verb} it: check --from/--to and the model"
        )
        output_bad = True
    if inp is not None and ref is not None and direction is not None and (how := wrong_way(ref, inp)):
        warnings.append(
            f"the reference series looks {how} the input ({vs(ref, inp)}), but a {dst} reference "
            f"should be {direction} than a {src} input: is it really a {dst} reconstruction?"
        )
        reference_bad = True
    if out is not None and ref is not None:
        ratio = compare_fingerprints(ref, out)
        if ratio >= MUCH_RATIO or ratio <= 1 / MUCH_RATIO:
            ref_how, out_how = ("sharper", "smoother") if ratio > 1 else ("smoother", "sharper")
            if reference_bad or direction is None:
                tail = "" if reference_bad else ", or did the conversion miss it?"
                warnings.append(
                    f"the reference series looks much {ref_how} than the input's converted output "
                    f"({vs(ref, out)}): is it really a {dst} reconstruction{tail or '?'}"
                )
                reference_bad = True
            elif not output_bad:
                warnings.append(
                    f"the converted output looks much {out_how} than the {dst} reference "
                    f"({vs(out, ref)}): the conversion missed the reference's sharpness, or the "
                    f"reference is not a {dst} reconstruction"
                )
    for label, fp, name in (
        ("input", inp, claimed_from),
        ("reference", None if reference_bad else ref, claimed_to),
    ):
        expected = nominal_class(name)
        if fp is None or expected is None:
            continue
        measured = sharpness_class(fp)
        if abs(CLASSES.index(measured) - CLASSES.index(expected)) >= 2:
            warnings.append(
                f"the {label} series looks {measured} (sharpness {fp.sharpness:.2f}), but {name} is a "
                f"{expected} kernel: is it really a {name} reconstruction?"
            )
    return warnings


def kernel_check_report(
    input_fp: KernelFingerprint,
    claimed_from: str | None,
    output_fp: KernelFingerprint | None = None,
    reference_fp: KernelFingerprint | None = None,
    claimed_to: str | None = None,
    *,
    expect: str | None = None,
) -> dict:
    """JSON-ready summary for a QA report: each series' fingerprint and class, the sharpness ratios
    between them, the expected direction and :func:`check_kernel_claims`' warnings."""

    def entry(fp: KernelFingerprint | None, kernel: str | None) -> dict | None:
        if fp is None:
            return None
        return {
            "kernel": kernel,
            **fp.to_dict(),
            "class": sharpness_class(fp),
            "nominal_class": nominal_class(kernel),
        }

    def ratio(x: KernelFingerprint | None, y: KernelFingerprint | None) -> float | None:
        value = compare_fingerprints(x, y) if x is not None and y is not None else math.nan
        return round(value, 3) if math.isfinite(value) else None

    return {
        "input": entry(input_fp, claimed_from),
        "converted": entry(output_fp, claimed_to),
        "reference": entry(reference_fp, claimed_to),
        "expected_direction": expected_direction(claimed_from, claimed_to, expect),
        "sharpness_ratio": {
            "converted_vs_input": ratio(output_fp, input_fp),
            "reference_vs_input": ratio(reference_fp, input_fp),
            "reference_vs_converted": ratio(reference_fp, output_fp),
        },
        "warnings": check_kernel_claims(
            input_fp, claimed_from, output_fp, reference_fp, claimed_to, expect=expect
        ),
    }
