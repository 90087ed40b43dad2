"""Case folders, BraTS naming, geometry checks, bad input, label conventions."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import SimpleITK as sitk

from medseg.brain.io import (
    case_from_paths,
    expand_case_dirs,
    find_case_files,
    labels_from_internal,
    labels_to_internal,
    load_case,
)
from medseg.errors import InputError


def _copy(case_dir, tmp_path):
    dst = tmp_path / case_dir.name
    shutil.copytree(case_dir, dst)
    return dst


def test_brats2023_naming_and_cohort_folder(brain_cases, tmp_path):
    src = brain_cases[0]
    dst = tmp_path / "cohort" / "BraTS-GLI-00001-000"
    dst.mkdir(parents=True)
    for old, new in (("t1", "t1n"), ("t1ce", "t1c"), ("t2", "t2w"), ("flair", "t2f"), ("seg", "seg")):
        shutil.copy(src / f"{src.name}_{old}.nii.gz", dst / f"{dst.name}-{new}.nii.gz")
    files = find_case_files(dst)
    assert files.modalities["t1c"].name.endswith("-t1c.nii.gz") and files.modalities["t1"].name.endswith(
        "-t1n.nii.gz"
    )
    assert files.seg is not None
    assert expand_case_dirs([tmp_path / "cohort"]) == [dst]


def test_missing_modality(brain_cases, tmp_path):
    case = _copy(brain_cases[0], tmp_path)
    (case / f"{case.name}_flair.nii.gz").unlink()
    with pytest.raises(InputError, match="missing modality flair"):
        find_case_files(case)
    with pytest.raises(InputError, match="missing modality t2"):
        case_from_paths(
            t1=case / f"{case.name}_t1.nii.gz", t1c=case / f"{case.name}_t1ce.nii.gz", t2=None, flair=None
        )


def _rewrite(path, fn):
    img = sitk.ReadImage(str(path))
    new = fn(img)
    sitk.WriteImage(new, str(path))


def test_mismatched_geometry_fails_or_resamples(brain_cases, tmp_path):
    case = _copy(brain_cases[0], tmp_path)
    t2 = case / f"{case.name}_t2.nii.gz"

    def shift(img):
        img.SetOrigin(tuple(o + 4.5 for o in img.GetOrigin()))
        return img

    _rewrite(t2, shift)
    with pytest.raises(InputError, match="different grids.*--resample-to"):
        load_case(find_case_files(case))
    stack, geo = load_case(find_case_files(case), resample_to_modality="t1c")
    assert stack.shape == (4, 24, 64, 64)
    ref, _ = load_case(find_case_files(brain_cases[0]))
    # resampled T2 is the original shifted by 1.5 voxels in x (and y, z): interior still close, not equal
    assert not np.allclose(stack[2], ref[2])


def test_2d_image_rejected(brain_cases, tmp_path):
    case = _copy(brain_cases[0], tmp_path)
    _rewrite(case / f"{case.name}_t1.nii.gz", lambda img: img[:, :, 10])
    with pytest.raises(InputError, match="2D image"):
        load_case(find_case_files(case))


@pytest.mark.parametrize("kind", ["zero", "nan", "nan-nifti"])
def test_zero_and_nan_channels(brain_cases, tmp_path, kind):
    case = _copy(brain_cases[0], tmp_path)

    def corrupt(img):
        arr = sitk.GetArrayFromImage(img)
        if kind == "zero":
            arr[:] = 0
        else:
            arr[5, 30, 30] = np.nan
        out = sitk.GetImageFromArray(arr)
        out.CopyInformation(img)
        return out

    src = case / f"{case.name}_flair.nii.gz"
    if kind == "nan":  # MHA keeps NaN; NIfTI is checked raw (ITK's reader turns NaN into 0)
        sitk.WriteImage(sitk.ReadImage(str(src)), str(case / f"{case.name}_flair.mha"))
        src.unlink()
        src = case / f"{case.name}_flair.mha"
    _rewrite(src, corrupt)
    with pytest.raises(InputError, match="all zero" if kind == "zero" else "NaN") as err:
        load_case(find_case_files(case))
    if kind != "zero":
        assert err.value.path == src


def test_label_conventions_roundtrip():
    internal = np.array([0, 1, 2, 3, 4], np.uint8)
    assert labels_from_internal(internal, labels="brats2021").tolist() == [0, 1, 2, 1, 4]
    assert labels_from_internal(internal, labels="brats2023").tolist() == [0, 1, 2, 1, 3]
    assert labels_from_internal(internal, labels="havaei").tolist() == [0, 1, 2, 3, 4]
    assert labels_to_internal(np.array([0, 1, 2, 3]), labels="brats2023").tolist() == [0, 1, 2, 4]
    with pytest.raises(InputError, match="not in the brats2021"):
        labels_to_internal(np.array([0, 3]), labels="brats2021")


def test_dicom_series_folder_per_modality(tmp_path):
    from medseg.io.dicom import new_uid
    from medseg.io.dicom_write import write_ct_series
    from medseg.synthetic.brain import make_brain_case

    case = make_brain_case(1)
    root = tmp_path / "DCM_1"
    study, frame = new_uid("study"), new_uid("frame")
    for i, (mod, folder) in enumerate((("t1", "t1"), ("t1c", "t1ce"), ("t2", "t2"), ("flair", "flair"))):
        write_ct_series(
            root / folder,
            case.images[mod],
            spacing_zyx=case.spacing,
            kernel="",
            study_uid=study,
            series_uid=new_uid(mod),
            frame_uid=frame,
            series_number=i + 1,
            description=mod,
            rescale_intercept=0.0,
        )
    files = find_case_files(root)
    assert files.modalities["t1c"].name == "t1ce"
    stack, geo = load_case(files)
    assert stack.shape == (4, 24, 64, 64) and geo.spacing == (5.0, 3.0, 3.0)
    assert np.abs(stack[3] - case.images["flair"]).max() <= 0.5 + 1e-3  # integer storage
