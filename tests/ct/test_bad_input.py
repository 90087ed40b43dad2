"""Bad input gets one clear line and the right exit code; nothing is lost, nothing half-written stays."""

from __future__ import annotations

import errno
import json
import logging
import shutil
import subprocess
import sys

import pydicom
import pytest

from .conftest import convert_config, run_cli, tree_digest


def one_line_error(result, code, *fragments):
    assert result.exit_code == code, result.output
    lines = [ln for ln in result.output.splitlines() if ln.startswith("medseg: error:")]
    assert len(lines) == 1, result.output
    assert "Traceback" not in result.output
    for f in fragments:
        assert f in lines[0], lines[0]
    return lines[0]


def convert_args(src, out, weights, *extra):
    return (
        "ct-convert",
        src,
        "--from",
        "B50f",
        "--to",
        "B30f",
        "--out",
        out,
        "--weights",
        weights,
        "--device",
        "cpu",
        "-q",
        *extra,
    )


def json_error(result, code):
    """--json on an error: exactly one JSON document on stdout, with the error in words."""
    assert result.exit_code == code, result.output
    doc = json.loads(result.stdout)
    assert doc["exit_code"] == code and doc["error"]
    return doc


def test_empty_folder(tmp_path, tiny_weights):
    (tmp_path / "empty").mkdir()
    one_line_error(run_cli(*convert_args(tmp_path / "empty", tmp_path / "o", tiny_weights)), 2, "empty")


def test_kernel_without_weights_lists_what_exists(small_exam_dir, tmp_path):
    """Any name a scanner writes is a kernel; one without weights (and, for the sharpness-conditioned
    converter, without a known sharpness) is a model error listing what exists."""
    r = run_cli(
        "ct-convert", small_exam_dir / "B50f", "--from", "B45x", "--to", "SMOOTH9", "--out", tmp_path / "o"
    )
    one_line_error(r, 4, "no weights for B45x->SMOOTH9", "Siemens: ", "B50f->B30f", "--to-sharpness")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (("--from", "", "--to", "B30f"), "empty kernel name"),
        (("--from", "Philips:UB", "--to", "YA", "--vendor", "GE"), "names vendor Philips but --vendor is GE"),
        (("--from", "Philips:UB", "--to", "GE:STANDARD"), "one vendor per model"),
        (("--from", "b30", "--to", "B30f"), "both B30f"),
    ],
)
def test_bad_kernel_names_are_input_errors(small_exam_dir, tmp_path, args, fragment):
    r = run_cli("ct-convert", small_exam_dir / "B50f", *args, "--out", tmp_path / "o", "-q")
    one_line_error(r, 2, fragment)


def test_existing_output_needs_overwrite(small_exam_dir, tiny_weights, tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    one_line_error(run_cli(*convert_args(small_exam_dir / "B50f", out, tiny_weights)), 3, "--overwrite")
    doc = json_error(run_cli(*convert_args(small_exam_dir / "B50f", out, tiny_weights, "--json")), 3)
    assert doc["path"] == str(out)
    assert (out / "keep.txt").read_text() == "precious"
    assert run_cli(*convert_args(small_exam_dir / "B50f", out, tiny_weights, "--overwrite")).exit_code == 0
    assert not (out / "keep.txt").exists() and len(list(out.glob("IM*.dcm"))) == 5


def test_unwritable_out_is_an_input_error(small_exam_dir, tiny_weights, tmp_path):
    afile = tmp_path / "afile.txt"
    afile.write_text("a file, not a folder")
    out = afile / "out"
    one_line_error(
        run_cli(*convert_args(small_exam_dir / "B50f", out, tiny_weights)), 2, "cannot write", "afile.txt"
    )
    doc = json_error(run_cli(*convert_args(small_exam_dir / "B50f", out, tiny_weights, "--json")), 2)
    assert "afile.txt" in doc["error"]
    assert afile.read_text() == "a file, not a folder"


def test_disk_full_while_writing_is_a_user_error_and_leaves_nothing(
    small_exam_dir, tiny_weights, tmp_path, monkeypatch
):
    import medseg.io.dicom_write

    def full(_ds, _hu, out_file, _derivation):
        raise OSError(errno.ENOSPC, "No space left on device", str(out_file))

    monkeypatch.setattr(medseg.io.dicom_write, "write_derived_slice", full)
    r = run_cli(*convert_args(small_exam_dir / "B50f", tmp_path / "o", tiny_weights))
    line = one_line_error(r, 2, "No space left on device")
    assert "internal error" not in line
    assert not (tmp_path / "o").exists() and not list(tmp_path.glob(".o.*"))


def test_non_dicom_files_are_skipped_with_a_warning(small_exam_dir, tiny_weights, tmp_path, caplog):
    mixed = tmp_path / "mixed"
    shutil.copytree(small_exam_dir / "B50f", mixed)
    (mixed / "notes.txt").write_text("not an image")
    (mixed / "thumbs.db").write_bytes(b"\x00\x01garbage")
    from medseg.ct.convert import convert

    with caplog.at_level(logging.WARNING, logger="medseg"):
        res = convert(mixed, tmp_path / "o", convert_config(weights=tiny_weights))
    assert res.items[0].metrics["slices"] == 5
    assert "notes.txt" in caplog.text and "thumbs.db" in caplog.text


def test_non_ct_modality(small_exam_dir, tiny_weights, tmp_path):
    mr = tmp_path / "mr"
    mr.mkdir()
    for f in (small_exam_dir / "B50f").iterdir():
        ds = pydicom.dcmread(f)
        ds.Modality = "MR"
        ds.save_as(mr / f.name)
    one_line_error(run_cli(*convert_args(mr, tmp_path / "o", tiny_weights)), 2, "modality is MR")


def test_missing_slice_warns_for_dicom_and_fails_for_nifti(small_exam_dir, tiny_weights, tmp_path):
    gap = tmp_path / "gap"
    shutil.copytree(small_exam_dir / "B50f", gap)
    sorted(gap.iterdir())[2].unlink()
    r = run_cli(*convert_args(gap, tmp_path / "o", tiny_weights))
    assert r.exit_code == 0 and "inconsistent slice spacing" in r.output
    one_line_error(run_cli(*convert_args(gap, tmp_path / "o.nii.gz", tiny_weights)), 2, "irregular")
    assert not (tmp_path / "o.nii.gz").exists()


def test_volume_output_needs_a_known_extension(small_exam_dir, tiny_weights, tmp_path):
    for out in (tmp_path / "o.xyz", tmp_path / "o.mhd"):  # unknown; detached header (cannot be atomic)
        r = run_cli(*convert_args(small_exam_dir / "B50f", out, tiny_weights, "--format", "nifti"))
        one_line_error(r, 2, ".nii.gz, .nii, .nrrd, .mha")
        assert "internal error" not in r.output and not out.exists()
    nii = tmp_path / "in.nii.gz"
    assert (
        run_cli(*convert_args(small_exam_dir / "B50f", nii, tiny_weights)).exit_code == 0
    )  # inferred: volume
    one_line_error(run_cli(*convert_args(nii, tmp_path / "noext", tiny_weights)), 2, ".nii.gz", "noext")


def test_corrupt_pixel_data_names_the_file(small_exam_dir, tiny_weights, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(small_exam_dir / "B50f", bad)
    victim = sorted(bad.iterdir())[1]
    ds = pydicom.dcmread(victim)
    ds.PixelData = ds.PixelData[: len(ds.PixelData) // 3]
    ds.save_as(victim)
    before = tree_digest(bad)
    out = tmp_path / "o"
    one_line_error(run_cli(*convert_args(bad, out, tiny_weights)), 2, victim.name, "pixel data")
    assert not out.exists()  # no partial output
    assert tree_digest(bad) == before
    assert not list(tmp_path.glob(".o.*"))  # temporary folder cleaned up


def test_report_without_reference_is_a_usage_error(small_exam_dir, tiny_weights, tmp_path):
    r = run_cli(
        *convert_args(small_exam_dir / "B50f", tmp_path / "o", tiny_weights, "--report", tmp_path / "qa")
    )
    one_line_error(r, 2, "--report needs --reference")
    assert not (tmp_path / "o").exists()


def test_bad_reference_is_caught_before_converting_and_the_rerun_needs_no_overwrite(
    small_exam_dir, tiny_weights, tmp_path
):
    out, qa = tmp_path / "o", tmp_path / "qa"
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "readme.txt").write_text("not a series")
    one_line_error(
        run_cli(
            *convert_args(small_exam_dir / "B50f", out, tiny_weights, "--reference", junk, "--report", qa)
        ),
        2,
        "no DICOM images",
        "junk",
    )
    short = tmp_path / "short"  # readable, but another scan: 3 of the 5 slices
    short.mkdir()
    for f in sorted((small_exam_dir / "B30f").iterdir())[:3]:
        shutil.copy(f, short / f.name)
    one_line_error(
        run_cli(
            *convert_args(small_exam_dir / "B50f", out, tiny_weights, "--reference", short, "--report", qa)
        ),
        2,
        "3 slices of 64x64",
        "5 slices of 64x64",
    )
    assert not out.exists() and not qa.exists()  # nothing converted, nothing to clean up
    r = run_cli(
        *convert_args(
            small_exam_dir / "B50f",
            out,
            tiny_weights,
            "--reference",
            small_exam_dir / "B30f",
            "--report",
            qa,
            "--no-pdf",
            "--json",
        )
    )
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["items"][0]["metrics"]["rmse_converted_hu"] > 0 and (qa / "ct_qa.html").is_file()
    assert len(list(out.glob("IM*.dcm"))) == 5


def test_reference_failing_after_conversion_leaves_no_output(small_exam_dir, tiny_weights, tmp_path):
    ref = tmp_path / "ref"
    shutil.copytree(small_exam_dir / "B30f", ref)
    victim = sorted(ref.iterdir())[3]
    ds = pydicom.dcmread(victim)
    ds.PixelData = ds.PixelData[:100]  # headers fine (pre-flight passes), pixels not
    ds.save_as(victim)
    out, qa = tmp_path / "o", tmp_path / "qa"
    one_line_error(
        run_cli(
            *convert_args(small_exam_dir / "B50f", out, tiny_weights, "--reference", ref, "--report", qa)
        ),
        2,
        victim.name,
    )
    assert not out.exists() and not list(tmp_path.glob(".o.*")) and not (qa / "ct_qa.csv").exists()


def test_existing_report_is_refused_before_converting(small_exam_dir, tiny_weights, tmp_path):
    qa = tmp_path / "qa"
    qa.mkdir()
    (qa / "ct_qa.json").write_text("{}")
    r = run_cli(
        *convert_args(
            small_exam_dir / "B50f",
            tmp_path / "o",
            tiny_weights,
            "--reference",
            small_exam_dir / "B30f",
            "--report",
            qa,
        )
    )
    one_line_error(r, 3, "ct_qa.json")
    assert not (tmp_path / "o").exists()


def test_several_series_need_series_uid(small_exam_dir, tiny_weights, tmp_path):
    r = run_cli(*convert_args(small_exam_dir, tmp_path / "o", tiny_weights))
    one_line_error(r, 2, "2 series found", "--series-uid")
    uid = pydicom.dcmread(next((small_exam_dir / "B50f").iterdir())).SeriesInstanceUID
    assert (
        run_cli(*convert_args(small_exam_dir, tmp_path / "o", tiny_weights, "--series-uid", uid)).exit_code
        == 0
    )


def test_kernel_tag_disagreeing_with_from_warns(small_exam_dir, tiny_weights, tmp_path):
    r = run_cli(*convert_args(small_exam_dir / "B30f", tmp_path / "o", tiny_weights, "--json"))
    assert r.exit_code == 0
    assert "ConvolutionKernel is 'B30f' but --from is B50f" in r.output
    assert any("B30f" in w for w in json.loads(r.stdout)["warnings"])


def test_wrong_weights_are_refused(small_exam_dir, tmp_path, tiny_weights):
    r = run_cli(
        "ct-convert",
        small_exam_dir / "B50f",
        "--from",
        "B30f",
        "--to",
        "B50f",
        "--out",
        tmp_path / "o",
        "--weights",
        tiny_weights,
    )
    one_line_error(r, 4, "B50f->B30f")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x80\x04not safetensors")
    one_line_error(run_cli(*convert_args(small_exam_dir / "B50f", tmp_path / "o", junk)), 4, "safetensors")
    one_line_error(
        run_cli(*convert_args(small_exam_dir / "B50f", tmp_path / "o", tmp_path / "none.safetensors")),
        4,
        "not found",
    )
    assert not (tmp_path / "o").exists()


def test_debug_shows_traceback(tmp_path, tiny_weights):
    (tmp_path / "empty").mkdir()
    args = [str(a) for a in convert_args(tmp_path / "empty", tmp_path / "o", tiny_weights)]
    plain = subprocess.run([sys.executable, "-m", "medseg", *args], capture_output=True, text=True)
    debug = subprocess.run([sys.executable, "-m", "medseg", "--debug", *args], capture_output=True, text=True)
    assert plain.returncode == 2 and "Traceback" not in plain.stderr
    assert debug.returncode != 0
    assert "Traceback (most recent call last)" in debug.stderr and "InputError" in debug.stderr


@pytest.mark.parametrize("kernel", ["B40f", "B60f"])  # demo weights cover B10f/B30f/B50f/B70f only
def test_missing_model_direction_is_a_model_error(small_exam_dir, tmp_path, kernel):
    r = run_cli(
        "ct-convert",
        small_exam_dir / "B50f",
        "--from",
        "B50f",
        "--to",
        kernel,
        "--out",
        tmp_path / "o",
        "--models-dir",
        tmp_path,
        "--json",
    )
    one_line_error(r, 4, f"no weights for B50f->{kernel}")
    assert f"B50f->{kernel}" in json_error(r, 4)["error"]


def test_output_on_the_input_is_refused_even_with_overwrite(small_exam_dir, tiny_weights, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(small_exam_dir / "B50f", src)
    before = tree_digest(src)
    for out in (src, src / "converted", tmp_path):
        r = run_cli(*convert_args(src, out, tiny_weights, "--overwrite"))
        one_line_error(r, 2, "would overwrite or change the input")
    r = run_cli(
        *convert_args(
            src, tmp_path / "o", tiny_weights, "--reference", small_exam_dir / "B30f", "--report", src / "qa"
        )
    )
    one_line_error(r, 2, "the QA report would overwrite or change the input")
    assert tree_digest(src) == before and not (tmp_path / "o").exists()
