"""Real cases as they come: naming families, ambiguity, geometry, 4D files, skull stripping, bad labels."""

from __future__ import annotations

import logging
import shutil

import numpy as np
import pytest
import SimpleITK as sitk

from medseg.brain.io import find_case_files, labels_to_internal, load_case, read_image, skull_strip_warning
from medseg.errors import InputError

BRATS21 = {"t1": "t1", "t1c": "t1ce", "t2": "t2", "flair": "flair", "seg": "seg"}

# family -> file name per modality (``{c}`` is the case name)
FAMILIES = {
    "brats2018": {m: f"Brats18_TCIA_{{c}}_{t}.nii.gz" for m, t in BRATS21.items()},
    "brats2021": {m: f"BraTS2021_{{c}}_{t}.nii.gz" for m, t in BRATS21.items()},
    "brats2023": {
        "t1": "BraTS-GLI-{c}-000-t1n.nii.gz",
        "t1c": "BraTS-GLI-{c}-000-t1c.nii.gz",
        "t2": "BraTS-GLI-{c}-000-t2w.nii.gz",
        "flair": "BraTS-GLI-{c}-000-t2f.nii.gz",
        "seg": "BraTS-GLI-{c}-000-seg.nii.gz",
    },
    "plain": {"t1": "t1.nii.gz", "t1c": "t1c.nii.gz", "t2": "t2.nii.gz", "flair": "flair.nii.gz"},
    "plain-mixed-case": {"t1": "T1.nii.gz", "t1c": "T1c.NII.GZ", "t2": "T2.nii", "flair": "FLAIR.nii.gz"},
    "post-contrast": {
        "t1": "T1w.nii.gz",
        "t1c": "T1_post.nii.gz",
        "t2": "T2w.nii.gz",
        "flair": "T2-FLAIR.nii.gz",
    },
    "gd": {
        "t1": "sub-01_t1.nii.gz",
        "t1c": "sub-01_t1gd.nii.gz",
        "t2": "sub-01_t2.nii.gz",
        "flair": "sub-01_t2_flair.nii.gz",
    },
    "ce-upper": {
        "t1": "Case7_T1.mha",
        "t1c": "Case7_T1CE.mha",
        "t2": "Case7_T2.mha",
        "flair": "Case7_Flair.mha",
    },
}


def _src(case, mod):
    return case / f"{case.name}_{BRATS21[mod]}.nii.gz"


def _make(tmp_path, src_case, names: dict[str, str], folder="case"):
    dst = tmp_path / folder
    dst.mkdir(parents=True)
    for mod, name in names.items():
        target = dst / name.format(c="00042")
        if name.lower().endswith(".nii.gz"):
            shutil.copy(_src(src_case, mod), target)
        else:  # other formats written by SimpleITK (.nii, .mha)
            sitk.WriteImage(sitk.ReadImage(str(_src(src_case, mod))), str(target))
    return dst


@pytest.mark.parametrize("family", FAMILIES)
def test_naming_families_are_recognised_and_logged(family, brain_cases, tmp_path, caplog):
    names = FAMILIES[family]
    case = _make(tmp_path, brain_cases[0], names)
    with caplog.at_level(logging.INFO, logger="medseg.brain"):
        files = find_case_files(case)
    for mod in ("t1", "t1c", "t2", "flair"):
        assert files.modalities[mod].name == names[mod].format(c="00042"), mod
        assert f"{mod}={files.modalities[mod].name}" in caplog.text
    assert (files.seg is not None) == ("seg" in names)
    stack, _ = load_case(files)  # each modality read from its own file, in T1, T1c, T2, FLAIR order
    ref, _ = load_case(find_case_files(brain_cases[0]))
    assert np.array_equal(stack, ref)


def test_ambiguous_folder_names_both_candidates(brain_cases, tmp_path):
    case = _make(tmp_path, brain_cases[0], FAMILIES["brats2021"])
    shutil.copy(_src(brain_cases[0], "t1c"), case / "T1_post.nii.gz")
    with pytest.raises(InputError, match="ambiguous t1c") as err:
        find_case_files(case)
    assert "BraTS2021_00042_t1ce.nii.gz" in str(err.value) and "T1_post.nii.gz" in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("family", ["brats2023", "plain-mixed-case", "post-contrast"])
def test_missing_modality_is_one_line_naming_it(family, brain_cases, tmp_path):
    names = {m: n for m, n in FAMILIES[family].items() if m != "t2"}
    case = _make(tmp_path, brain_cases[0], names)
    with pytest.raises(InputError, match="missing modality t2") as err:
        find_case_files(case)
    assert "\n" not in str(err.value)


def test_unrelated_files_are_not_modalities(brain_cases, tmp_path):
    case = _make(tmp_path, brain_cases[0], FAMILIES["plain"])
    for extra in ("brainmask.nii.gz", "notes.txt", "t1_to_mni.mat"):
        (case / extra).write_bytes(b"")
    assert sorted(p.name for p in find_case_files(case).modalities.values()) == [
        "flair.nii.gz",
        "t1.nii.gz",
        "t1c.nii.gz",
        "t2.nii.gz",
    ]


def test_geometry_mismatch_named_or_resampled_with_warning(brain_cases, tmp_path):
    case = _make(tmp_path, brain_cases[0], FAMILIES["plain"])
    img = sitk.ReadImage(str(case / "t1.nii.gz"))
    img.SetSpacing(tuple(s * 1.1 for s in img.GetSpacing()))
    sitk.WriteImage(img, str(case / "t1.nii.gz"))
    with pytest.raises(InputError, match=r"t1 and t1c are on different grids \(spacing"):
        load_case(find_case_files(case))
    warnings: list[str] = []
    stack, geo = load_case(find_case_files(case), resample_to_modality="t1c", warnings=warnings)
    assert (
        stack.shape[1:] == geo.shape
        and len(warnings) == 1
        and "t1 resampled onto the t1c grid" in warnings[0]
    )


def test_4d_file_where_3d_expected(brain_cases, tmp_path):
    case = _make(tmp_path, brain_cases[0], FAMILIES["plain"])
    arr = sitk.GetArrayFromImage(sitk.ReadImage(str(case / "flair.nii.gz")))
    sitk.WriteImage(sitk.GetImageFromArray(np.stack([arr, arr]), isVector=False), str(case / "flair.nii.gz"))
    with pytest.raises(InputError, match="4D image .* where one 3D volume is expected") as err:
        load_case(find_case_files(case))
    assert err.value.path.name == "flair.nii.gz"
    # a 4D file with a single volume (some exporters) is read as the 3D volume it is
    sitk.WriteImage(sitk.GetImageFromArray(arr[None], isVector=False), str(case / "flair.nii.gz"))
    assert read_image(case / "flair.nii.gz")[0].shape == arr.shape


def test_all_zero_modality(brain_cases, tmp_path):
    case = _make(tmp_path, brain_cases[0], FAMILIES["plain"])
    img = sitk.ReadImage(str(case / "t1c.nii.gz"))
    zero = sitk.GetImageFromArray(np.zeros(sitk.GetArrayFromImage(img).shape, np.float32))
    zero.CopyInformation(img)
    sitk.WriteImage(zero, str(case / "t1c.nii.gz"))
    with pytest.raises(InputError, match="t1c image is all zero") as err:
        load_case(find_case_files(case))
    assert err.value.path.name == "t1c.nii.gz"


@pytest.mark.parametrize("labels, bad", [("brats2021", 3), ("brats2023", 4), ("brats2021", 7)])
def test_truth_labels_outside_convention(labels, bad):
    seg = np.zeros((2, 4, 4), np.int64)
    seg[0, 1, 1] = bad
    with pytest.raises(InputError, match=rf"label values \[{bad}\] are not in the {labels} convention"):
        labels_to_internal(seg, labels=labels)


def test_skull_strip_warning_on_head_with_scalp_and_background():
    from medseg.synthetic.brain import BrainPhantomConfig, make_brain_case

    stripped = make_brain_case(5003)
    head = make_brain_case(5003, BrainPhantomConfig(skull_strip=False))
    mods = ("t1", "t1c", "t2", "flair")
    assert skull_strip_warning(np.stack([stripped.images[m] for m in mods])) is None
    raw = np.stack([head.images[m] for m in mods])
    outside = ~head.brain_mask  # a bright scalp shell and a non-zero background outside the brain
    assert np.percentile(raw[0][outside], 99) > np.median(raw[0][head.brain_mask]) and np.all(raw[0] != 0)
    msg = skull_strip_warning(raw, name="HEAD")
    assert msg is not None and "skull-stripped BraTS-style input" in msg and msg.startswith("HEAD: ")
