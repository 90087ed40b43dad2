"""Concurrent and interrupted runs with real ``medseg`` processes (issue 17 §3).

- Two commands with the same ``--out`` started together: one finishes (exit 0), the other stops at
  its pre-flight (exit 3) and writes nothing; the output is the winner's alone. A folder command
  (cells-segment) and a training command (cells-train).
- Ctrl-C (SIGINT) mid-run with ``--json``: exit 130, one JSON document (the partial result), no
  temporary folder or lock left, and the rerun works: ct-convert (a folder output), cells-train in
  its first epoch (nothing left: the plain rerun starts afresh) and in a later epoch (``--resume``
  continues from the last finished epoch).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
TRAIN = ["--base-channels", "4", "--batch-size", "2", "--tile", "64", "--init", "scratch", "--device", "cpu"]


def medseg(*args) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "medseg_cli.main", *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
    )


def finish(proc: subprocess.Popen, timeout: float = 240) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def interrupt_when(proc: subprocess.Popen, ready, timeout: float = 240) -> tuple[int, str, str]:
    """Send SIGINT once ``ready(stderr_so_far)`` holds (checked per stderr line, or by polling)."""
    err_lines: list[str] = []

    def read() -> None:
        for line in proc.stderr:
            err_lines.append(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    deadline = time.monotonic() + timeout
    while not ready("".join(err_lines)):
        assert proc.poll() is None, "".join(err_lines)
        assert time.monotonic() < deadline, "".join(err_lines)
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    out = proc.stdout.read()
    proc.wait(timeout=timeout)
    reader.join(timeout=10)
    return proc.returncode, out, "".join(err_lines)


def run_cli(*args):
    from click.testing import CliRunner
    from medseg_cli.main import cli

    return CliRunner().invoke(cli, [str(a) for a in args])


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


@pytest.fixture
def images(tmp_path) -> Path:
    from medseg.cells.io import write_png
    from medseg.synthetic.cells import SyntheticCellsConfig, synthetic_cells

    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(2):
        image, _ = synthetic_cells(910 + i, SyntheticCellsConfig(height=64, width=64))
        write_png(folder / f"c{i}.png", (image.clip(0, 1) * 255).astype("uint8"))
    return folder


def test_two_cells_segment_same_out(tmp_path, images):
    out = tmp_path / "seg"
    cmd = ["cells-segment", images, "--out", out, "--device", "cpu", "--no-report", "--json"]
    procs = [medseg(*cmd), medseg(*cmd)]
    results = [finish(p) for p in procs]
    codes = sorted(r[0] for r in results)
    assert codes == [0, 3], results
    loser = next(r for r in results if r[0] == 3)
    assert "another medseg run" in loser[2] or "outputs exist" in loser[2], loser[2]
    assert json.loads(loser[1])["exit_code"] == 3
    summary = json.loads((out / "summary.json").read_text())
    assert [Path(i["name"]).name for i in summary["items"]] == ["c0.png", "c1.png"]
    written = {Path(p) for i in summary["items"] for p in i["outputs"].values()}
    on_disk = {p for p in out.iterdir() if p.name != "summary.json"}
    assert written == on_disk and not leftovers(out) and not leftovers(tmp_path)


def test_two_cells_train_same_out(tmp_path):
    out = tmp_path / "run"
    cmd = ["cells-train", "--synthetic", "2", "--out", out, "--epochs", "1", "--steps", "2", *TRAIN, "--json"]
    results = [finish(p) for p in [medseg(*cmd), medseg(*cmd)]]
    assert sorted(r[0] for r in results) == [0, 3], results
    winner = next(r for r in results if r[0] == 0)
    assert json.loads(winner[1])["epochs"] == 1
    assert len(json.loads((out / "history.json").read_text())) == 1
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["best.safetensors", "last.safetensors", "state.pt", "history.json", "train_config.json"]
    )


def test_ctrl_c_ct_convert_leaves_nothing_and_rerun_works(tmp_path):
    from medseg.synthetic.ct_phantom import PhantomConfig, make_exam, write_exam_dicom

    exam = make_exam(4243, kernels=("B50f",), config=PhantomConfig(size=96, n_slices=16))
    write_exam_dicom(exam, tmp_path / "exam", seed=4243, name="exam")
    series, out = tmp_path / "exam" / "B50f", tmp_path / "conv"
    cmd = ["ct-convert", series, "--from", "B50f", "--to", "B30f", "--out", out, "--device", "cpu"]
    proc = medseg(*cmd, "--batch-size", "1", "--json")
    code, stdout, stderr = interrupt_when(proc, lambda _err: any(tmp_path.glob(".conv.*.tmp")))
    assert code == 130, stderr
    doc = json.loads(stdout)  # one document: the partial result
    assert doc["error"] == "interrupted" and doc["exit_code"] == 130
    assert not any(i["status"] == "ok" for i in doc["items"]) and not doc["outputs"]  # nothing published
    assert "Traceback" not in stderr and "medseg: interrupted" in stderr
    assert not out.exists() and not leftovers(tmp_path)
    rerun = run_cli(*cmd, "--quiet")
    assert rerun.exit_code == 0, rerun.output
    assert len(list(out.iterdir())) == 16


def test_ctrl_c_cells_train_first_epoch_leaves_nothing(tmp_path):
    out = tmp_path / "run"
    cmd = ["cells-train", "--synthetic", "2", "--out", out, "--epochs", "1", *TRAIN]
    proc = medseg(*cmd, "--steps", "100000", "--json")
    seen: list[float] = []

    def in_first_epoch(err: str) -> bool:  # the data are made: give the loop two seconds to start
        if "medseg: training " in err and not seen:
            seen.append(time.monotonic())
        return bool(seen) and time.monotonic() - seen[0] > 2.0

    code, stdout, stderr = interrupt_when(proc, in_first_epoch)
    assert code == 130, (stdout, stderr)
    doc = json.loads(stdout)
    assert doc["error"] == "interrupted" and doc["exit_code"] == 130 and doc.get("epochs", 0) == 0
    assert "Traceback" not in stderr
    if "epochs" in doc:  # interrupted inside the loop (not while the model was being built)
        assert "nothing was saved" in stderr
    assert not out.exists() or not list(out.iterdir())
    rerun = run_cli(*cmd, "--steps", "1", "--quiet")  # the plain rerun, not "use --resume"
    assert rerun.exit_code == 0, rerun.output


def test_ctrl_c_cells_train_later_epoch_resumes(tmp_path):
    out = tmp_path / "run"
    cmd = ["cells-train", "--synthetic", "2", "--out", out, "--steps", "2", *TRAIN]
    proc = medseg(*cmd, "--epochs", "1000", "--json")
    code, stdout, stderr = interrupt_when(proc, lambda err: "medseg: epoch 2/1000" in err)  # 1 is saved
    assert code == 130, stderr
    doc = json.loads(stdout)
    done = doc["epochs"]
    assert doc["error"] == "interrupted" and done >= 1 and len(doc["history"]) == done
    assert "rerun with --resume" in stderr
    state = json.loads((out / "history.json").read_text())
    assert len(state) == done and (out / "train_config.json").is_file()
    again = run_cli(*cmd, "--epochs", str(done + 1), "--quiet")
    assert again.exit_code == 3 and "--resume" in again.output
    resumed = run_cli(*cmd, "--epochs", str(done + 1), "--resume", "--quiet", "--json")
    assert resumed.exit_code == 0, resumed.output
    assert json.loads(resumed.stdout)["epochs"] == done + 1
