"""What the method assumes of its input (medseg.brain.checks): refused in words, real MRI never refused."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from medseg.brain.io import case_from_paths, find_case_files, load_case
from medseg.errors import InputError

REAL_BRATS = Path(__file__).resolve().parents[2].parent / "shared" / "realdata" / "brain_brats2018"
REAL_CT = Path(__file__).resolve().parents[1] / "data" / "real" / "ct_philips" / "UB"


def _copy_case(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _file(case: Path, tag: str) -> Path:
    return case / f"{case.name}_{tag}.nii.gz"


def _rewrite(path: Path, fn) -> None:
    """Replace ``path``'s voxels by ``fn(voxels)`` keeping its geometry (optionally new spacing)."""
    img = sitk.ReadImage(str(path))
    arr = sitk.GetArrayFromImage(img).astype(np.float32)
    out = fn(arr, img)
    new = sitk.GetImageFromArray(out)
    new.CopyInformation(img)
    sitk.WriteImage(new, str(path))


def test_same_path_for_two_modalities_is_refused(brain_cases):
    case = brain_cases[0]
    with pytest.raises(InputError, match="t1 and t1c are the same file"):
        case_from_paths(
            t1=_file(case, "t1"), t1c=_file(case, "t1"), t2=_file(case, "t2"), flair=_file(case, "flair")
        )


def test_one_file_for_all_four_names_every_modality(brain_cases):
    f = _file(brain_cases[0], "flair")
    with pytest.raises(InputError, match="t1, t1c, t2 and flair are the same file"):
        case_from_paths(t1=f, t1c=f, t2=f, flair=f)


def test_symlink_and_byte_copy_in_a_case_folder_are_refused(brain_cases, tmp_path):
    case = _copy_case(brain_cases[0], tmp_path / "SYN_5001")
    _file(case, "t2").unlink()
    _file(case, "t2").symlink_to(_file(case, "flair"))
    with pytest.raises(InputError, match="t2 and flair are the same file"):
        find_case_files(case)
    _file(case, "t2").unlink()
    shutil.copy(_file(case, "flair"), _file(case, "t2"))  # a byte-identical copy
    with pytest.raises(InputError, match="t2 and flair are the same file"):
        find_case_files(case)


def test_same_voxels_in_other_files_are_refused(brain_cases, tmp_path):
    """T1 re-saved uncompressed as T1c: different bytes, same image."""
    case = _copy_case(brain_cases[0], tmp_path / "SYN_5001")
    _file(case, "t1ce").unlink()
    sitk.WriteImage(sitk.ReadImage(str(_file(case, "t1"))), str(case / "SYN_5001_t1ce.nii"))
    with pytest.raises(InputError, match="t1 and t1c hold identical voxel data"):
        load_case(find_case_files(case))


def test_ct_in_hounsfield_units_is_refused(brain_cases, tmp_path):
    """A CT of the same head (air -1000, brain 30 HU, skull 1500) given as T1."""
    case = _copy_case(brain_cases[0], tmp_path / "SYN_5001")

    def to_ct(arr, img):
        from scipy import ndimage as ndi

        brain = arr > 0
        skull = ndi.binary_dilation(brain, iterations=2) & ~brain
        return np.where(brain, 30.0, np.where(skull, 1500.0, -1000.0)).astype(np.float32)

    _rewrite(_file(case, "t1"), to_ct)
    with pytest.raises(InputError, match=r"t1 image: values look like CT Hounsfield units \(-1000 to 1500"):
        load_case(find_case_files(case))


@pytest.mark.skipif(not REAL_CT.is_dir(), reason="tests/data/real/ct_philips not present")
def test_real_ct_series_given_as_flair_is_refused(brain_cases):
    case = brain_cases[0]
    files = case_from_paths(
        t1=_file(case, "t1"), t1c=_file(case, "t1ce"), t2=_file(case, "t2"), flair=REAL_CT
    )
    with pytest.raises(InputError, match="flair image: values look like CT Hounsfield units"):
        load_case(files)


def test_whole_body_field_of_view_is_refused(brain_cases, tmp_path):
    """The same voxels at 30 mm slices: 720 mm of content along z, no head is that long."""
    case = _copy_case(brain_cases[0], tmp_path / "SYN_5001")
    for tag in ("t1", "t1ce", "t2", "flair"):
        img = sitk.ReadImage(str(_file(case, tag)))
        img.SetSpacing((3.0, 3.0, 30.0))
        sitk.WriteImage(img, str(_file(case, tag)))
    with pytest.raises(InputError, match=r"mm long along z \(slices\).*whole-body"):
        load_case(find_case_files(case))


def test_spacing_in_wrong_units_leaves_no_brain(brain_cases, tmp_path):
    """Spacing written in cm (0.3 x 0.3 x 0.5): the brain would be about 1 mL."""
    case = _copy_case(brain_cases[0], tmp_path / "SYN_5001")
    for tag in ("t1", "t1ce", "t2", "flair"):
        img = sitk.ReadImage(str(_file(case, tag)))
        img.SetSpacing((0.3, 0.3, 0.5))
        sitk.WriteImage(img, str(_file(case, tag)))
    with pytest.raises(InputError, match="too small for a brain"):
        load_case(find_case_files(case))


def test_synthetic_cases_and_sample_data_are_accepted(brain_cases):
    sample = Path(__file__).resolve().parents[2] / "sample_data" / "brain"
    cases = [*brain_cases, *sorted(p for p in sample.iterdir() if p.is_dir())]
    for case in cases:
        stack, _ = load_case(find_case_files(case))
        assert stack.shape[0] == 4


@pytest.mark.skipif(not REAL_BRATS.is_dir(), reason="../shared/realdata/brain_brats2018 not present")
def test_real_brats_mri_is_not_refused():
    """Every real BraTS 2018 case passes all checks (same-file, CT, extent, brain size)."""
    cases = sorted(p for p in REAL_BRATS.iterdir() if p.is_dir())
    assert cases
    for case in cases:
        stack, geo = load_case(find_case_files(case))
        assert stack.shape == (4, 155, 240, 240) and geo.spacing == (1.0, 1.0, 1.0), case.name
