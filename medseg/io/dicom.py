"""DICOM series in and derived series out (pydicom; SimpleITK/GDCM as a decoding fallback).

Reading is header-first: a folder is scanned once without pixel data, series are grouped by
SeriesInstanceUID, slices sorted along the slice normal and checked for gaps. Pixel data are
then decoded slice by slice (:func:`iter_slices`) so a 1000-slice series never has to sit in
memory as a whole.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medseg.errors import InputError
from medseg.io.dicom_checks import (
    check_frames,
    check_header_values,
    check_syntaxes,
    decodable,
    numbers,
    tilt_warning,
    undecodable_error,
)
from medseg.io.dicom_checks import image_name as _image_name
from medseg.io.dicom_objects import (  # noqa: F401 - re-exported: the DICOM object vocabulary
    CT_IMAGE_STORAGE,
    ENHANCED_CT,
    LEGACY_ENHANCED_CT,
    frame_headers,
    is_frame,
    is_multiframe,
    secondary_kind,
    sop_class_of,
    sop_instance_of,
    source_of,
)
from medseg.io.volume import VolumeMeta
from medseg.io.walk import walk_files

log = logging.getLogger("medseg.io.dicom")

UID_ROOT = "1.2.826.0.1.3680043.8.498."  # pydicom's root; generate_uid appends a unique suffix


@dataclass
class DicomSeries:
    """A series found on disk: files in slice order plus the geometry needed to rebuild a volume."""

    uid: str
    files: list[Path]
    modality: str
    kernel: str
    description: str
    rows: int
    columns: int
    spacing: tuple[float, float, float]  # z (median slice gap), row spacing y, column spacing x
    origin: tuple[float, float, float]
    direction: tuple[float, ...]
    positions: list[float]  # position of each slice along the normal (mm)
    warnings: list[str] = field(default_factory=list)
    irregular: bool = False  # missing slices / uneven gaps
    frames: list[int | None] = field(default_factory=list)  # 1-based frame number per slice (multi-frame)
    manufacturer: str = ""
    kernel_values: list[str] = field(default_factory=list)  # distinct ConvolutionKernel values, all slices
    ignored: list[str] = field(default_factory=list)  # objects left out of the choice (SEG, localizer, ...)

    def frame_of(self, index: int) -> int | None:
        return self.frames[index] if self.frames else None

    def meta(self) -> VolumeMeta:
        return VolumeMeta(
            spacing=self.spacing,
            origin=self.origin,
            direction=self.direction,
            source="dicom",
            path=str(self.files[0].parent),
            kernel=self.kernel,
            modality=self.modality,
            series_uid=self.uid,
            warnings=list(self.warnings),
        )


def kernel_of(ds) -> str:
    """ConvolutionKernel as one string (Siemens writes e.g. ['Br50f', '3'] or 'B50f')."""
    value = ds.get("ConvolutionKernel", "")
    if isinstance(value, (list, tuple)) or value.__class__.__name__ == "MultiValue":
        value = "\\".join(str(v) for v in value)
    return str(value).strip()


def kernel_list(ds) -> list[str]:
    """ConvolutionKernel as its list of non-empty values ([] when absent or empty)."""
    from medseg.ct.kernels import kernel_values

    return kernel_values(ds.get("ConvolutionKernel"))


_HEADER_ERRORS = (EOFError, OSError, ValueError, TypeError, KeyError, AttributeError)


def _read_header(path: Path):
    """The header of a DICOM file, or None. Files written without the 128-byte preamble and "DICM"
    marker (raw datasets, some older archives) are read too, but kept only when they are images of a
    series (SeriesInstanceUID and Rows): forcing would otherwise take any file for DICOM."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        return pydicom.dcmread(path, stop_before_pixels=True)
    except InvalidDicomError:
        pass
    except _HEADER_ERRORS:
        return None
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
    except (InvalidDicomError, *_HEADER_ERRORS):
        return None
    try:
        return ds if "SeriesInstanceUID" in ds and "Rows" in ds else None
    except _HEADER_ERRORS:  # a forced read of a non-DICOM file can fail only when its elements are parsed
        return None


def read_dataset(path: Path):
    """The whole DICOM file (pixels included), preamble or not (see :func:`_read_header`)."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        return pydicom.dcmread(path)
    except InvalidDicomError:
        return pydicom.dcmread(path, force=True)


DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"


def _is_dicomdir(path: Path) -> bool:
    if path.name.upper() == "DICOMDIR":
        return True
    import pydicom

    try:
        meta = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPClassUID"]).file_meta
    except Exception:  # noqa: BLE001 - any unreadable file is simply not a DICOMDIR
        return False
    return str(meta.get("MediaStorageSOPClassUID", "")) == DICOMDIR_SOP_CLASS


def has_dicom_marker(path: Path) -> bool:
    """True when the file carries the DICOM preamble's "DICM" marker (so it claims to be DICOM)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:] == b"DICM"


def scan_study(
    path: str | Path,
) -> tuple[dict[str, list[tuple[Path, object]]], list[Path], list[str]]:
    """Like :func:`scan_dicom`, plus a description of each DICOM object left out because it is not an
    image to convert (SEG, RTSTRUCT, SR, PR, KO, secondary capture, localizer/scout images).

    Multi-frame (Enhanced CT) files give one header per frame (see :func:`frame_headers`).
    """
    path = Path(path)
    candidates = [path] if path.is_file() else sorted(walk_files(path))  # linked folders too
    groups: dict[str, list[tuple[Path, object]]] = {}
    skipped: list[Path] = []
    ignored: dict[str, int] = {}
    for file in candidates:
        if file.name.startswith("."):
            continue
        ds = _read_header(file)
        if ds is None or "SeriesInstanceUID" not in ds:
            skipped.append(file)
            continue
        kind = secondary_kind(ds)
        if kind is not None:
            ignored[kind] = ignored.get(kind, 0) + 1
            continue
        uid = str(ds.SeriesInstanceUID)
        if is_multiframe(ds):
            groups.setdefault(uid, []).extend((file, frame) for frame in frame_headers(ds))
        else:
            groups.setdefault(uid, []).append((file, ds))
    notes = [f"{n} {kind} object(s)" for kind, n in sorted(ignored.items())]
    return groups, skipped, notes


def scan_dicom(path: str | Path) -> tuple[dict[str, list[tuple[Path, object]]], list[Path]]:
    """Group the DICOM images under ``path`` (a folder, recursively, or one file) by series.

    Returns ``(series_uid -> [(file, header)], skipped_non_dicom_files)``; non-image and secondary
    objects (SEG, SR, localizers, ...) are left out. A multi-frame file gives one entry per frame.
    """
    groups, skipped, _ignored = scan_study(path)
    return groups, skipped


def _orientation(ds) -> list[float]:
    """ImageOrientationPatient as 6 numbers; axial when absent or empty (a bad value is refused by
    :func:`check_header_values` before the geometry is used)."""
    iop = numbers(ds, "ImageOrientationPatient")
    return iop if iop is not None and len(iop) == 6 else [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]


def _geometry(
    headers: list[tuple[Path, object]],
) -> tuple[list[tuple[Path, object]], list[float], np.ndarray, np.ndarray]:
    first = headers[0][1]
    iop = _orientation(first)
    row, col = np.array(iop[:3]), np.array(iop[3:])
    normal = np.cross(row, col)
    if all("ImagePositionPatient" in ds for _, ds in headers):
        keyed = [
            (float(np.dot(normal, [float(v) for v in ds.ImagePositionPatient])), f, ds) for f, ds in headers
        ]
    else:
        keyed = [
            (float(ds.get("InstanceNumber", i)) * float(ds.get("SliceThickness", 1.0) or 1.0), f, ds)
            for i, (f, ds) in enumerate(headers)
        ]
    keyed.sort(key=lambda t: t[0])
    return [(f, ds) for _, f, ds in keyed], [k for k, _, _ in keyed], np.stack([row, col, normal], 1), normal


def _drop_copies(headers: list[tuple[Path, object]]) -> tuple[list[tuple[Path, object]], list[Path]]:
    """The same image stored twice (same SOP Instance UID and frame: a copied file) is read once."""
    seen: set[tuple[str, object]] = set()
    kept, copies = [], []
    for file, ds in headers:
        _cls, instance, frame = source_of(ds)
        key = (str(instance), frame)
        if instance and key in seen:
            copies.append(file)
            continue
        seen.add(key)
        kept.append((file, ds))
    return kept, copies


def _geometry_gaps(headers: list[tuple[Path, object]]) -> list[str]:
    """What the geometry had to assume, in words: slices ordered without positions, an orientation
    taken as axial, pixel sizes that differ between slices (the first slice's is used)."""
    out = []
    missing = sum("ImagePositionPatient" not in ds for _, ds in headers)
    if missing and len(headers) > 1:
        out.append(
            f"{missing} of {len(headers)} slices have no ImagePositionPatient (0020,0032): slices ordered "
            "by InstanceNumber and spaced by SliceThickness, not by their positions"
        )
    if numbers(headers[0][1], "ImageOrientationPatient") is None:
        out.append("no ImageOrientationPatient (0020,0037): the slices are taken as axial")
    spacings = {tuple(round(v, 4) for v in (numbers(ds, "PixelSpacing") or ())) for _, ds in headers}
    spacings.discard(())
    if len(spacings) > 1:
        lo, hi = min(spacings), max(spacings)
        if max(abs(a - b) / max(a, b) for a, b in zip(lo, hi)) > 0.01:
            out.append(
                f"PixelSpacing differs between slices ({lo[0]:g}-{hi[0]:g} mm): the first slice's is used "
                "for the whole series"
            )
    return out


def _describe(uid: str, headers: list) -> str:
    ds = headers[0][1]
    return f"{uid} ({len(headers)} images, {kernel_of(ds) or 'no kernel'}, {ds.get('SeriesDescription', '')})"


def _is_axial(headers: list) -> bool:
    iop = _orientation(headers[0][1])
    return abs(float(np.cross(iop[:3], iop[3:])[2])) > 0.9


SERIES_UID_HINT = "choose one with --series-uid"


def _choose(
    path: Path,
    groups: dict,
    series_uid: str | None,
    modality: str | None,
    ignored: list[str],
    hint: str = SERIES_UID_HINT,
):
    """The one series to use: ``series_uid``, else the only (axial) image series of ``modality``."""
    if series_uid is not None:
        if series_uid not in groups:
            raise InputError(
                f"series {series_uid} not found; present: {', '.join(sorted(groups))}", path=path
            )
        return series_uid, groups[series_uid]
    if len(groups) == 1:
        return next(iter(groups.items()))
    matching = {
        uid: h
        for uid, h in groups.items()
        if modality is None or str(h[0][1].get("Modality", "")) == modality
    }
    axial = {uid: h for uid, h in matching.items() if _is_axial(h)}
    for pool in (axial, matching):
        if len(pool) == 1:
            left_out = len(groups) - 1
            if left_out:
                log.info(
                    "%s: using the only %s series; %d other series left out", path, modality or "", left_out
                )
            return next(iter(pool.items()))
    listing = "; ".join(_describe(uid, h) for uid, h in sorted((axial or matching or groups).items()))
    also = f" (ignored: {', '.join(ignored)})" if ignored else ""
    n = len(axial or matching or groups)
    raise InputError(f"{n} series found, {hint}: {listing}{also}", path=path)


def open_series(
    path: str | Path,
    *,
    series_uid: str | None = None,
    modality: str | None = "CT",
    choose_hint: str = SERIES_UID_HINT,
) -> DicomSeries:
    """Find exactly one series under ``path`` (pick with ``series_uid`` when there are several).

    Non-image and secondary objects (SEG, RTSTRUCT, SR, PR, KO, secondary capture) and localizer
    images are left out; of the rest, the only axial series of ``modality`` is taken on its own.
    """
    path = Path(path)
    if not path.exists():
        raise InputError("no such file or folder", path=path)
    if path.is_dir() and next(walk_files(path), None) is None:
        raise InputError("folder is empty", path=path)
    groups, skipped, ignored = scan_study(path)
    for file in skipped:
        if _is_dicomdir(file):  # the media index of an exported folder: not an image
            continue
        if has_dicom_marker(file):
            # it claims to be DICOM, yet no series can be read from it: a slice may be missing
            raise InputError(
                "damaged DICOM file: its header cannot be read or has no SeriesInstanceUID (cut short?); "
                "remove or replace it and run again",
                path=file,
            )
        log.warning("skipping %s: not a DICOM image", file)
    if ignored:
        log.info("%s: not images to convert, left out: %s", path, ", ".join(ignored))
    if not groups:
        extra = f" (only {', '.join(ignored)})" if ignored else ""
        raise InputError(f"no DICOM images found{extra}", path=path)
    series_uid, headers = _choose(path, groups, series_uid, modality, ignored, choose_hint)
    headers, copies = _drop_copies(headers)
    first = headers[0][1]
    found_modality = str(first.get("Modality", ""))
    if modality is not None and found_modality != modality:
        raise InputError(f"series modality is {found_modality or 'missing'}, expected {modality}", path=path)
    sizes = {(int(ds.Rows), int(ds.Columns)) for _, ds in headers}
    if len(sizes) > 1:
        raise InputError(f"slices of one series have different sizes {sorted(sizes)}", path=path)
    check_frames(headers)
    check_header_values(headers)  # spacing, orientation, rescale: possible values, else the field named
    check_syntaxes(headers)  # a decoder for every transfer syntax, before any pixel is decoded
    headers, positions, axes, normal = _geometry(headers)
    first = headers[0][1]
    warnings: list[str] = []
    tilt = tilt_warning(headers, normal)
    if tilt:
        warnings.append(tilt)
    warnings.extend(_geometry_gaps(headers))
    if copies:
        warnings.append(
            f"{len(copies)} file(s) are copies of an image already read (same SOPInstanceUID), left out: "
            + ", ".join(p.name for p in copies[:3])
            + (" ..." if len(copies) > 3 else "")
        )
    irregular = False
    gaps = np.diff(positions)
    z_spacing = float(first.get("SliceThickness", 1.0) or 1.0)
    if len(gaps):
        if np.any(gaps < 1e-3):
            i = int(np.argmin(gaps))
            raise InputError(
                f"two slices share position {positions[i]:.2f} mm ({_image_name(headers[i])}, "
                f"{_image_name(headers[i + 1])}): duplicated or mixed series",
                path=path,
            )
        z_spacing = float(np.median(gaps))
        bad = np.flatnonzero(np.abs(gaps - z_spacing) > 0.1 * z_spacing)
        if bad.size:
            irregular = True
            i = int(bad[0])
            warnings.append(
                f"inconsistent slice spacing: gap of {gaps[i]:.2f} mm after {_image_name(headers[i])} "
                f"(median {z_spacing:.2f} mm; {bad.size} irregular gap(s), missing slices?)"
            )
    ps = numbers(first, "PixelSpacing")  # checked positive above, when present
    if ps is None:
        ps = [1.0, 1.0]
        warnings.append(
            "no PixelSpacing (0028,0030): pixel size unknown, taken as 1 mm (sizes in mm are not real)"
        )
    origin = tuple(float(v) for v in headers[0][1].get("ImagePositionPatient", [0.0, 0.0, 0.0]))
    series = DicomSeries(
        uid=str(series_uid),
        files=[f for f, _ in headers],
        modality=found_modality,
        kernel=kernel_of(first),
        description=str(first.get("SeriesDescription", "")),
        rows=int(first.Rows),
        columns=int(first.Columns),
        spacing=(z_spacing, ps[0], ps[1]),
        origin=origin,
        direction=tuple(axes.flatten().tolist()),
        positions=positions,
        warnings=warnings,
        irregular=irregular,
        frames=[source_of(ds)[2] for _, ds in headers] if any(is_frame(ds) for _, ds in headers) else [],
        manufacturer=str(first.get("Manufacturer", "") or ""),
        kernel_values=list(dict.fromkeys(v for _, ds in headers for v in kernel_list(ds))),
        ignored=ignored,
    )
    for w in warnings:
        log.warning("%s: %s", path, w)
    return series


PADDING_HU = -3024.0  # what pixels marked by PixelPaddingValue are read as (out of field)


def _mark_padding(hu: np.ndarray, pixels: np.ndarray, ds) -> np.ndarray:
    """Pixels in the PixelPaddingValue (.. PixelPaddingRangeLimit) range are out of field: read
    them as -3024 HU, so that one rule (HU <= -1500 is padding) holds for every later step."""
    value = ds.get("PixelPaddingValue")
    if value is None or isinstance(value, (bytes, list)):
        return hu
    limit = ds.get("PixelPaddingRangeLimit")
    low, high = (
        (value, value) if limit is None or isinstance(limit, (bytes, list)) else sorted((value, limit))
    )
    pad = (pixels >= low) & (pixels <= high)
    if pad.any():
        hu = np.where(pad, np.minimum(hu, PADDING_HU), hu).astype(np.float32)
    return hu


def decode_hu(ds, path: Path, *, frame: int | None = None, header=None) -> np.ndarray:
    """Pixel data of one slice (or one 1-based ``frame`` of a multi-frame ``ds``, rescaled by that
    frame's ``header``) in HU (``pydicom.pixels.apply_rescale``), float32; padding pixels
    (PixelPaddingValue) as -3024 HU."""
    header = ds if header is None else header
    try:
        if frame is None:
            pixels = ds.pixel_array
        else:
            from pydicom.pixels import pixel_array

            pixels = pixel_array(ds, index=frame - 1)
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types; try GDCM for codecs it lacks
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        if syntax is not None and not decodable(str(syntax), multiframe=frame is not None):
            raise undecodable_error(str(syntax), path) from None
        hu = (
            _decode_with_sitk(path) if frame is None and syntax is not None and syntax.is_compressed else None
        )
        if hu is None:
            raise InputError(
                f"cannot decode pixel data{f' of frame {frame}' if frame else ''} "
                f"({str(exc).splitlines()[0][:160]})",
                path=path,
            ) from None
        return hu
    if pixels.ndim != 2:
        raise InputError(f"expected one 2D frame per file, got shape {pixels.shape}", path=path)
    from pydicom.pixels import apply_rescale

    try:  # Modality LUT or RescaleSlope/Intercept, as the standard defines them
        hu = apply_rescale(pixels, header)
    except (TypeError, ValueError, AttributeError, IndexError) as exc:
        raise InputError(
            f"invalid rescale (RescaleSlope/RescaleIntercept or Modality LUT): {exc}", path=path
        ) from None
    return _mark_padding(np.asarray(hu, dtype=np.float32), pixels, header)


def _decode_with_sitk(path: Path) -> np.ndarray | None:
    """Decode one file with GDCM (other codecs); GDCM applies the rescale, so this is HU."""
    import SimpleITK as sitk

    try:
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        reader.SetImageIO("GDCMImageIO")
        image = reader.Execute()
    except RuntimeError:
        return None
    array = sitk.GetArrayFromImage(image).astype(np.float32)
    return array[0] if array.ndim == 3 else array


def iter_slices(series: DicomSeries) -> Iterator[tuple[object, np.ndarray]]:
    """Yield ``(dataset, hu_slice)`` in slice order, one file at a time (a multi-frame file is read
    once and its frames decoded one by one; the dataset is then the frame's classic header)."""

    frame_headers_by_file: dict[Path, list] = {}
    loaded: tuple[Path | None, object] = (None, None)
    for index, file in enumerate(series.files):
        frame = series.frame_of(index)
        if frame is None or loaded[0] != file:
            try:
                loaded = (file, read_dataset(file))
            except Exception as exc:  # noqa: BLE001
                raise InputError(f"cannot read DICOM file ({exc.__class__.__name__})", path=file) from None
        ds = loaded[1]
        if frame is None:
            hu = decode_hu(ds, file)
        else:
            if file not in frame_headers_by_file:
                frame_headers_by_file.clear()  # one multi-frame file's headers at a time
                frame_headers_by_file[file] = frame_headers(ds)
            header = frame_headers_by_file[file][frame - 1]
            # rescale and padding of this frame: its functional groups, on the file's pixel module
            hu = decode_hu(ds, file, frame=frame, header=header)
            ds = header
        if hu.shape != (series.rows, series.columns):
            raise InputError(f"pixel data shape {hu.shape} does not match Rows/Columns", path=file)
        yield ds, hu


def read_series(series: DicomSeries) -> tuple[np.ndarray, VolumeMeta]:
    """Whole series as a float32 HU volume (z, y, x) with its geometry."""
    volume = np.empty((len(series.files), series.rows, series.columns), np.float32)
    for i, (_ds, hu) in enumerate(iter_slices(series)):
        volume[i] = hu
    return volume, series.meta()


def new_uid(*entropy: str) -> str:
    """A fresh UID (deterministic when ``entropy`` is given, for reproducible sample data)."""
    from pydicom.uid import generate_uid

    return generate_uid(prefix=UID_ROOT, entropy_srcs=list(entropy) if entropy else None)
