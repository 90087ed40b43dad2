"""Header checks of a DICOM series before any pixel is decoded (pre-flight of every CT/MR reader).

Why here: every command reads series through :func:`medseg.io.dicom.open_series`, so a value that
would make a result silently wrong (NaN or zero pixel spacing copied into the output, a rescale slope
that flips HU, a transfer syntax nobody installed decodes) is refused once, naming the field and the
file, before the work starts. What is odd but usable (gantry tilt) becomes a warning in words.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from medseg.errors import InputError

# transfer syntaxes pydicom 3.0 has no name for (DICOM PS3.6 Table A-1)
SYNTAX_NAMES = {
    "1.2.840.10008.1.2.4.110": "JPEG XL Lossless",
    "1.2.840.10008.1.2.4.111": "JPEG XL JPEG Recompression",
    "1.2.840.10008.1.2.4.112": "JPEG XL",
}
# what GDCM (SimpleITK's DICOM reader, the fallback for single-frame files) decodes
GDCM_SYNTAXES = {
    "1.2.840.10008.1.2.4.50",
    "1.2.840.10008.1.2.4.51",
    "1.2.840.10008.1.2.4.57",
    "1.2.840.10008.1.2.4.70",
    "1.2.840.10008.1.2.4.80",
    "1.2.840.10008.1.2.4.81",
    "1.2.840.10008.1.2.4.90",
    "1.2.840.10008.1.2.4.91",
    "1.2.840.10008.1.2.5",
}
ORTHO_TOL = 1e-2  # DICOM DS values are rounded (some writers keep 4-5 digits)
TILT_MIN_DEG = 0.5  # smaller angles are rounding of ImagePositionPatient


def image_name(entry: tuple[Path, object]) -> str:
    """'IM0001.dcm' or 'ct.dcm frame 3' (for messages)."""
    file, ds = entry
    source = getattr(ds, "_medseg_source", None)
    return f"{file.name} frame {source[2]}" if source else file.name


def syntax_label(uid: str) -> str:
    """'JPEG XL (1.2.840.10008.1.2.4.112)'; '1.2.3 (unknown)' for a UID that names no transfer syntax."""
    from pydicom.uid import UID

    uid = str(uid)
    name = SYNTAX_NAMES.get(uid) or UID(uid).name
    if not name or name == uid:
        return f"{uid} (unknown)"
    return f"{name} ({uid})"


def transfer_syntax(ds) -> str:
    meta = getattr(ds, "file_meta", None)
    return str(meta.get("TransferSyntaxUID", "") or "") if meta is not None else ""


def decodable(uid: str, *, multiframe: bool = False) -> bool:
    """True when an installed decoder reads pixel data in transfer syntax ``uid``: pydicom (uncompressed,
    deflated, or a compressed syntax with a plugin such as pylibjpeg installed), else GDCM for a
    single-frame file."""
    from pydicom.pixels.decoders.base import get_decoder
    from pydicom.uid import UID

    if not uid:
        return True  # no file meta: pydicom reads it as implicit VR little endian
    syntax = UID(uid)
    if syntax.is_transfer_syntax and not syntax.is_compressed:
        return True
    try:
        if get_decoder(syntax).is_available:
            return True
    except (NotImplementedError, ValueError):
        pass
    return not multiframe and uid in GDCM_SYNTAXES


def undecodable_error(uid: str, path: Path) -> InputError:
    return InputError(
        f"no installed decoder reads transfer syntax {syntax_label(uid)}; convert the series to an "
        "uncompressed or JPEG 2000 syntax first (e.g. gdcmconv --raw, dcmdjpeg)",
        path=path,
    )


def check_syntaxes(headers: list[tuple[Path, object]]) -> None:
    """Every file's transfer syntax can be decoded (one check per syntax, before any pixel is read)."""
    seen: dict[tuple[str, bool], bool] = {}
    for file, ds in headers:
        key = (transfer_syntax(ds), getattr(ds, "_medseg_source", None) is not None)
        if key not in seen:
            seen[key] = decodable(key[0], multiframe=key[1])
        if not seen[key]:
            raise undecodable_error(key[0], file)


def check_frames(headers: list) -> None:
    """Every frame of a multi-frame file needs its position (Plane Position Sequence)."""
    for file, ds in headers:
        source = getattr(ds, "_medseg_source", None)
        if source is not None and "ImagePositionPatient" not in ds and len(headers) > 1:
            raise InputError(
                f"Enhanced CT frame {source[2]} has no ImagePositionPatient (Plane Position Sequence, "
                "per-frame or shared): cannot order the slices",
                path=file,
            )


def numbers(ds, keyword: str) -> list[float] | None:
    """A numeric attribute as floats; None when absent or empty; [nan] when it holds no number."""
    value = ds.get(keyword)
    if (
        value is None
        or value == ""
        or (hasattr(value, "__len__") and not isinstance(value, str) and not len(value))
    ):
        return None
    values = (
        value if isinstance(value, (list, tuple)) or value.__class__.__name__ == "MultiValue" else [value]
    )
    try:
        return [float(v) for v in values]
    except (TypeError, ValueError):
        return [math.nan]


def check_header_values(headers: list[tuple[Path, object]]) -> None:
    """Spacing, position, orientation and rescale of every slice are possible values, else InputError
    naming the attribute and the file (zero, negative or NaN spacing; RescaleSlope <= 0; NaN/Inf
    RescaleIntercept; an ImageOrientationPatient that is not two perpendicular unit vectors)."""
    for file, ds in headers:

        def refuse(what: str, file=file, ds=ds) -> None:
            source = getattr(ds, "_medseg_source", None)  # the path names the file; a frame needs its number
            raise InputError(f"frame {source[2]}: {what}" if source else what, path=file)

        spacing = numbers(ds, "PixelSpacing")
        if spacing is not None and (
            len(spacing) != 2 or not all(math.isfinite(v) and v > 0 for v in spacing)
        ):
            refuse(f"PixelSpacing {_show(spacing)} must be two positive numbers (mm)")
        thickness = numbers(ds, "SliceThickness")
        if thickness is not None and not all(math.isfinite(v) and v >= 0 for v in thickness):
            refuse(f"SliceThickness {_show(thickness)} must be a positive number (mm)")
        position = numbers(ds, "ImagePositionPatient")
        if position is not None and (len(position) != 3 or not all(math.isfinite(v) for v in position)):
            refuse(f"ImagePositionPatient {_show(position)} must be three finite numbers (mm)")
        orientation = numbers(ds, "ImageOrientationPatient")
        if orientation is not None and not _orthonormal(orientation):
            refuse(
                f"ImageOrientationPatient {_show(orientation)} is not two perpendicular unit vectors "
                "(the direction matrix is not orthonormal)"
            )
        slope = numbers(ds, "RescaleSlope")
        if slope is not None and not all(math.isfinite(v) and v > 0 for v in slope):
            refuse(f"RescaleSlope {_show(slope)} must be a positive number")
        intercept = numbers(ds, "RescaleIntercept")
        if intercept is not None and not all(math.isfinite(v) for v in intercept):
            refuse(f"RescaleIntercept {_show(intercept)} must be a finite number")


def _show(values: list[float]) -> str:
    return "\\".join(f"{v:g}" for v in values)


def _orthonormal(iop: list[float]) -> bool:
    if len(iop) != 6 or not all(math.isfinite(v) for v in iop):
        return False
    row, col = np.array(iop[:3]), np.array(iop[3:])
    return (
        abs(np.linalg.norm(row) - 1) < ORTHO_TOL
        and abs(np.linalg.norm(col) - 1) < ORTHO_TOL
        and abs(float(np.dot(row, col))) < ORTHO_TOL
    )


def tilt_warning(headers: list[tuple[Path, object]], normal: np.ndarray) -> str | None:
    """A warning when the slices are not stacked along their normal (gantry tilt): from the slice
    positions (first to last) and from GantryDetectorTilt; None for a straight stack."""
    tags = {
        float(v[0]) for _, ds in headers if (v := numbers(ds, "GantryDetectorTilt")) and math.isfinite(v[0])
    }
    tag = max(tags, key=abs) if tags else 0.0
    angle = 0.0
    if len(headers) > 1 and all("ImagePositionPatient" in ds for _, ds in headers):
        first = np.array([float(v) for v in headers[0][1].ImagePositionPatient])
        last = np.array([float(v) for v in headers[-1][1].ImagePositionPatient])
        stack = last - first
        length = float(np.linalg.norm(stack))
        if length > 0:
            cos = min(1.0, abs(float(np.dot(stack, normal))) / length)
            angle = math.degrees(math.acos(cos))
    if angle < TILT_MIN_DEG and abs(tag) < TILT_MIN_DEG:
        return None
    parts = []
    if angle >= TILT_MIN_DEG:
        parts.append(f"the slices are stacked at {angle:.1f}° to the slice normal")
    if abs(tag) >= TILT_MIN_DEG:
        parts.append(f"GantryDetectorTilt is {tag:g}°")
    return (
        f"gantry tilt: {' and '.join(parts)}; the voxel grid is sheared, so a volume output and "
        "distances across slices are skewed unless the series is resampled (slices are processed one "
        "by one and keep their positions)"
    )
