"""QA measurements for kernel conversion: RMSE, automatic lung mask, LAA-950, Perc15, Bland-Altman."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

LAA_THRESHOLD_HU = -950.0
PADDING_MAX_HU = -1500.0  # at or below: out-of-field padding (-2048, -3024, PixelPaddingValue), never tissue
AIR_HU = -1000.0


def padding_mask(volume: np.ndarray) -> np.ndarray:
    """Out-of-field pixels: no body voxel reads below -1500 HU (air is -1000)."""
    return np.asarray(volume) <= PADDING_MAX_HU


def in_field(*volumes: np.ndarray) -> np.ndarray:
    """Voxels inside the reconstructed field of view of every volume."""
    mask = ~padding_mask(volumes[0])
    for volume in volumes[1:]:
        mask &= ~padding_mask(volume)
    return mask


def rmse(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Root-mean-square difference in HU (over ``mask`` when given)."""
    diff = np.asarray(a, np.float64) - np.asarray(b, np.float64)
    if mask is not None:
        diff = diff[mask]
    return float(np.sqrt(np.mean(diff * diff))) if diff.size else float("nan")


@dataclass
class LungMaskParams:
    """Parameters of :func:`lung_mask` (documented in docs/ct.md)."""

    threshold_hu: float = -400.0  # air/lung vs soft tissue, on the in-plane smoothed image
    smooth_sigma_px: float = 1.0
    airway_max_area_cm2: float = 6.0  # trachea/main bronchi: small mean cross-section ...
    airway_medial_fraction: float = 0.15  # ... and centred within this fraction of the body width
    min_component_fraction: float = 0.02  # drop air pockets smaller than 2 % of the largest lung


@dataclass
class Regions:
    """What :func:`segment_regions` finds in a (z, y, x) HU volume."""

    lungs: np.ndarray
    airways: np.ndarray
    body: np.ndarray  # the patient: largest non-air 3-D component, holes (lungs) filled slice by slice
    table: np.ndarray  # non-air objects outside the body (table, cushions, cables), slightly dilated
    padding: np.ndarray  # out-of-field pixels (<= -1500 HU)


def segment_regions(
    volume: np.ndarray, spacing_zyx: tuple[float, float, float], params: LungMaskParams | None = None
) -> Regions:
    """Body, table, out-of-field padding, lungs and central airways of a (z, y, x) HU volume.

    Padding is read as air before anything else (so the field-of-view edge is no edge). The body is
    the largest connected non-air object; other non-air objects (the table and what lies on it)
    are not the patient. Lungs: the in-plane smoothed image below the threshold, not connected to
    the image border (outside air) and enclosed by the body; the trachea/main bronchi are small in
    cross-section and medial; the lungs are the remaining large components. Holes (vessels) are
    filled slice by slice; nothing within 2 pixels of padding is lung.
    """
    from scipy import ndimage as ndi
    from skimage.segmentation import clear_border

    p = params or LungMaskParams()
    volume = np.asarray(volume, np.float32)
    padding = padding_mask(volume)
    filled = np.where(padding, np.float32(AIR_HU), volume) if padding.any() else volume
    smooth = ndi.gaussian_filter(filled, sigma=(0, p.smooth_sigma_px, p.smooth_sigma_px))
    air = smooth < p.threshold_hu
    # objects = non-air with their in-plane holes filled (a chest with its lungs, a skull with its
    # brain, a table with its foam core); the patient is the largest, the others are not the patient
    solid = np.stack([ndi.binary_fill_holes(~a) for a in air])
    objects, n_objects = ndi.label(solid)
    if n_objects:
        sizes = np.bincount(objects.ravel())
        sizes[0] = 0
        body = objects == int(np.argmax(sizes))
    else:
        body = np.zeros(volume.shape, bool)
    table = solid & ~body
    if table.any():
        table = ndi.binary_dilation(table, structure=np.ones((1, 5, 5), bool)) & ~body
    labels, _n = ndi.label(air & body)
    # air touching the in-plane image border is outside the body; the first and last slices are
    # not a border (the lungs continue beyond the scanned slab), hence the mask instead of buffer_size
    interior = np.zeros(volume.shape, bool)
    interior[:, 1:-1, 1:-1] = True
    inner = clear_border(labels, mask=interior)
    body_cols = np.flatnonzero(body.any(axis=(0, 1)))
    body_cx = (body_cols[0] + body_cols[-1]) / 2 if body_cols.size else volume.shape[2] / 2
    body_w = (body_cols[-1] - body_cols[0] + 1) if body_cols.size else volume.shape[2]
    pixel_cm2 = spacing_zyx[1] * spacing_zyx[2] / 100.0

    lungs = np.zeros(volume.shape, bool)
    airways = np.zeros(volume.shape, bool)
    candidates = []
    for idx, sl in enumerate(ndi.find_objects(inner), start=1):
        if sl is None:
            continue
        comp = inner[sl] == idx
        voxels = int(comp.sum())
        n_slices = int(comp.any(axis=(1, 2)).sum())
        mean_area = voxels / max(n_slices, 1) * pixel_cm2
        cx = sl[2].start + np.nonzero(comp)[2].mean()
        medial = abs(cx - body_cx) < p.airway_medial_fraction * body_w
        candidates.append((idx, sl, comp, voxels, mean_area < p.airway_max_area_cm2 and medial))
    largest = max((c[3] for c in candidates if not c[4]), default=0)
    for _idx, sl, comp, voxels, is_airway in candidates:
        if is_airway:
            airways[sl] |= comp
        elif voxels >= p.min_component_fraction * largest:
            lungs[sl] |= comp
    for z in range(lungs.shape[0]):
        lungs[z] = ndi.binary_fill_holes(lungs[z])
    lungs &= ~airways
    if padding.any():
        lungs &= ~ndi.binary_dilation(padding, structure=np.ones((1, 5, 5), bool))
    return Regions(lungs, airways, body, table, padding)


def rmse_region(regions: Regions, *volumes: np.ndarray, margin_px: int = 3) -> np.ndarray:
    """Where RMSE is measured: the patient (body outline grown by ``margin_px`` in-plane, so the skin
    edge counts) inside every volume's field of view, without the table. Out-of-field padding, the
    table and however much air surrounds the patient then do not change the number."""
    from scipy import ndimage as ndi

    size = 2 * margin_px + 1
    region = ndi.binary_dilation(regions.body, structure=np.ones((1, size, size), bool))
    return region & in_field(*volumes) & ~regions.table


def lung_mask(
    volume: np.ndarray, spacing_zyx: tuple[float, float, float], params: LungMaskParams | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Automatic lung mask of a (z, y, x) HU volume, and the airway mask removed from it
    (:func:`segment_regions`: out-of-field padding and the table never enter it)."""
    regions = segment_regions(volume, spacing_zyx, params)
    return regions.lungs, regions.airways


def laa_percent(volume: np.ndarray, mask: np.ndarray, threshold: float = LAA_THRESHOLD_HU) -> float:
    """Emphysema index: % of lung voxels with HU <= ``threshold`` (-950 HU by default)."""
    values = volume[mask]
    return float(100.0 * np.mean(values <= threshold)) if values.size else float("nan")


def perc15(volume: np.ndarray, mask: np.ndarray) -> float:
    """15th percentile of lung HU (lower = more emphysema)."""
    values = volume[mask]
    return float(np.percentile(values, 15)) if values.size else float("nan")


@dataclass
class BlandAltman:
    n: int
    bias: float
    sd: float
    loa_low: float
    loa_high: float
    icc: float = float("nan")  # ICC(A,1) of measured and reference (absolute agreement, single measures)

    def to_dict(self) -> dict:
        return asdict(self)


def bland_altman(measured, reference) -> BlandAltman:
    """Bias (mean of measured - reference), SD of the differences, 95 % limits of agreement and the
    ICC(A,1) of the exams where both values are finite."""
    measured, reference = np.asarray(measured, float), np.asarray(reference, float)
    both = np.isfinite(measured) & np.isfinite(reference)
    diff = measured[both] - reference[both]
    n = int(diff.size)
    bias = float(diff.mean()) if n else float("nan")
    sd = float(diff.std(ddof=1)) if n > 1 else float("nan")
    icc = icc_a1(np.stack([measured[both], reference[both]], axis=1))
    return BlandAltman(n, bias, sd, bias - 1.96 * sd, bias + 1.96 * sd, icc)


def icc_a1(ratings) -> float:
    """Intraclass correlation ICC(A,1) (McGraw & Wong 1996; Shrout & Fleiss 1979 ICC(2,1)).

    Two-way random effects, absolute agreement, single measures: how far one measurement can stand
    in for another, a systematic offset counting against it (unlike a correlation). ``ratings`` is
    (subjects n, measurements k), e.g. one row per exam of (converted, reference); needs n >= 2 and
    k >= 2 finite rows, else NaN. With mean squares of rows (MSR), columns (MSC) and error (MSE)
    of the two-way ANOVA: ``(MSR - MSE) / (MSR + (k - 1) MSE + k (MSC - MSE) / n)``. NaN when all
    values are equal (no variance to agree on).
    """
    y = np.asarray(ratings, float)
    if y.ndim != 2:
        raise ValueError(f"ratings must be (subjects, measurements), got shape {y.shape}")
    y = y[np.all(np.isfinite(y), axis=1)]
    n, k = y.shape
    if n < 2 or k < 2:
        return float("nan")
    grand = y.mean()
    ss_rows = k * float(np.sum((y.mean(axis=1) - grand) ** 2))
    ss_cols = n * float(np.sum((y.mean(axis=0) - grand) ** 2))
    ss_err = float(np.sum((y - grand) ** 2)) - ss_rows - ss_cols
    msr, msc, mse = ss_rows / (n - 1), ss_cols / (k - 1), ss_err / ((n - 1) * (k - 1))
    denominator = msr + (k - 1) * mse + k * (msc - mse) / n
    return float((msr - mse) / denominator) if denominator > 0 else float("nan")
