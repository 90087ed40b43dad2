"""Bad input gets one clear line and the right exit code; nothing is lost."""

from __future__ import annotations

import logging
import shutil

import pydicom
import pytest
from click.testing import CliRunner
from medseg_cli.main import cli

from .conftest import tree_digest


def run(*args):
    return CliRunner().invoke(cli, list(map(str, args)))


def one_line_error(result, code, *fragments):
    assert result.exit_code == code, result.output
    lines = [ln for ln in result.output.splitlines() if ln.startswith("medseg: error:")]
    assert len(lines) == 1, result.output
    assert "Traceback" not in result.output
    for f in fragments:
        assert f in lines[0], lines[0]


def convert_args(src, out, weights, *extra):
    return ("ct-convert", src, "--from", "B50f", "--to", "B30f", "--out", out, "--weights", weights,
            "--device", "cpu", "-q", *extra)


def test_empty_folder(tmp_path, tiny_weights):
    (tmp_path / "empty").mkdir()
    one_line_error(run(*convert_args(tmp_path / "empty", tmp_path / "o", tiny_weights)), 2, "empty")


def test_unknown_kernel_lists_valid_ones(small_exam_dir, tmp_path):
    r = run("ct-convert", small_exam_dir / "B50f", "--from", "B45x", "--to", "B30f", "--out", tmp_path / "o")
    one_line_error(r, 2, "B45x", "B10f, B30f, B50f, B70f")


def test_existing_output_needs_overwrite(small_exam_dir, tiny_weights, tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    one_line_error(run(*convert_args(small_exam_dir / "B50f", out, tiny_weights)), 3, "--overwrite")
    assert (out / "keep.txt").read_text() == "precious"
    assert run(*convert_args(small_exam_dir / "B50f", out, tiny_weights, "--overwrite")).exit_code == 0
    assert not (out / "keep.txt").exists() and len(list(out.glob("IM*.dcm"))) == 5


def test_non_dicom_files_are_skipped_with_a_warning(small_exam_dir, tiny_weights, tmp_path, caplog):
    mixed = tmp_path / "mixed"
    shutil.copytree(small_exam_dir / "B50f", mixed)
    (mixed / "notes.txt").write_text("not an image")
    (mixed / "thumbs.db").write_bytes(b"\x00\x01garbage")
    from medseg.ct.convert import convert

    with caplog.at_level(logging.WARNING, logger="medseg"):
        res = convert(mixed, tmp_path / "o", source="B50f", target="B30f", weights=tiny_weights, device="cpu")
    assert res.slices == 5
    assert "notes.txt" in caplog.text and "thumbs.db" in caplog.text


def test_non_ct_modality(small_exam_dir, tiny_weights, tmp_path):
    mr = tmp_path / "mr"
    mr.mkdir()
    for f in (small_exam_dir / "B50f").iterdir():
        ds = pydicom.dcmread(f)
        ds.Modality = "MR"
        ds.save_as(mr / f.name)
    one_line_error(run(*convert_args(mr, tmp_path / "o", tiny_weights)), 2, "modality is MR")


def test_missing_slice_warns_for_dicom_and_fails_for_nifti(small_exam_dir, tiny_weights, tmp_path):
    gap = tmp_path / "gap"
    shutil.copytree(small_exam_dir / "B50f", gap)
    sorted(gap.iterdir())[2].unlink()
    r = run(*convert_args(gap, tmp_path / "o", tiny_weights))
    assert r.exit_code == 0 and "inconsistent slice spacing" in r.output
    one_line_error(run(*convert_args(gap, tmp_path / "o.nii.gz", tiny_weights, "--format", "nifti")), 2,
                   "irregular")


def test_corrupt_pixel_data_names_the_file(small_exam_dir, tiny_weights, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(small_exam_dir / "B50f", bad)
    victim = sorted(bad.iterdir())[1]
    ds = pydicom.dcmread(victim)
    ds.PixelData = ds.PixelData[: len(ds.PixelData) // 3]
    ds.save_as(victim)
    before = tree_digest(bad)
    out = tmp_path / "o"
    one_line_error(run(*convert_args(bad, out, tiny_weights)), 2, victim.name, "pixel data")
    assert not out.exists()  # no partial output
    assert tree_digest(bad) == before
    assert not list(tmp_path.glob(".o.*"))  # temporary folder cleaned up


def test_several_series_need_series_uid(small_exam_dir, tiny_weights, tmp_path):
    r = run(*convert_args(small_exam_dir, tmp_path / "o", tiny_weights))
    one_line_error(r, 2, "2 series found", "--series-uid")
    uid = pydicom.dcmread(next((small_exam_dir / "B50f").iterdir())).SeriesInstanceUID
    assert run(*convert_args(small_exam_dir, tmp_path / "o", tiny_weights, "--series-uid", uid)).exit_code == 0


def test_kernel_tag_disagreeing_with_from_warns(small_exam_dir, tiny_weights, tmp_path):
    r = run(*convert_args(small_exam_dir / "B30f", tmp_path / "o", tiny_weights))
    assert r.exit_code == 0
    assert "ConvolutionKernel is 'B30f' but --from is B50f" in r.output


def test_wrong_weights_are_refused(small_exam_dir, tmp_path, tiny_weights):
    r = run("ct-convert", small_exam_dir / "B50f", "--from", "B30f", "--to", "B50f", "--out", tmp_path / "o",
            "--weights", tiny_weights)
    one_line_error(r, 4, "B50f->B30f")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x80\x04not safetensors")
    one_line_error(run(*convert_args(small_exam_dir / "B50f", tmp_path / "o", junk)), 4, "safetensors")


def test_debug_shows_traceback(tmp_path, tiny_weights):
    (tmp_path / "empty").mkdir()
    r = CliRunner().invoke(cli, ["--debug", *map(str, convert_args(tmp_path / "empty", tmp_path / "o", tiny_weights))])
    assert r.exit_code != 0 and r.exception is not None


@pytest.mark.parametrize("kernel", ["B10f", "B70f"])
def test_missing_model_direction_is_a_model_error(small_exam_dir, tmp_path, kernel):
    r = run("ct-convert", small_exam_dir / "B50f", "--from", "B50f", "--to", kernel, "--out", tmp_path / "o",
            "--models-dir", tmp_path)
    one_line_error(r, 4, f"no weights for B50f->{kernel}")
