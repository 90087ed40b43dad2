"""Volume I/O through SimpleITK (NIfTI, NRRD, MHA) with one metadata record for all readers."""

from __future__ import annotations

import errno
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medseg.errors import InputError
from medseg.io.atomic import atomic_path
from medseg.io.volume_checks import check_sitk_geometry, itk_read_error, verify_volume_file

VOLUME_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")
# what medseg writes: single-file formats only (a detached header .nhdr/.mhd names its data file,
# which an atomic rename of the header alone would leave pointing at a temporary name)
VOLUME_OUTPUT_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha")


@dataclass
class VolumeMeta:
    """Geometry and provenance of a volume; arrays are (z, y, x), spacing in mm as (z, y, x)."""

    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]  # x, y, z of the first voxel (LPS, as SimpleITK/DICOM)
    direction: tuple[float, ...]  # 9 direction cosines, SimpleITK order
    source: str  # "dicom" | "sitk"
    path: str
    kernel: str = ""
    modality: str = ""
    series_uid: str = ""
    extra: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)  # what the reader noticed (tilt, uneven slices)


def has_volume_suffix(path: str | Path, suffixes: tuple[str, ...] = VOLUME_SUFFIXES) -> bool:
    """True when the file name ends in one of ``suffixes`` (case-insensitive); the file need not exist."""
    name = Path(path).name.lower()
    return any(name.endswith(s) for s in suffixes)


def is_volume_file(path: Path) -> bool:
    return Path(path).is_file() and has_volume_suffix(path)


def check_volume_output(path: str | Path) -> Path:
    """Pre-flight for a volume output: its extension must name a format medseg writes."""
    path = Path(path)
    if not has_volume_suffix(path, VOLUME_OUTPUT_SUFFIXES):
        raise InputError(
            f"unknown volume file extension; use one of {', '.join(VOLUME_OUTPUT_SUFFIXES)}", path=path
        )
    return path


def nifti_nonfinite(path: str | Path, *, max_voxels: int = 1 << 24) -> int | None:
    """Count NaN/Inf voxels in a float NIfTI file from its raw data (nibabel, streamed in slabs).

    ITK's NIfTI reader silently replaces NaN with 0, so a corrupt export would look valid after
    SimpleITK. Reads at most ``max_voxels`` voxels at a time along the last (slowest) axis.
    Returns None for files this cannot check (not NIfTI, or integer data, which cannot hold NaN).
    """
    import nibabel as nib
    from nibabel.filebasedimages import ImageFileError

    try:
        image = nib.load(str(path), keep_file_open=True)
    except (ImageFileError, OSError, EOFError, ValueError):
        return None
    if not isinstance(image, nib.Nifti1Image) or not np.issubdtype(image.get_data_dtype(), np.floating):
        return None  # Nifti2Image subclasses Nifti1Image
    proxy, shape = image.dataobj, image.shape
    if not shape:
        return 0
    plane = int(np.prod(shape[:-1], dtype=np.int64)) or 1
    step = max(1, max_voxels // plane)
    count = 0
    try:
        for start in range(0, shape[-1], step):
            block = proxy[..., start : start + step]
            count += int(np.count_nonzero(~np.isfinite(block)))
    except (OSError, EOFError, ValueError):
        return None
    return count


def read_volume_sitk(path: str | Path) -> tuple[np.ndarray, VolumeMeta]:
    """Read a NIfTI/NRRD/MHA image as float32 (z, y, x); a 2D image becomes one slice."""
    import SimpleITK as sitk

    path = Path(path)
    verify_volume_file(path)  # truncation and impossible geometry, which ITK lets through
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()  # the header as written (ReadImage may flip a negative spacing)
        check_sitk_geometry(reader.GetSpacing(), reader.GetDirection(), path)
        image = reader.Execute()
    except RuntimeError as exc:
        raise InputError(itk_read_error(str(exc)), path=path) from None
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError("expected a single-channel (grey-level) image", path=path)
    if image.GetDimension() == 2:
        image = sitk.JoinSeries(image)
    if image.GetDimension() != 3:
        raise InputError(f"expected a 2D or 3D image, got {image.GetDimension()}D", path=path)
    check_sitk_geometry(image.GetSpacing(), image.GetDirection(), path)
    array = sitk.GetArrayFromImage(image).astype(np.float32, copy=False)
    bad = int(np.count_nonzero(~np.isfinite(array)))
    if not bad and path.name.lower().endswith((".nii", ".nii.gz")):
        bad = nifti_nonfinite(path) or 0
    if bad:
        raise InputError(f"image contains {bad} NaN/Inf voxels", path=path)
    sx, sy, sz = image.GetSpacing()
    meta = VolumeMeta(
        spacing=(sz, sy, sx),
        origin=tuple(image.GetOrigin()),
        direction=tuple(image.GetDirection()),
        source="sitk",
        path=str(path),
    )
    return array, meta


def volume_shape(path: str | Path) -> tuple[int, int, int]:
    """(z, y, x) of a volume file from its header only (a 2D image is one slice); InputError if unreadable."""
    import SimpleITK as sitk

    path = Path(path)
    verify_volume_file(path, data=False)  # the header's geometry; the data are checked when read
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise InputError(itk_read_error(str(exc)), path=path) from None
    check_sitk_geometry(reader.GetSpacing(), reader.GetDirection(), path)
    size = reader.GetSize()
    if len(size) == 2:
        return 1, size[1], size[0]
    if len(size) != 3:
        raise InputError(f"expected a 2D or 3D image, got {len(size)}D", path=path)
    return size[2], size[1], size[0]


def write_volume_sitk(path: str | Path, array: np.ndarray, meta: VolumeMeta, *, dtype=np.int16) -> Path:
    """Write (z, y, x) ``array`` with ``meta``'s geometry, atomically; the extension picks the format."""
    import SimpleITK as sitk

    path = check_volume_output(path)
    if np.issubdtype(np.dtype(dtype), np.integer):
        info = np.iinfo(dtype)
        array = np.clip(np.rint(array), info.min, info.max)
    image = sitk.GetImageFromArray(np.ascontiguousarray(array.astype(dtype, copy=False)))
    z, y, x = meta.spacing
    image.SetSpacing((x, y, z))
    image.SetOrigin(meta.origin)
    image.SetDirection(meta.direction)
    suffix = next(s for s in VOLUME_OUTPUT_SUFFIXES if path.name.lower().endswith(s))  # ITK wants lower case
    with atomic_path(path, suffix=suffix) as tmp:
        try:
            sitk.WriteImage(image, str(tmp), useCompression=True)
        except RuntimeError as exc:  # ITK wraps OS errors (disk full, permissions) in RuntimeError
            msg = str(exc).strip().splitlines()
            raise OSError(
                errno.EIO, f"cannot write image ({msg[-1] if msg else 'unknown error'})", str(path)
            ) from None
    return path
