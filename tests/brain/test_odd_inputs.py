"""Odd real-world inputs found in the robustness audit: voxel order, output folders inside a cohort,
a file --out for a batch, binary masks given to brain-eval."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from click.testing import CliRunner
from medseg_cli.main import cli

from medseg.brain.evaluate import resolve_labels
from medseg.brain.io import Geometry, expand_case_dirs, read_image
from medseg.brain.orientation import axis_codes, to_training_orientation
from medseg.errors import InputError

MODS = ("t1", "t1ce", "t2", "flair", "seg")


def _run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def _reoriented_copy(
    case: Path, dst: Path, order: tuple[int, int, int], flips: tuple[bool, bool, bool]
) -> Path:
    """The case with its voxel axes permuted/flipped, same patient geometry (SimpleITK keeps it)."""
    dst.mkdir(parents=True)
    for m in MODS:
        img = sitk.ReadImage(str(case / f"{case.name}_{m}.nii.gz"))
        out = sitk.Flip(sitk.PermuteAxes(img, list(order)), list(flips))
        sitk.WriteImage(out, str(dst / f"{dst.name}_{m}.nii.gz"))
    return dst


ORIENTATIONS = {  # (PermuteAxes order, Flip axes) -> x, y, z anatomical codes
    "sagittal": ((1, 2, 0), (False, False, False)),
    "coronal-inferior": ((0, 2, 1), (False, True, False)),
    "ras": ((0, 1, 2), (True, True, False)),
}


@pytest.mark.parametrize("name", ORIENTATIONS)
def test_reorientation_recovers_the_training_order_and_back(brain_cases, tmp_path, name):
    case = brain_cases[0]
    ref, ref_geo = read_image(case / f"{case.name}_t1.nii.gz")
    other = _reoriented_copy(case, tmp_path / name, *ORIENTATIONS[name])
    arr, geo = read_image(other / f"{name}_t1.nii.gz")
    assert axis_codes(geo.direction) != "LPS" and arr.shape != ref.shape or name == "ras"
    out, out_geo, back = to_training_orientation(arr[None], geo)
    assert np.array_equal(out[0], ref)  # the same voxels, no interpolation
    assert out_geo.same_grid(ref_geo) == ""
    assert np.array_equal(back(out[0]), arr)


def test_training_order_is_left_alone():
    stack = np.zeros((4, 3, 4, 5), np.float32)
    geo = Geometry((3, 4, 5), (5.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    out, out_geo, back = to_training_orientation(stack, geo)
    labels = stack[0]
    assert out is stack and out_geo is geo and back(labels) is labels


def test_sagittal_case_is_segmented_like_the_axial_one(brain_cases, tmp_path):
    """A case stored sagittally: the nets see axial slices; the labels are written on the sagittal grid.

    Before the fix the slice net ran on sagittal slices (labels differed from the axial case's)."""
    case = brain_cases[0]
    sag = _reoriented_copy(case, tmp_path / "sag", *ORIENTATIONS["sagittal"])
    weights = Path(__file__).parents[2] / "medseg/weights/brain/brain_twopath_demo.safetensors"
    common = ["--weights", weights, "--no-n4", "--no-tta", "--device", "cpu", "-q", "--json"]
    outs = {}
    for c in (case, sag):
        res = _run("brain-segment", c, "--out", tmp_path / f"{c.name}.nii.gz", *common)
        assert res.exit_code == 0, res.output
        outs[c.name] = sitk.ReadImage(str(tmp_path / f"{c.name}.nii.gz"))
    sag_img, sag_t1 = outs["sag"], sitk.ReadImage(str(sag / "sag_t1.nii.gz"))
    assert sag_img.GetSize() == sag_t1.GetSize() and sag_img.GetDirection() == sag_t1.GetDirection()
    back_axial = sitk.Flip(sitk.PermuteAxes(sag_img, [2, 0, 1]), [False, False, False])
    assert np.array_equal(sitk.GetArrayFromImage(back_axial), sitk.GetArrayFromImage(outs[case.name]))


def _eval_cohort(brain_cases, tmp_path) -> Path:
    cohort = tmp_path / "cohort"
    for c in brain_cases:
        shutil.copytree(c, cohort / c.name)
    return cohort


def test_results_folder_inside_the_cohort_is_not_a_case(brain_cases, tmp_path):
    """brain-segment cohort/ --out cohort/results, then brain-eval cohort/ --pred cohort/results."""
    cohort = _eval_cohort(brain_cases, tmp_path)
    results = cohort / "results"
    results.mkdir()
    for c in brain_cases:  # the predictions a first brain-segment run left there
        shutil.copy(c / f"{c.name}_seg.nii.gz", results / f"{c.name}_seg.nii.gz")
    assert expand_case_dirs([cohort], exclude=[results]) == [cohort / c.name for c in brain_cases]
    assert expand_case_dirs([cohort], exclude=[results / "run2"]) == [cohort / c.name for c in brain_cases]
    shutil.rmtree(cohort / brain_cases[1].name)  # one case is enough for the command (a faster report)
    res = _run("brain-eval", cohort, "--pred", results, "--out", tmp_path / "qa", "--json", "-q")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert [i["name"] for i in doc["items"]] == [brain_cases[0].name]
    assert doc["items"][0]["metrics"]["dice_WT"] == 1.0


def test_second_segment_run_into_a_results_folder_inside_the_cohort(brain_cases, tmp_path):
    """The second run (--overwrite) must not take cohort/results for an input case (was exit 2)."""
    cohort = _eval_cohort(brain_cases[:1], tmp_path)
    weights = Path(__file__).parents[2] / "medseg/weights/brain/brain_twopath_demo.safetensors"
    args = ["brain-segment", cohort, "--out", cohort / "results", "--weights", weights, "--no-n4", "--no-tta"]
    args += ["--device", "cpu", "-q", "--json"]
    (cohort / "results").mkdir()  # made by a first run (or by the user beforehand)
    res = _run(*args)
    assert res.exit_code == 0, res.output
    assert [i["name"] for i in json.loads(res.stdout)["items"]] == [brain_cases[0].name]


def test_file_out_for_a_batch_is_refused_before_any_work(brain_cases, tmp_path):
    out = tmp_path / "seg.nii.gz"
    res = _run("brain-segment", *brain_cases, "--out", out, "--json", "--device", "cpu")
    assert res.exit_code == 2
    doc = json.loads(res.stdout)
    assert "names one label-map file but 2 cases" in doc["error"] and "seg.nii.gz" in doc["error"]
    assert not out.exists()  # no folder called seg.nii.gz


def test_binary_mask_is_not_scored_as_brats_labels(brain_cases, tmp_path):
    with pytest.raises(InputError, match="binary tumour mask"):
        resolve_labels({0, 1}, "auto")
    assert resolve_labels({0, 1}, "2018") == "brats2021"  # given: taken at its word
    assert resolve_labels({0}, "auto") == "brats2021"  # no tumour: scored the BraTS way
    case = tmp_path / brain_cases[0].name
    shutil.copytree(brain_cases[0], case)
    pred = tmp_path / "pred"
    pred.mkdir()
    seg = case / f"{case.name}_seg.nii.gz"
    shutil.copy(seg, pred / seg.name)
    img = sitk.ReadImage(str(seg))
    mask = sitk.GetImageFromArray((sitk.GetArrayFromImage(img) > 0).astype(np.uint8))
    mask.CopyInformation(img)
    sitk.WriteImage(mask, str(seg))  # the truth is now a whole-tumour mask
    res = _run("brain-eval", case, "--pred", pred, "--out", tmp_path / "qa", "--json")
    assert res.exit_code == 2, res.output
    err = json.loads(res.stdout)["error"]
    assert seg.name in err and "binary tumour mask" in err and "--labels 2018" in err
    assert not (tmp_path / "qa").exists() or not any((tmp_path / "qa").iterdir())


@pytest.mark.parametrize(
    ("names", "phrase"),
    [
        (("x_t1.hdr", "x_t1.img", "x_t1ce.hdr", "x_t1ce.img"), "x_t1.hdr, x_t1ce.hdr are Analyze/NIfTI-pair"),
        (
            ("x_t1.mgz", "x_t1ce.mgz", "x_t2.mgz", "x_flair.mgz"),
            "x_t1.mgz, x_t1ce.mgz, x_t2.mgz are FreeSurfer",
        ),
        (("IM0001.dcm", "IM0002.dcm"), "2 DICOM file(s) lie loose in the case folder"),
    ],
)
def test_missing_modality_says_which_files_are_in_a_format_not_read(tmp_path, names, phrase):
    """Right names, unread format: the message says so instead of only listing the expected names."""
    from medseg.brain.io import find_case_files

    case = tmp_path / "case"
    case.mkdir()
    for n in names:
        (case / n).write_bytes(b"\0" * 8)
    with pytest.raises(InputError) as exc:
        find_case_files(case)
    assert "missing modality" in str(exc.value) and phrase in str(exc.value)


def test_slab_of_a_few_slices_is_segmented_with_a_partial_coverage_warning(brain_cases, tmp_path):
    """Before: a 3-slice slab gave tumour volumes with exit 0 and no word that most of the brain was absent."""
    from medseg.brain.checks import partial_coverage_warning

    case = brain_cases[0]
    slab = tmp_path / "slab"
    slab.mkdir()
    for m in MODS:
        img = sitk.ReadImage(str(case / f"{case.name}_{m}.nii.gz"))
        sitk.WriteImage(img[:, :, 10:13], str(slab / f"slab_{m}.nii.gz"))
    weights = Path(__file__).parents[2] / "medseg/weights/brain/brain_twopath_demo.safetensors"
    res = _run(
        "brain-segment", slab, "--out", tmp_path / "out", "--weights", weights, "--no-n4", "--json", "-q"
    )
    assert res.exit_code == 0, res.output
    (warning,) = json.loads(res.stdout)["items"][0]["warnings"]
    assert "slab: the brain region spans only 15 mm superior-inferior" in warning and "volumes" in warning
    whole = np.ones((4, 30, 40, 40), np.float32)
    assert partial_coverage_warning(whole, (5.0, 4.0, 4.0)) is None  # 150 x 160 x 160 mm


def test_linearly_resampled_label_map_is_refused_not_rounded(brain_cases, tmp_path):
    """Between 2 (edema) and 4 (enhancing) a linear resampling writes 3: rounding invented labels."""
    from medseg.brain.io import integer_labels

    assert integer_labels(np.array([0.0, 2.0, 4.0000001])).tolist() == [0, 2, 4]
    case = tmp_path / brain_cases[0].name
    shutil.copytree(brain_cases[0], case)
    pred = tmp_path / "pred"
    pred.mkdir()
    seg = case / f"{case.name}_seg.nii.gz"
    shutil.copy(seg, pred / seg.name)
    img = sitk.ReadImage(str(seg), sitk.sitkFloat32)
    smooth = sitk.SmoothingRecursiveGaussian(img, 2.0)  # what a linear resampling does to edges
    sitk.WriteImage(smooth, str(seg))
    res = _run("brain-eval", case, "--pred", pred, "--out", tmp_path / "qa", "--json")
    assert res.exit_code == 2, res.output
    err = json.loads(res.stdout)["error"]
    assert seg.name in err and "non-integer values" in err and "nearest neighbour" in err


def test_prediction_stored_in_another_voxel_order_is_scored_on_the_truth_grid(brain_cases, tmp_path):
    """A RAS-stored prediction of the same voxels (another tool's export): scored, not refused."""
    case = brain_cases[0]
    seg = case / f"{case.name}_seg.nii.gz"
    pred = tmp_path / "pred"
    pred.mkdir()
    sitk.WriteImage(sitk.Flip(sitk.ReadImage(str(seg)), [True, True, False]), str(pred / seg.name))
    res = _run("brain-eval", case, "--pred", pred, "--out", tmp_path / "qa", "--json", "-q")
    assert res.exit_code == 0, res.output
    m = json.loads(res.stdout)["items"][0]["metrics"]
    assert m["dice_WT"] == 1.0 and m["dice_ET"] == 1.0 and m["hd95_TC"] == 0.0
    shifted = sitk.ReadImage(str(seg))
    shifted.SetOrigin([o + 7.0 for o in shifted.GetOrigin()])  # another grid: still refused
    sitk.WriteImage(shifted, str(pred / seg.name))
    res = _run("brain-eval", case, "--pred", pred, "--out", tmp_path / "qa2", "--json", "-q")
    assert res.exit_code == 2 and "grids differ" in json.loads(res.stdout)["error"]


def test_unreadable_flair_costs_the_figure_background_not_the_report(brain_cases, tmp_path):
    """The FLAIR is only drawn under the contours: a truncated one failed the whole batch (exit 2, no report)."""
    cohort = _eval_cohort(brain_cases[:1], tmp_path)
    name = brain_cases[0].name
    pred = tmp_path / "pred"
    pred.mkdir()
    shutil.copy(brain_cases[0] / f"{name}_seg.nii.gz", pred)
    flair = cohort / name / f"{name}_flair.nii.gz"
    flair.write_bytes(flair.read_bytes()[:20000])
    res = _run("brain-eval", cohort, "--pred", pred, "--out", tmp_path / "qa", "--json", "-q")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert [i["status"] for i in doc["items"]] == ["ok"] and doc["items"][0]["metrics"]["dice_WT"] == 1.0
    (warning,) = doc["warnings"]
    assert name in warning and flair.name in warning and "truncated" in warning
    assert (tmp_path / "qa" / "report.html").is_file()


def test_flair_in_another_voxel_order_is_reordered_under_the_contours(brain_cases, tmp_path):
    from medseg.brain.report import _background

    case = brain_cases[0]
    flair = case / f"{case.name}_flair.nii.gz"
    ref, geo = read_image(flair)
    ras = tmp_path / "flair_ras.nii.gz"
    sitk.WriteImage(sitk.Flip(sitk.ReadImage(str(flair)), [True, True, False]), str(ras))
    assert np.array_equal(_background(case.name, ras, geo, None), ref)  # same shape, was drawn mirrored
    small = tmp_path / "flair_small.nii.gz"
    sitk.WriteImage(sitk.ReadImage(str(flair))[::2, ::2, :], str(small))
    assert _background(case.name, small, geo, None) is None  # another grid: contours only


def test_labels_folder_beside_the_cases_is_not_a_case(brain_cases, tmp_path):
    """cohort/{case1, case2, labels}: was read as ONE case missing all four modalities (exit 2)."""
    cohort = _eval_cohort(brain_cases, tmp_path)
    (cohort / "labels").mkdir()
    shutil.copy(brain_cases[0] / f"{brain_cases[0].name}_seg.nii.gz", cohort / "labels")
    assert expand_case_dirs([cohort]) == [cohort / c.name for c in brain_cases]
    (cohort / "__MACOSX" / brain_cases[0].name).mkdir(parents=True)  # unzipped from a Mac's archive
    (cohort / "__MACOSX" / brain_cases[0].name / f"._{brain_cases[0].name}_t1.nii.gz").write_bytes(b"\0")
    assert expand_case_dirs([cohort]) == [cohort / c.name for c in brain_cases]
    lone = tmp_path / "lone"
    (lone / "seg").mkdir(parents=True)
    assert expand_case_dirs([lone]) == [lone]  # nothing else: the folder itself, whose error names it


def test_existing_folder_named_like_a_file_is_used_as_the_output_folder(brain_cases, tmp_path):
    """--out x.nii.gz that is an existing folder: was 'output exists', and with --overwrite 'Is a
    directory' after all the work; now the label map goes inside it, the folder's files untouched."""
    out = tmp_path / "results.nii.gz"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    weights = Path(__file__).parents[2] / "medseg/weights/brain/brain_twopath_demo.safetensors"
    case = brain_cases[0]
    res = _run(
        "brain-segment", case, "--out", out, "--weights", weights, "--no-n4", "--no-tta", "--json", "-q"
    )
    assert res.exit_code == 0, res.output
    assert (out / f"{case.name}_seg.nii.gz").is_file() and (out / "keep.txt").read_text() == "precious"


@pytest.mark.parametrize("as_mask", [False, True])
def test_label_map_or_mask_given_as_a_modality_is_refused(brain_cases, tmp_path, as_mask):
    """--flair <case>_seg.nii.gz segmented with exit 0 before (a label map is not a FLAIR)."""
    from medseg.brain.io import find_case_files, load_case

    case = tmp_path / "case"
    shutil.copytree(brain_cases[0], case)
    seg = sitk.ReadImage(str(case / f"{brain_cases[0].name}_seg.nii.gz"))
    t1 = sitk.ReadImage(str(case / f"{brain_cases[0].name}_t1.nii.gz"))
    fake = (t1 > 0) if as_mask else seg  # a brain mask, or the segmentation, saved as the FLAIR
    flair = case / f"{brain_cases[0].name}_flair.nii.gz"
    sitk.WriteImage(sitk.Cast(fake, sitk.sitkInt16), str(flair))
    with pytest.raises(InputError, match="a label map or mask, not an MRI image") as exc:
        load_case(find_case_files(case))
    assert exc.value.path == flair and "flair image" in str(exc.value)


def test_two_dicom_series_in_one_modality_folder_names_what_to_do(tmp_path):
    """The shared reader said 'choose one with --series-uid', an option brain-segment does not have."""
    from medseg.io.dicom import new_uid
    from medseg.io.dicom_write import write_ct_series
    from medseg.synthetic.brain import make_brain_case

    case = make_brain_case(1)
    folder = tmp_path / "t1"
    study, frame = new_uid("study"), new_uid("frame")
    for i, mod in enumerate(("t1", "t2")):
        write_ct_series(
            tmp_path / mod,
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
    for f in sorted((tmp_path / "t2").iterdir()):  # both series in the t1 folder
        f.rename(folder / f"t2_{f.name}")
    with pytest.raises(InputError) as exc:
        read_image(folder)
    msg = str(exc.value)
    assert "2 series found" in msg and "--series-uid" not in msg and "its own folder" in msg


def test_uncompressed_prediction_is_found(brain_cases, tmp_path):
    """brain-segment --out CASE_seg.nii writes .nii; brain-eval looked for .nii.gz only."""
    case = brain_cases[0]
    pred = tmp_path / "pred"
    pred.mkdir()
    sitk.WriteImage(sitk.ReadImage(str(case / f"{case.name}_seg.nii.gz")), str(pred / f"{case.name}_seg.nii"))
    res = _run("brain-eval", case, "--pred", pred, "--out", tmp_path / "qa", "--json", "-q")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["items"][0]["metrics"]["dice_WT"] == 1.0


def test_named_pipe_given_as_a_modality_is_refused_not_waited_on(brain_cases, tmp_path):
    """A FIFO named t1.nii.gz (or a process substitution) made brain-segment wait forever."""
    import os

    case = brain_cases[0]
    fifo = tmp_path / "t1.nii.gz"
    os.mkfifo(fifo)
    args = [f"--{m}" for m in ("t1c", "t2", "flair")]
    files = [case / f"{case.name}_{t}.nii.gz" for t in ("t1ce", "t2", "flair")]
    res = _run(
        "brain-segment",
        "--t1",
        fifo,
        *[x for pair in zip(args, files) for x in pair],
        "--out",
        tmp_path / "o.nii.gz",
        "--json",
    )
    assert res.exit_code == 2
    err = json.loads(res.stdout)["error"]
    assert "t1.nii.gz" in err and "not a regular file or folder" in err


def test_labels_of_the_other_brats_convention_name_the_option():
    """BraTS 2023 truth (ET = 3) read with the default brats2021: the refusal says which option fits."""
    from medseg.brain.io import labels_to_internal

    with pytest.raises(InputError, match=r"\[3\] are not in the brats2021 .*--labels brats2023"):
        labels_to_internal(np.array([0, 1, 2, 3]), labels="brats2021")
    with pytest.raises(InputError, match=r"\[4\] are not in the brats2023 .*--labels brats2021"):
        labels_to_internal(np.array([0, 2, 4]), labels="brats2023")
    with pytest.raises(InputError) as exc:
        labels_to_internal(np.array([0, 7]), labels="brats2021")
    assert "--labels" not in str(exc.value)


def test_resampled_modality_with_a_smaller_field_of_view_is_warned(brain_cases, tmp_path):
    """A FLAIR slab under a whole-head T1c: --resample filled the rest with 0, without a word."""
    from medseg.brain.io import find_case_files, load_case

    case = tmp_path / "case"
    shutil.copytree(brain_cases[0], case)
    flair = case / f"{brain_cases[0].name}_flair.nii.gz"
    sitk.WriteImage(sitk.ReadImage(str(flair))[:, :, 8:16], str(flair))  # 8 of 24 slices
    warnings: list[str] = []
    load_case(find_case_files(case), resample_to_modality="t1c", warnings=warnings)
    assert len(warnings) == 2 and "flair resampled onto the t1c grid" in warnings[0]
    assert "flair's field of view covers only" in warnings[1] and "t1c image's non-zero region" in warnings[1]


def test_two_segmentations_in_the_case_folder_do_not_block_brain_segment(brain_cases, tmp_path):
    """brain-segment does not read the truth: a second *_seg file made it refuse the case ('ambiguous seg')."""
    from medseg.brain.io import find_case_files

    case = tmp_path / brain_cases[0].name
    shutil.copytree(brain_cases[0], case)
    shutil.copy(case / f"{case.name}_seg.nii.gz", case / f"{case.name}_pred_seg.nii.gz")
    with pytest.raises(InputError, match="ambiguous seg"):
        find_case_files(case)  # brain-eval / brain-train: which truth? still refused
    assert find_case_files(case, need_seg=False).seg is None
    weights = Path(__file__).parents[2] / "medseg/weights/brain/brain_twopath_demo.safetensors"
    res = _run(
        "brain-segment", case, "--out", tmp_path / "out", "--weights", weights, "--no-n4", "--no-tta", "-q"
    )
    assert res.exit_code == 0, res.output
