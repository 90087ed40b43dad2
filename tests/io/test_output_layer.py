"""The shared output layer (issue 17 §1, §3, §4): ``medseg/io/atomic.py`` and ``cli/main.py``.

- ``check_apart``: an output that is, contains or lies inside an input (symlinks and hard links too);
- the output lock: another process holding an output makes pre-flight refuse it (exit 3, naming
  the process); the lock ends with that process however it ends;
- publishing: a destination that appeared meanwhile is never replaced; ``output_set`` publishes all
  or none (ct-convert's series + QA report on a full disk);
- one line: a disk-full error wrapped by pydicom (whose message embeds a traceback) is one line
  naming the output; library warnings are ``medseg: warning:`` lines, each once, no source line.
"""

from __future__ import annotations

import errno
import json
import logging
import subprocess
import sys
import textwrap
import warnings

import pytest

from medseg.errors import InputError, OutputExistsError, one_line
from medseg.io.atomic import atomic_dir, atomic_path, check_apart, check_output, output_session, output_set


def run_cli(*args):
    from click.testing import CliRunner
    from medseg_cli.main import cli

    return CliRunner().invoke(cli, [str(a) for a in args])


def disk_full() -> OSError:
    """What pydicom raises when the disk fills while it writes an element: the errno is in the cause."""
    from pydicom.tag import Tag, tag_in_exception

    try:
        with tag_in_exception(Tag(0x7FE00010)):
            raise OSError(errno.ENOSPC, "No space left on device")
    except OSError as exc:
        assert exc.errno is None and "Traceback" in str(exc)  # the wrapped form
        return exc
    raise AssertionError("not raised")


# --- check_apart ---------------------------------------------------------------------------------


def test_check_apart(tmp_path):
    case = tmp_path / "case"
    case.mkdir()
    (case / "t1.nii.gz").write_bytes(b"t1")
    (tmp_path / "link").symlink_to(case)
    (tmp_path / "hard.nii.gz").hardlink_to(case / "t1.nii.gz")
    for out in (case, case / "t1.nii.gz", case / "sub" / "x", tmp_path, tmp_path / "link" / "seg.nii.gz"):
        with pytest.raises(InputError, match="would overwrite or change the input"):
            check_apart(out, [case])
    with pytest.raises(InputError, match=r"input .*t1\.nii\.gz"):
        check_apart(tmp_path / "hard.nii.gz", case / "t1.nii.gz")
    check_apart(tmp_path / "out", [case, None])  # beside: fine
    check_apart([None, tmp_path / "case_out"], case)  # a name that only starts like the input: fine


# --- the output lock -------------------------------------------------------------------------------

HOLDER = textwrap.dedent(
    """
    import sys, time
    from medseg.io.atomic import check_output, output_session
    with output_session():
        check_output(sys.argv[1], overwrite=False)
        print("held", flush=True)
        time.sleep(60)
    """
)


def test_output_lock_between_processes(tmp_path):
    out = tmp_path / "out"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with output_session():
            with pytest.raises(OutputExistsError, match=f"another medseg run \\(process {holder.pid}\\)"):
                check_output(out, overwrite=True)
            with pytest.raises(OutputExistsError, match="another medseg run"):
                check_output(tmp_path / "x" / ".." / "out", overwrite=True)  # the same path, spelt otherwise
            with pytest.raises(OutputExistsError, match="another medseg run"):
                check_apart(out, [tmp_path / "input"])  # the first pre-flight check of an output locks it
            check_output(tmp_path / "other", overwrite=False)  # another output: free
        check_output(out, overwrite=False)  # outside a session (library call): no lock
    finally:
        holder.kill()  # SIGKILL: no cleanup runs, yet the kernel drops the lock
        holder.wait()
    with output_session():
        check_output(out, overwrite=False)


def test_output_lock_is_reentrant_and_released(tmp_path):
    with output_session():
        check_output(tmp_path / "a", overwrite=False)
        check_output(tmp_path / "a", overwrite=False)  # the same run checks an output twice
        with atomic_dir(tmp_path / "a") as tmp:
            (tmp / "f").write_text("x")
    assert (tmp_path / "a" / "f").read_text() == "x"


# --- publishing -----------------------------------------------------------------------------------


def test_destination_that_appeared_meanwhile_is_kept(tmp_path):
    target = tmp_path / "result.json"
    with pytest.raises(OutputExistsError, match="appeared while this run was working"):
        with atomic_path(target) as tmp:
            tmp.write_text("mine")
            target.write_text("theirs")  # another program, while this run worked
    assert target.read_text() == "theirs" and sorted(p.name for p in tmp_path.iterdir()) == ["result.json"]
    folder = tmp_path / "series"
    with pytest.raises(OutputExistsError, match="appeared while this run was working"):
        with atomic_dir(folder) as tmp:
            (tmp / "IM1.dcm").write_text("mine")
            folder.mkdir()
            (folder / "IM1.dcm").write_text("theirs")
    assert (folder / "IM1.dcm").read_text() == "theirs"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.json", "series"]


def test_output_set_all_or_none_on_disk_full(tmp_path):
    (tmp_path / "series").mkdir()
    (tmp_path / "series" / "old.dcm").write_text("old")
    with pytest.raises(OSError) as info:
        with output_set():
            with atomic_dir(tmp_path / "series", overwrite=True) as tmp:
                (tmp / "IM1.dcm").write_text("new")
            with atomic_path(tmp_path / "qa" / "ct_qa.csv") as tmp:
                tmp.write_text("half")
                raise disk_full()
    exc = info.value
    assert exc.errno == errno.ENOSPC and exc.filename == str(tmp_path / "qa" / "ct_qa.csv")
    assert "Traceback" not in str(exc) and "\n" not in str(exc)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["series"]  # no report folder, no temporaries
    assert [p.name for p in (tmp_path / "series").iterdir()] == ["old.dcm"]  # the old series is kept
    with output_set():
        with atomic_dir(tmp_path / "series", overwrite=True) as tmp:
            (tmp / "IM1.dcm").write_text("new")
        with atomic_path(tmp_path / "qa" / "ct_qa.csv") as tmp:
            tmp.write_text("whole")
    assert [p.name for p in (tmp_path / "series").iterdir()] == ["IM1.dcm"]
    assert (tmp_path / "qa" / "ct_qa.csv").read_text() == "whole"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["qa", "series"]


def test_ct_convert_report_disk_full_publishes_nothing(tmp_path, monkeypatch):
    """Series + QA report: a full disk while the report is written leaves neither; one line; rerun works."""
    from medseg.reports.builder import Report
    from medseg.synthetic.ct_phantom import PhantomConfig, make_exam, write_exam_dicom

    write_exam_dicom(
        make_exam(4244, kernels=("B30f", "B50f"), config=PhantomConfig(size=64, n_slices=4)),
        tmp_path / "exam",
        seed=4244,
        name="exam",
    )
    real = Report.write_html

    def full(self, path):
        with atomic_path(path) as tmp:
            tmp.write_text("<html>half")
            raise disk_full()

    monkeypatch.setattr(Report, "write_html", full)
    args = [
        "ct-convert",
        tmp_path / "exam/B50f",
        "--from",
        "B50f",
        "--to",
        "B30f",
        "--out",
        tmp_path / "conv",
    ]
    args += ["--reference", tmp_path / "exam/B30f", "--no-pdf", "--device", "cpu", "--quiet"]
    res = run_cli(*args, "--json")
    assert res.exit_code == 2, res.output
    errors = [ln for ln in res.output.splitlines() if ln.startswith("medseg: error:")]
    assert len(errors) == 1 and errors[0].endswith("ct_qa.html: No space left on device"), res.output
    assert json.loads(res.stdout)["exit_code"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exam"]
    monkeypatch.setattr(Report, "write_html", real)
    res = run_cli(*args)  # the corrected rerun: not "output exists"
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["conv", "conv_qa", "exam"]


# --- one line ---------------------------------------------------------------------------------------


def test_one_line_keeps_the_whole_message():
    assert one_line("first line\n  second line\n") == "first line second line"
    assert one_line(disk_full()).startswith("With tag (7FE0,0010) got exception: [Errno 28] No space")
    assert "Traceback" not in one_line(disk_full())


def test_internal_error_message_is_joined_not_cut(monkeypatch):
    import medseg.ct.models as models

    def boom(*_a, **_k):
        raise RuntimeError("the first half of the sentence\nand its second half")

    monkeypatch.setattr(models, "models_doc", boom)
    res = run_cli("ct-models")
    assert res.exit_code == 1
    assert "the first half of the sentence and its second half (rerun with --debug)" in res.output


def test_library_warnings_are_one_medseg_line_each_once(capsys):
    import numpy as np
    from medseg_cli.main import setup_logging
    from pydicom import config
    from pydicom.valuerep import validate_value

    setup_logging()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            for _ in range(3):  # a warning per slice is shown once
                validate_value("UI", "1.2." + "3" * 70, config.WARN)
            with np.errstate(divide="warn"):
                np.log(np.zeros(2))
            warnings.warn("a library notice\nwith a second line", UserWarning, stacklevel=1)
    finally:
        logging.getLogger("medseg").handlers.clear()
    err = capsys.readouterr().err.splitlines()
    assert all(ln.startswith("medseg: warning: ") for ln in err), err
    assert len(err) == 3, err
    assert "UI" in err[0] and "64" in err[0]
    assert "divide by zero" in err[1]
    assert err[2] == "medseg: warning: a library notice with a second line"


def test_medseg_warning_repeated_by_a_second_read_is_shown_once(capsys):
    """A series opened twice (ct-train) or a reader warning re-logged per item is said once."""
    from medseg_cli.main import setup_logging

    setup_logging()
    log = logging.getLogger("medseg.io.dicom")
    try:
        for _ in range(2):
            log.warning("series x: slices are not evenly spaced (1.0 to 2.0 mm)")
        log.warning("series y: another warning")
        log.info("an info line may repeat")
        log.info("an info line may repeat")
    finally:
        logging.getLogger("medseg").handlers.clear()
    err = capsys.readouterr().err.splitlines()
    assert err == [
        "medseg: warning: series x: slices are not evenly spaced (1.0 to 2.0 mm)",
        "medseg: warning: series y: another warning",
        "medseg: an info line may repeat",
        "medseg: an info line may repeat",
    ], err


def test_simpleitk_stderr_warnings_are_off_when_it_is_imported_later():
    code = (
        "from medseg_cli.main import setup_logging; setup_logging(); import SimpleITK as s; "
        "print(s.ProcessObject_GetGlobalWarningDisplay())"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "False", done.stderr
