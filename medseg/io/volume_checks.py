"""Is a volume file whole and its geometry possible? Checks the one volume reader runs before trusting ITK.

SimpleITK reads a truncated ``.nii``/``.nii.gz`` as a volume whose missing part is zeros, replaces
zero, negative or NaN NIfTI ``pixdim`` by 1 mm (with a notice on stderr) and accepts a MetaImage
direction matrix that is no rotation. Each of these would give a plausible-looking but wrong result
(half a brain, volumes in the wrong unit), so they are refused here, naming the field.
"""

from __future__ import annotations

import io
import math
import re
import zlib
from pathlib import Path

import numpy as np

from medseg.errors import InputError

CHUNK = 1 << 20  # compressed bytes read at a time
MAX_OUT = 1 << 24  # decompressed bytes produced at a time (counted, then dropped)
ORTHO_TOL = 1e-3  # |D^T D - I| allowed in a direction matrix (header values are rounded)
_GZIP_MAGIC = b"\x1f\x8b"


def gzip_size(path: Path) -> int:
    """Uncompressed size of a gzip file, decompressed chunk by chunk (no copy of the data is kept).

    Reads to the end of every member so zlib checks each trailer (CRC-32 and length); a stream that
    stops early or fails its check is an InputError saying the file is truncated or corrupt.
    """
    total = 0
    decomp = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        with open(path, "rb") as handle:
            data = b""
            while True:
                if not data:
                    data = handle.read(CHUNK)
                    if not data:
                        break
                if decomp.eof:  # another gzip member (concatenated .gz), or zero padding at the end
                    if not data.strip(b"\0"):
                        data = b""
                        continue
                    decomp = zlib.decompressobj(16 + zlib.MAX_WBITS)
                total += len(decomp.decompress(data, MAX_OUT))
                data = decomp.unused_data if decomp.eof else decomp.unconsumed_tail
            while not decomp.eof:  # output still held back by MAX_OUT
                out = decomp.decompress(b"", MAX_OUT)
                if not out:
                    break
                total += len(out)
    except zlib.error as exc:
        raise InputError(f"file is corrupt: its gzip stream does not decompress ({exc})", path=path) from None
    if not decomp.eof:
        raise InputError(
            f"file is truncated: the gzip stream ends early (after {total} uncompressed bytes)", path=path
        )
    return total


def _is_gzip(path: Path) -> bool:
    with open(path, "rb") as handle:
        return handle.read(2) == _GZIP_MAGIC


def _nifti_header(path: Path):
    """The NIfTI-1/2 header as stored (nibabel, without its silent fixes of pixdim), or None if not NIfTI."""
    import gzip

    import nibabel as nib
    from nibabel.spatialimages import HeaderDataError

    try:
        opener = gzip.open if _is_gzip(path) else open
        with opener(path, "rb") as handle:
            raw = handle.read(540)
    except (OSError, EOFError, zlib.error):
        return None
    for cls, size in ((nib.Nifti1Header, 348), (nib.Nifti2Header, 540)):
        if len(raw) < size:
            continue
        for order in ("<", ">"):
            if int(np.frombuffer(raw[:4], dtype=f"{order}i4")[0]) == size:
                try:
                    return cls.from_fileobj(io.BytesIO(raw[:size]), check=False)
                except (HeaderDataError, ValueError):
                    return None
    return None


def check_nifti_header(path: Path, header=None) -> None:
    """pixdim of every spatial axis finite and > 0; the sform (when used) a scaled rotation."""
    header = _nifti_header(path) if header is None else header
    if header is None:
        return
    ndim = int(header["dim"][0])
    pixdim = [float(v) for v in header["pixdim"][1 : 1 + min(max(ndim, 1), 3)]]
    bad = [(axis, v) for axis, v in zip("xyz", pixdim) if not (math.isfinite(v) and v > 0)]
    if bad:
        shown = ", ".join(f"{axis} {v:g}" for axis, v in bad)
        raise InputError(
            f"voxel spacing (NIfTI pixdim) must be a positive number, got {shown}",
            path=path,
        )
    if int(header["sform_code"]) > 0:
        rows = [header["srow_x"], header["srow_y"], header["srow_z"]]
        matrix = np.array([[float(v) for v in r[:3]] for r in rows])
        if not np.all(np.isfinite(matrix)) or not np.all(np.isfinite([float(r[3]) for r in rows])):
            raise InputError("the NIfTI sform (srow_x/y/z) holds NaN or Inf", path=path)
        check_direction(matrix, path, field="NIfTI sform (srow_x/y/z)", scaled=True)
    if int(header["qform_code"]) > 0:
        values = [float(header[k]) for k in ("quatern_b", "quatern_c", "quatern_d", "qoffset_x", "qoffset_y")]
        values.append(float(header["qoffset_z"]))
        if not all(math.isfinite(v) for v in values):
            raise InputError("the NIfTI qform (quatern_b/c/d, qoffset) holds NaN or Inf", path=path)


def check_direction(matrix, path: Path, *, field: str, scaled: bool = False) -> None:
    """A direction (or, with ``scaled``, direction x spacing) matrix must be a rotation: orthonormal columns."""
    m = np.asarray(matrix, dtype=float)
    if scaled:
        norms = np.linalg.norm(m, axis=0)
        if not np.all(np.isfinite(norms)) or np.any(norms <= 0):
            raise InputError(f"the {field} has a zero axis (no voxel spacing)", path=path)
        m = m / norms
    if not np.all(np.isfinite(m)) or not np.allclose(m.T @ m, np.eye(len(m)), atol=ORTHO_TOL):
        raise InputError(
            f"the direction matrix ({field}) is not orthonormal (sheared or scaled axes); "
            "resample the image onto an orthogonal grid first",
            path=path,
        )


def check_spacing(spacing_xyz, path: Path, *, field: str) -> None:
    """Every voxel spacing finite and > 0 (``field`` names where it came from, for the message)."""
    bad = [(axis, float(v)) for axis, v in zip("xyz", spacing_xyz) if not (math.isfinite(v) and v > 0)]
    if bad:
        shown = ", ".join(f"{axis} {v:g}" for axis, v in bad)
        raise InputError(f"voxel spacing ({field}) must be a positive number, got {shown}", path=path)


def check_sitk_geometry(spacing_xyz, direction, path: Path) -> None:
    """Spacing and direction as ITK read them (any format)."""
    check_spacing(spacing_xyz, path, field="image header")
    n = len(spacing_xyz)
    check_direction(np.reshape(direction, (n, n)), path, field="direction cosines")


def nifti_data_check(path: Path, header) -> None:
    """The file holds as many bytes as the NIfTI header says (decompressing a .nii.gz to its end)."""
    shape = header.get_data_shape()
    need = (
        int(header.get_data_offset()) + int(np.prod(shape, dtype=np.int64)) * header.get_data_dtype().itemsize
    )
    try:
        have = gzip_size(path) if _is_gzip(path) else path.stat().st_size
    except InputError as exc:
        if "truncated" not in exc.message:
            raise
        raise InputError(f"{exc.message}; its header needs {need} bytes", path=path) from None
    if have < need:
        raise InputError(
            f"file is truncated: {have} bytes of the {need} that its header needs "
            f"({' x '.join(map(str, shape))} {header.get_data_dtype()})",
            path=path,
        )


_META_DTYPES = {
    "MET_CHAR": 1,
    "MET_UCHAR": 1,
    "MET_SHORT": 2,
    "MET_USHORT": 2,
    "MET_INT": 4,
    "MET_UINT": 4,
    "MET_LONG": 4,
    "MET_ULONG": 4,
    "MET_LONG_LONG": 8,
    "MET_ULONG_LONG": 8,
    "MET_FLOAT": 4,
    "MET_DOUBLE": 8,
}


def metaimage_data_check(path: Path) -> None:
    """A single-file MetaImage (.mha, ElementDataFile = LOCAL) holds the bytes its header says."""
    with open(path, "rb") as handle:
        head = handle.read(1 << 16)
    match = re.search(rb"ElementDataFile\s*=\s*LOCAL\r?\n", head)
    if match is None:
        return
    fields = {}
    for line in head[: match.start()].decode("latin-1").splitlines():
        key, _, value = line.partition("=")
        fields[key.strip()] = value.strip()
    have = path.stat().st_size - match.end()
    if fields.get("CompressedData", "False").lower() == "true":
        need = int(fields.get("CompressedDataSize", "0") or 0)
    else:
        try:
            dims = [int(v) for v in fields.get("DimSize", "").split()]
            channels = int(fields.get("ElementNumberOfChannels", "1") or 1)
            need = int(np.prod(dims, dtype=np.int64)) * channels * _META_DTYPES[fields.get("ElementType", "")]
        except (ValueError, KeyError):
            return  # ITK says what is wrong with the header
    if need and have < need:
        raise InputError(f"file is truncated: {have} bytes of the {need} that its header needs", path=path)


def verify_volume_file(path: str | Path, *, data: bool = True) -> None:
    """Refuse a volume file whose header geometry is impossible or that is truncated.

    Without ``data`` (a header probe in pre-flight) only what is cheap is checked: the size of an
    uncompressed file against its header; a gzip stream is read to its end only with ``data``.
    """
    path = Path(path)
    if path.exists() and not path.is_file():  # reading a pipe or device would wait forever
        raise InputError("not a regular file (a pipe or device?); give the image file itself", path=path)
    if path.is_file() and path.stat().st_size == 0:
        raise InputError("file is empty (0 bytes)", path=path)
    name = path.name.lower()
    if name.endswith((".nii", ".nii.gz")):
        header = _nifti_header(path)
        gz = _is_gzip(path)
        if header is not None and int(header.sizeof_hdr) == 540:  # ITK reads NIfTI-1 only
            raise InputError(
                "NIfTI-2 file, which this reader does not take: save it as NIfTI-1 (e.g. nibabel "
                "Nifti1Image(img.dataobj, img.affine)); sizes within NIfTI-1's limits lose nothing",
                path=path,
            )
        if header is not None:
            check_nifti_header(path, header)
            if data or not gz:
                nifti_data_check(path, header)
        elif data and gz:
            gzip_size(path)  # not NIfTI inside: at least the stream must be whole
    elif name.endswith(".mha"):
        metaimage_data_check(path)


_TRUNCATED = re.compile(
    r"fread got only|expected \d+ bytes but received|data not read completely|unexpected end"
)


def itk_read_error(text: str) -> str:
    """ITK's multi-line error as one phrase: 'truncated' when it says the data ran out, else its last line."""
    lines = [ln.strip() for ln in str(text).strip().splitlines() if ln.strip()]
    if any(_TRUNCATED.search(ln) for ln in lines):
        return "file is truncated (the image data end before the header's size)"
    if any("Refusing to change spacing" in ln for ln in lines):
        return "voxel spacing in the header must be a positive number"
    return f"cannot read image ({lines[-1] if lines else 'unknown error'})"
