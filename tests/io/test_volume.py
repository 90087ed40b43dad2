from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from medseg.errors import InputError
from medseg.io.volume import (
    VolumeMeta,
    check_volume_output,
    nifti_nonfinite,
    read_volume_sitk,
    volume_shape,
    write_volume_sitk,
)


@pytest.mark.parametrize("name", ["v.nii.gz", "v.nii", "v.mha", "v.nrrd"])
def test_nan_voxels_are_an_error_in_every_format(tmp_path, name):
    a = np.ones((4, 5, 6), np.float32)
    a[1, 2, 3] = np.nan
    a[2, 2, 2] = np.inf
    sitk.WriteImage(sitk.GetImageFromArray(a), str(tmp_path / name))
    with pytest.raises(InputError, match="2 NaN/Inf voxels"):
        read_volume_sitk(tmp_path / name)


def test_nifti_raw_check(tmp_path):
    a = np.random.default_rng(0).random((7, 9, 11)).astype(np.float64)
    sitk.WriteImage(sitk.GetImageFromArray(a), str(tmp_path / "ok.nii.gz"))
    assert nifti_nonfinite(tmp_path / "ok.nii.gz", max_voxels=150) == 0  # streamed in slabs of 1-2 slices
    a[0, 0, 0] = np.nan
    a[6, 8, 10] = -np.inf  # first and last voxel: both slab ends are read
    sitk.WriteImage(sitk.GetImageFromArray(a), str(tmp_path / "bad.nii.gz"))
    assert nifti_nonfinite(tmp_path / "bad.nii.gz", max_voxels=150) == 2
    assert nifti_nonfinite(tmp_path / "bad.nii.gz") == 2  # one slab
    sitk.WriteImage(
        sitk.GetImageFromArray(np.nan_to_num(a, posinf=0, neginf=0).astype(np.int16)),
        str(tmp_path / "int.nii.gz"),
    )
    assert nifti_nonfinite(tmp_path / "int.nii.gz") is None  # integers cannot hold NaN
    sitk.WriteImage(sitk.GetImageFromArray(a), str(tmp_path / "bad.mha"))
    assert nifti_nonfinite(tmp_path / "bad.mha") is None  # not NIfTI: SimpleITK keeps NaN there itself
    (tmp_path / "junk.nii").write_bytes(b"not nifti")
    assert nifti_nonfinite(tmp_path / "junk.nii") is None


def test_nan_in_nifti2_is_found(tmp_path):
    import nibabel as nib

    a = np.ones((3, 4, 5), np.float32)
    a[1, 1, 1] = np.nan
    nib.save(nib.Nifti2Image(a, np.eye(4)), str(tmp_path / "v2.nii"))
    assert nifti_nonfinite(tmp_path / "v2.nii") == 1


def test_volume_output_extension_is_checked_before_writing(tmp_path):
    meta = VolumeMeta(
        spacing=(1.0, 1.0, 1.0),
        origin=(0.0, 0.0, 0.0),
        direction=(1, 0, 0, 0, 1, 0, 0, 0, 1),
        source="test",
        path="",
    )
    for bad in ("out", "out.xyz", "out.mhd", "out.nhdr"):
        with pytest.raises(InputError, match=r"\.nii\.gz, \.nii, \.nrrd, \.mha"):
            check_volume_output(tmp_path / bad)
        with pytest.raises(InputError):
            write_volume_sitk(tmp_path / bad, np.zeros((2, 3, 4)), meta)
        assert not list(tmp_path.iterdir())
    for good in ("a.nii.gz", "b.NII", "c.nrrd", "d.mha"):
        write_volume_sitk(tmp_path / good, np.zeros((2, 3, 4)), meta)
        assert volume_shape(tmp_path / good) == (2, 3, 4)


def test_round_trip_keeps_geometry(tmp_path):
    a = np.random.default_rng(1).normal(0, 300, (5, 6, 7)).astype(np.float32)
    img = sitk.GetImageFromArray(a)
    img.SetSpacing((0.7, 0.8, 2.5))
    img.SetOrigin((-10.0, 5.0, 3.0))
    sitk.WriteImage(img, str(tmp_path / "in.nii.gz"))
    arr, meta = read_volume_sitk(tmp_path / "in.nii.gz")
    assert meta.spacing == pytest.approx((2.5, 0.8, 0.7))
    write_volume_sitk(tmp_path / "out.nii.gz", arr, meta)
    back, meta2 = read_volume_sitk(tmp_path / "out.nii.gz")
    assert np.abs(back - np.rint(a)).max() == 0 and meta2.origin == pytest.approx(meta.origin)
