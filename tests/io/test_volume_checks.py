"""The volume file checks: a whole gzip stream (CRC and length), data size against the header, geometry."""

from __future__ import annotations

import gzip
import struct
import zlib

import numpy as np
import pytest
import SimpleITK as sitk

from medseg.errors import InputError
from medseg.io.volume import read_volume_sitk, volume_shape
from medseg.io.volume_checks import (
    check_direction,
    check_spacing,
    gzip_size,
    itk_read_error,
    verify_volume_file,
)


def test_gzip_size_reads_every_member_and_ignores_zero_padding(tmp_path, monkeypatch):
    import medseg.io.volume_checks as vc

    monkeypatch.setattr(vc, "CHUNK", 64)  # many chunks and output limits on a small file
    monkeypatch.setattr(vc, "MAX_OUT", 100)
    a, b = bytes(range(256)) * 40, b"\0" * 50_000
    path = tmp_path / "x.gz"
    path.write_bytes(gzip.compress(a) + gzip.compress(b) + b"\0" * 300)
    assert gzip_size(path) == len(a) + len(b)


def test_gzip_size_refuses_truncated_and_corrupt_streams(tmp_path):
    data = gzip.compress(np.random.default_rng(0).bytes(20_000))
    (tmp_path / "cut.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="truncated"):
        gzip_size(tmp_path / "cut.gz")
    (tmp_path / "no_trailer.gz").write_bytes(data[:-8])  # all the data, but no CRC/length trailer
    with pytest.raises(InputError, match="truncated"):
        gzip_size(tmp_path / "no_trailer.gz")
    bad_crc = bytearray(data)
    bad_crc[-8:-4] = struct.pack("<I", (zlib.crc32(b"other") & 0xFFFFFFFF))
    (tmp_path / "crc.gz").write_bytes(bytes(bad_crc))
    with pytest.raises(InputError, match="corrupt"):
        gzip_size(tmp_path / "crc.gz")


@pytest.mark.parametrize("name", ["v.nii.gz", "v.nii", "v.mha", "v.nrrd"])
def test_truncated_volume_is_refused_by_the_reader_not_by_the_header_probe(tmp_path, name):
    image = sitk.GetImageFromArray(np.random.default_rng(1).normal(size=(6, 20, 30)).astype(np.float32))
    sitk.WriteImage(image, str(tmp_path / name), useCompression=name.endswith((".mha", ".nrrd")))
    read_volume_sitk(tmp_path / name)  # whole: fine
    data = (tmp_path / name).read_bytes()
    (tmp_path / name).write_bytes(data[: len(data) * 2 // 3])
    if name in ("v.nii.gz", "v.nrrd"):  # compressed: the header probe (pre-flight) does not decompress
        assert volume_shape(tmp_path / name) == (6, 20, 30)
    else:  # uncompressed: its size is checked against the header already in pre-flight
        with pytest.raises(InputError, match="truncated"):
            volume_shape(tmp_path / name)
    with pytest.raises(InputError, match="truncated"):
        read_volume_sitk(tmp_path / name)


def _nifti_with(tmp_path, offset: int, fmt: str, value) -> str:
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((3, 4, 5), np.int16)), str(tmp_path / "v.nii"))
    raw = bytearray((tmp_path / "v.nii").read_bytes())
    raw[offset : offset + struct.calcsize(fmt)] = struct.pack(fmt, value)
    (tmp_path / "v.nii").write_bytes(bytes(raw))
    return str(tmp_path / "v.nii")


@pytest.mark.parametrize(("axis", "value"), [(1, 0.0), (2, -1.0), (3, float("nan")), (3, float("inf"))])
def test_bad_pixdim_is_named(tmp_path, axis, value):
    path = _nifti_with(tmp_path, 76 + 4 * axis, "<f", value)
    for probe in (volume_shape, read_volume_sitk):
        with pytest.raises(InputError, match=r"NIfTI pixdim.*" + "xyz"[axis - 1]):
            probe(path)


def test_nan_in_sform_is_named(tmp_path):
    path = _nifti_with(tmp_path, 280 + 4, "<f", float("nan"))  # srow_x[1]
    with pytest.raises(InputError, match="sform"):
        verify_volume_file(path)


def test_geometry_checks():
    check_spacing((0.5, 0.5, 2.0), "p", field="spacing")
    for bad in ((0.0, 1, 1), (1, -1, 1), (1, 1, float("nan"))):
        with pytest.raises(InputError, match="positive"):
            check_spacing(bad, "p", field="spacing")
    rotation = np.array([[0, -1, 0], [1, 0, 0], [0, 0, 1.0]])
    check_direction(rotation, "p", field="d")
    check_direction(rotation * [0.5, 0.5, 3.0], "p", field="d", scaled=True)
    with pytest.raises(InputError, match="not orthonormal"):
        check_direction([[1, 0.3, 0], [0, 1, 0], [0, 0, 1]], "p", field="d")
    with pytest.raises(InputError, match="zero axis"):
        check_direction(np.diag([1.0, 0.0, 1.0]), "p", field="d", scaled=True)


def test_itk_errors_in_words():
    assert "truncated" in itk_read_error(
        "ITK ERROR\n[nrrd] _nrrdEncodingRaw_read: fread got only 11 4-byte things"
    )
    assert "spacing" in itk_read_error("Refusing to change spacing from [1, 1, 1] to [0, 1, 1]")
    assert itk_read_error("a\nb: last line\n") == "cannot read image (b: last line)"
