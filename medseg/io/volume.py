"""Volume I/O through SimpleITK (NIfTI, NRRD, MHA) with one metadata record for all readers."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medseg.errors import InputError
from medseg.io.atomic import atomic_path

VOLUME_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")


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


def is_volume_file(path: Path) -> bool:
    name = path.name.lower()
    return path.is_file() and any(name.endswith(s) for s in VOLUME_SUFFIXES)


_NIFTI_FLOATS = {16: "f4", 64: "f8"}  # NIfTI-1 datatype codes of float32 / float64


def nifti_nonfinite(path: str | Path, *, chunk: int = 1 << 24) -> int | None:
    """Count NaN/Inf voxels in a float NIfTI-1 file by reading its raw data (streamed in chunks).

    ITK's NIfTI reader silently replaces NaN with 0, so a corrupt export would look valid after
    SimpleITK. Returns None for files this cannot check (not NIfTI-1, or integer data).
    """
    import gzip
    import struct

    path = Path(path)
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rb") as handle:
            header = handle.read(348)
            if len(header) < 348:
                return None
            for order in ("<", ">"):
                if struct.unpack(order + "i", header[:4])[0] == 348:
                    break
            else:
                return None
            datatype = struct.unpack(order + "h", header[70:72])[0]
            if datatype not in _NIFTI_FLOATS:
                return None
            offset = int(struct.unpack(order + "f", header[108:112])[0])
            handle.read(max(0, offset - 348))
            dtype = np.dtype(order + _NIFTI_FLOATS[datatype])
            count, rest = 0, b""
            while block := handle.read(chunk):
                block = rest + block
                usable = len(block) - len(block) % dtype.itemsize
                count += int(np.count_nonzero(~np.isfinite(np.frombuffer(block[:usable], dtype))))
                rest = block[usable:]
            return count
    except (OSError, EOFError, struct.error):
        return None


def read_volume_sitk(path: str | Path) -> tuple[np.ndarray, VolumeMeta]:
    """Read a NIfTI/NRRD/MHA image as float32 (z, y, x); a 2D image becomes one slice."""
    import SimpleITK as sitk

    path = Path(path)
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        msg = str(exc).strip().splitlines()
        raise InputError(f"cannot read image ({msg[-1] if msg else 'unknown error'})", path=path) from None
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError("expected a single-channel (grey-level) image", path=path)
    if image.GetDimension() == 2:
        image = sitk.JoinSeries(image)
    if image.GetDimension() != 3:
        raise InputError(f"expected a 2D or 3D image, got {image.GetDimension()}D", path=path)
    array = sitk.GetArrayFromImage(image).astype(np.float32, copy=False)
    bad = int(np.count_nonzero(~np.isfinite(array)))
    if not bad and path.name.lower().endswith((".nii", ".nii.gz")):
        bad = nifti_nonfinite(path) or 0
    if bad:
        raise InputError(f"image contains {bad} NaN/Inf voxels", path=path)
    sx, sy, sz = image.GetSpacing()
    meta = VolumeMeta(spacing=(sz, sy, sx), origin=tuple(image.GetOrigin()), direction=tuple(image.GetDirection()),
                      source="sitk", path=str(path))
    return array, meta


def write_volume_sitk(path: str | Path, array: np.ndarray, meta: VolumeMeta, *, dtype=np.int16) -> Path:
    """Write (z, y, x) ``array`` with ``meta``'s geometry, atomically."""
    import SimpleITK as sitk

    if np.issubdtype(np.dtype(dtype), np.integer):
        info = np.iinfo(dtype)
        array = np.clip(np.rint(array), info.min, info.max)
    image = sitk.GetImageFromArray(np.ascontiguousarray(array.astype(dtype)))
    z, y, x = meta.spacing
    image.SetSpacing((x, y, z))
    image.SetOrigin(meta.origin)
    image.SetDirection(meta.direction)
    with atomic_path(path) as tmp:
        sitk.WriteImage(image, str(tmp), useCompression=True)
    return Path(path)
