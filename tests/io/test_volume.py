from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from medseg.errors import InputError
from medseg.io.volume import nifti_nonfinite, read_volume_sitk, write_volume_sitk


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
    assert nifti_nonfinite(tmp_path / "ok.nii.gz", chunk=1000) == 0  # chunks not aligned to voxels
    a[0, 0, 0] = np.nan
    sitk.WriteImage(sitk.GetImageFromArray(a), str(tmp_path / "bad.nii.gz"))
    assert nifti_nonfinite(tmp_path / "bad.nii.gz", chunk=1000) == 1
    sitk.WriteImage(sitk.GetImageFromArray(a.astype(np.int16)), str(tmp_path / "int.nii.gz"))
    assert nifti_nonfinite(tmp_path / "int.nii.gz") is None  # integers cannot hold NaN


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
