"""Odd but valid inputs of real-world exports that ct-convert reads."""

from __future__ import annotations

import pydicom
from pydicom.fileset import FileSet

from medseg.ct.convert import convert

from .conftest import convert_config


def test_a_dicomdir_file_reads_the_images_of_its_media_folder(small_exam_dir, tiny_weights, tmp_path):
    media = tmp_path / "media"
    fs = FileSet()
    for f in sorted((small_exam_dir / "B50f").iterdir()):
        fs.add(pydicom.dcmread(f))
    fs.write(media)  # DICOMDIR + PT000000/ST000000/SE000000/IM00000x, no extensions
    out = tmp_path / "out"
    result = convert(media / "DICOMDIR", out, convert_config(weights=tiny_weights))
    assert result.exit_code == 0 and result.items[0].metrics["slices"] == 5
    assert len(list(out.iterdir())) == 5


def test_enhanced_output_of_slices_without_a_plane_is_refused_classic_converts(
    small_exam_dir, tiny_weights, tmp_path
):
    import json
    import shutil

    from .conftest import run_cli

    src = tmp_path / "in"
    shutil.copytree(small_exam_dir / "B50f", src)
    second = sorted(src.iterdir())[1]
    ds = pydicom.dcmread(second)
    del ds.ImagePositionPatient  # the series is then ordered by InstanceNumber
    ds.save_as(second)
    res = run_cli(
        "ct-convert", src, "--from", "B50f", "--to", "B30f", "--out", tmp_path / "enh", "--weights",
        tiny_weights, "--device", "cpu", "--dicom-format", "enhanced", "--json",
    )  # fmt: skip
    assert res.exit_code == 2, res.output  # was an internal error after the whole conversion
    error = json.loads(res.stdout)["error"]
    assert second.name in error and "ImagePositionPatient" in error and "--dicom-format classic" in error
    assert not (tmp_path / "enh").exists()
    assert convert(src, tmp_path / "classic", convert_config(weights=tiny_weights)).exit_code == 0


def test_dicom_output_of_a_series_without_study_uid_is_refused(small_exam_dir, tiny_weights, tmp_path):
    import shutil

    import pytest

    from medseg.errors import InputError

    src = tmp_path / "in"
    shutil.copytree(small_exam_dir / "B50f", src)
    for f in src.iterdir():
        ds = pydicom.dcmread(f)
        del ds.StudyInstanceUID
        ds.save_as(f)
    for fmt in ("classic", "enhanced"):  # classic wrote invalid files, enhanced was an internal error
        with pytest.raises(InputError, match="no StudyInstanceUID"):
            convert(src, tmp_path / fmt, convert_config(weights=tiny_weights, dicom_format=fmt))
        assert not (tmp_path / fmt).exists()
    volume = convert(src, tmp_path / "v.nii.gz", convert_config(weights=tiny_weights))
    assert volume.exit_code == 0


def test_a_named_pipe_as_input_is_refused_not_waited_on(tmp_path):
    import os
    import threading

    import pytest

    from medseg.ct.convert import input_kind
    from medseg.errors import InputError

    if not hasattr(os, "mkfifo"):
        pytest.skip("no named pipes on this system")
    fifo = tmp_path / "scan.nii.gz"
    os.mkfifo(fifo)
    outcome: list[BaseException] = []

    def call() -> None:
        try:
            input_kind(fifo)
        except BaseException as exc:  # noqa: BLE001 - recorded for the assertion
            outcome.append(exc)

    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    thread.join(5)
    if thread.is_alive():  # release the reader blocked on the pipe before failing
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        pytest.fail("reading the named pipe hung")
    assert len(outcome) == 1 and isinstance(outcome[0], InputError)
    assert "not a regular file" in str(outcome[0]) and outcome[0].path == fifo
