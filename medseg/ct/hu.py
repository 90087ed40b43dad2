"""Are the decoded CT slices in Hounsfield units? The rescale check of every CT reader.

Why: pydicom applies RescaleSlope/RescaleIntercept only when BOTH are present, so a CT image whose
anonymiser or exporter dropped one or both of them (Type 1 in the CT Image module; in an Enhanced CT
the Pixel Value Transformation functional group) decodes to raw stored values: on most scanners
HU + 1024, air at about 0 instead of -1000. Converted, measured and written as HU without a word,
that is a silently wrong series (and wrong LAA-950 / sharpness numbers). So:

- one of the two present without the other: refused (the stored values cannot be turned into HU);
- both absent (and no Modality LUT): the values are taken as HU only when the slice holds air
  (some pixel below -200); a slice without any air cannot be HU (a CT slice always shows the air
  around or inside the patient) and is refused, naming the file;
- both absent and the values look like HU: a warning in the result.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from medseg.errors import InputError

AIR_SEEN_HU = -200.0  # a slice whose lowest value is above this shows no air: not HU
CT_MAX_HU = 32767.0  # no CT scale (extended ones end near 30,700 HU) goes above: wrapped negative values
WRAPPED_FRACTION = 1e-3  # of a slice's pixels above CT_MAX_HU: signed data read as unsigned
NO_RESCALE_WARNING = (
    "no RescaleSlope/RescaleIntercept (0028,1053/0028,1052) in the input: its stored values are "
    "taken as HU (they include air, so this looks right; check a few HU values)"
)


def _present(ds, keyword: str) -> bool:
    value = ds.get(keyword)
    return value is not None and str(value).strip() != ""


def check_hu(ds, hu: np.ndarray, path: Path, frame: int | None = None) -> str | None:
    """Refuse (InputError naming ``path``) a decoded slice that is not in HU because its rescale is
    missing; return a warning when the rescale is missing but the values look like HU, else None."""
    _check_wrapped(hu, path, frame, ds)
    if "ModalityLUTSequence" in ds:
        return None
    slope, intercept = _present(ds, "RescaleSlope"), _present(ds, "RescaleIntercept")
    where = f"frame {frame}: " if frame else ""
    if slope and intercept:
        return None
    if slope != intercept:
        has, lacks = ("RescaleSlope", "RescaleIntercept") if slope else ("RescaleIntercept", "RescaleSlope")
        raise InputError(
            f"{where}{has} is present but {lacks} is missing: the stored values cannot be turned into "
            "Hounsfield units (a CT image needs both; restore the missing one, often slope 1 / "
            "intercept -1024)",
            path=path,
        )
    low = float(np.min(hu)) if hu.size else float("nan")
    if not low < AIR_SEEN_HU:
        raise InputError(
            f"{where}no RescaleSlope/RescaleIntercept and no pixel below {AIR_SEEN_HU:g} (lowest "
            f"{low:g}): these are raw stored values, not Hounsfield units (air would be about -1000 HU); "
            "the anonymiser or exporter removed the rescale: restore it (often intercept -1024)",
            path=path,
        )
    return NO_RESCALE_WARNING


def _check_wrapped(hu: np.ndarray, path: Path, frame: int | None = None, ds=None) -> None:
    """Refuse CT numbers above any CT scale in more than a few pixels: negative values of signed data
    read as large unsigned ones (PixelRepresentation (0028,0103) says unsigned), or a wrapped volume."""
    above = int(np.count_nonzero(hu > CT_MAX_HU))
    if above and above >= WRAPPED_FRACTION * hu.size:
        where = f"frame {frame}: " if frame else ""
        unsigned = ds is not None and int(ds.get("PixelRepresentation", 0) or 0) == 0
        cause = (
            "the header says unsigned pixels (PixelRepresentation 0) for signed data, so negative values "
            "read as large ones"
            if unsigned
            else "negative values wrapped around to large ones"
        )
        raise InputError(
            f"{where}{100.0 * above / hu.size:.0f} % of the pixels are above {CT_MAX_HU:g} HU (highest "
            f"{float(hu.max()):g}), beyond any CT scale: {cause}; fix the header or the export",
            path=path,
        )


def checked_slices(series, warnings: list[str] | None = None) -> Iterator[tuple[object, np.ndarray]]:
    """:func:`medseg.io.dicom.iter_slices` with :func:`check_hu` on every slice; a warning (once) goes
    to ``warnings``."""
    from medseg.io.dicom import iter_slices

    for index, (ds, hu) in enumerate(iter_slices(series)):
        warning = check_hu(ds, hu, series.files[index], series.frame_of(index))
        if warning and warnings is not None and warning not in warnings:
            warnings.append(warning)
        yield ds, hu


def read_hu_series(series):
    """:func:`medseg.io.dicom.read_series` with the rescale check: (float32 HU volume, VolumeMeta)."""
    volume = np.empty((len(series.files), series.rows, series.columns), np.float32)
    meta = series.meta()
    meta.extra["positions"] = list(series.positions)  # uneven slices: each one's place (QA alignment)
    for i, (_ds, hu) in enumerate(checked_slices(series, meta.warnings)):
        volume[i] = hu
    return volume, meta


def check_first_slice(series) -> str | None:
    """Pre-flight: decode the series' first slice only and check it (see :func:`check_hu`)."""
    warnings: list[str] = []
    for _ in checked_slices(series, warnings):
        break
    return warnings[0] if warnings else None


def read_hu_volume(path: Path, warnings: list[str] | None = None):
    """:func:`medseg.io.volume.read_volume_sitk` for a CT volume file, refused (InputError) when it is
    not in HU: values above any CT scale, or no air (nothing below -200) and the values where HU + 1024
    puts air and tissue (a converter dropped the rescale). No air otherwise (a crop inside the body)
    is taken as HU, with a warning to ``warnings``."""
    from medseg.io.volume import read_volume_sitk

    volume, meta = read_volume_sitk(path)
    _check_wrapped(volume, path)
    low = float(volume.min()) if volume.size else float("nan")
    if low < AIR_SEEN_HU:
        return volume, meta

    def share(lo: float, hi: float = np.inf) -> float:
        return float(np.count_nonzero((volume >= lo) & (volume <= hi))) / volume.size

    # HU + 1024: soft tissue at 900-1200, or air at 0-100 around a body at 900 and more
    shifted = share(900, 1200) >= 0.1 or (share(0, 100) >= 0.5 and share(900) >= 0.01)
    if shifted or not np.isfinite(low):
        raise InputError(
            f"no voxel below {AIR_SEEN_HU:g} (lowest {low:g}) and tissue near +1000: these are not "
            "CT numbers in Hounsfield units (air is about -1000 HU); a volume stored as HU + 1024 needs "
            "1024 subtracted first, or give the DICOM series",
            path=path,
        )
    warning = (
        f"{path.name}: no air in the volume (lowest {low:g} HU): taken as HU, e.g. a crop inside the "
        "body; if it stores HU + 1024, subtract 1024 first"
    )
    meta.warnings.append(warning)
    if warnings is not None:
        warnings.append(warning)
    return volume, meta
