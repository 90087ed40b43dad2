"""A reference of the right size but other slices (shifted, another field of view, flipped) is refused
before the QA compares different anatomy voxel by voxel; the same grid in another format is accepted."""

from __future__ import annotations

import json
import shutil

import numpy as np
import SimpleITK as sitk

from medseg.ct.convert import convert

from .conftest import convert_config, edited_copy, run_cli


def _shift_z(mm: float):
    def edit(ds) -> None:
        pos = [float(v) for v in ds.ImagePositionPatient]
        ds.ImagePositionPatient = [pos[0], pos[1], pos[2] + mm]

    return edit


def _convert_json(src, out, ref, weights):
    return run_cli(
        "ct-convert", src, "--from", "B50f", "--to", "B30f", "--out", out, "--weights", weights,
        "--device", "cpu", "--reference", ref, "--no-pdf", "--json",
    )  # fmt: skip


def test_a_reference_of_other_slices_is_refused_before_converting(small_exam_dir, tiny_weights, tmp_path):
    ref = edited_copy(small_exam_dir / "B30f", tmp_path / "ref", _shift_z(3.0))  # two slices further
    out = tmp_path / "out"
    res = _convert_json(small_exam_dir / "B50f", out, ref, tiny_weights)
    assert res.exit_code == 2, res.output
    error = json.loads(res.stdout)["error"]
    assert "starts at another place" in error and "3.0 mm" in error and str(ref) in error
    assert not out.exists() and not (tmp_path / "out_qa").exists()


def test_a_reference_with_another_field_of_view_is_refused(small_exam_dir, tiny_weights, tmp_path):
    def zoom(ds) -> None:
        ds.PixelSpacing = [float(v) * 1.25 for v in ds.PixelSpacing]

    ref = edited_copy(small_exam_dir / "B30f", tmp_path / "ref", zoom)
    res = _convert_json(small_exam_dir / "B50f", tmp_path / "out", ref, tiny_weights)
    assert res.exit_code == 2 and "another field of view" in json.loads(res.stdout)["error"]


def test_a_flipped_volume_reference_is_refused_and_the_same_grid_is_accepted(
    small_exam_dir, tiny_weights, tmp_path
):
    from medseg.io.dicom import open_series, read_series
    from medseg.io.volume import write_volume_sitk

    volume, meta = read_series(open_series(small_exam_dir / "B30f"))
    same = write_volume_sitk(tmp_path / "ref.nii.gz", volume, meta)
    result = convert(
        small_exam_dir / "B50f",
        tmp_path / "ok",
        convert_config(weights=tiny_weights, pdf=False),
        reference=same,
    )
    assert result.items[0].status == "ok" and np.isfinite(result.items[0].metrics["rmse_original_hu"])

    flipped = tmp_path / "flipped.nii.gz"
    sitk.WriteImage(sitk.Flip(sitk.ReadImage(str(same)), [False, False, True]), str(flipped))
    res = _convert_json(small_exam_dir / "B50f", tmp_path / "out", flipped, tiny_weights)
    assert res.exit_code == 2 and "oriented differently" in json.loads(res.stdout)["error"]


def test_ct_report_fails_the_exam_whose_reference_is_shifted(small_exam_dir, tiny_weights, tmp_path):
    from medseg.ct.report import ReportConfig, run_ct_report

    good, bad = tmp_path / "good", tmp_path / "bad"
    shutil.copytree(small_exam_dir, good)
    (bad).mkdir()
    shutil.copytree(small_exam_dir / "B50f", bad / "B50f")
    edited_copy(small_exam_dir / "B30f", bad / "B30f", _shift_z(-1.5))
    cfg = ReportConfig(
        source="B50f", target="B30f", weights=tiny_weights, device="cpu", pdf=False, conditioned=False
    )
    result = run_ct_report([good, bad], tmp_path / "qa", cfg)
    status = {i.name: (i.status, i.reason) for i in result.items}
    assert status["good"][0] == "ok" and status["bad"][0] == "failed", status
    assert "the B30f series starts at another place" in status["bad"][1] and result.exit_code == 5


def test_the_input_given_as_its_own_reference_is_refused(small_exam_dir, tiny_weights, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(small_exam_dir / "B50f", copy)  # another folder, the same series
    for ref in (small_exam_dir / "B50f", copy):
        res = _convert_json(small_exam_dir / "B50f", tmp_path / "out", ref, tiny_weights)
        assert res.exit_code == 2, res.output
        assert "the reference is the input series itself" in json.loads(res.stdout)["error"]
    assert not (tmp_path / "out").exists()


def test_a_reference_missing_another_slice_than_the_input_is_refused(small_exam_dir, tiny_weights, tmp_path):
    """Input without its 4th slice, reference without its 5th: same size, first slice and median gap,
    but the last slices are 1.5 mm apart."""
    src, ref = tmp_path / "in", tmp_path / "ref"
    shutil.copytree(small_exam_dir / "B50f", src)
    shutil.copytree(small_exam_dir / "B30f", ref)
    sorted(src.iterdir())[3].unlink()
    sorted(ref.iterdir())[4].unlink()
    res = _convert_json(src, tmp_path / "out", ref, tiny_weights)
    assert res.exit_code == 2, res.output
    assert "has its slice 4 at" in json.loads(res.stdout)["error"]


def test_a_report_folder_inside_the_output_is_refused_before_converting(
    small_exam_dir, tiny_weights, tmp_path
):
    out = tmp_path / "out"
    for report in (out, out / "qa"):
        res = run_cli(
            "ct-convert", small_exam_dir / "B50f", "--from", "B50f", "--to", "B30f", "--out", out,
            "--weights", tiny_weights, "--device", "cpu", "--reference", small_exam_dir / "B30f",
            "--report", report, "--no-pdf", "--json",
        )  # fmt: skip
        assert res.exit_code == 2, res.output  # was exit 3 after the whole conversion
        assert "inside the output" in json.loads(res.stdout)["error"]
    assert not out.exists()


def test_a_2d_image_reference_of_one_dicom_slice_is_compared_by_pixel_size(
    small_exam_dir, tiny_weights, tmp_path
):
    """A 2D image file keeps no position (origin 0, 0): only its pixel size can be checked."""
    from medseg.io.dicom import open_series, read_series

    volume, meta = read_series(open_series(small_exam_dir / "B30f"))
    ref = sitk.GetImageFromArray(volume[2].astype(np.int16))
    ref.SetSpacing(meta.spacing[:0:-1])
    sitk.WriteImage(ref, str(tmp_path / "ref.nii.gz"))
    one = sorted((small_exam_dir / "B50f").iterdir())[2]
    result = convert(
        one,
        tmp_path / "out",
        convert_config(weights=tiny_weights, pdf=False),
        reference=tmp_path / "ref.nii.gz",
    )
    assert result.items[0].status == "ok"
    ref.SetSpacing((1.5, 1.5))
    sitk.WriteImage(ref, str(tmp_path / "zoomed.nii.gz"))
    res = _convert_json(one, tmp_path / "out2", tmp_path / "zoomed.nii.gz", tiny_weights)
    assert res.exit_code == 2 and "another field of view" in json.loads(res.stdout)["error"]
