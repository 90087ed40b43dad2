"""slide-score --ray from the command line: Ray stays unimported without --ray, a missing install
is one line naming the extra, and --ray auto gives the usual JSON result and files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

LOCAL_RUN = """
import sys
from click.testing import CliRunner
from medseg_cli.main import cli
res = CliRunner().invoke(cli, ["slide-score", sys.argv[1], "--out", sys.argv[2], "--json", "-q",
                               "--device", "cpu", "--tile", "512", "--overlap", "128"])
assert res.exit_code == 0, res.output
assert "medseg.scale" not in sys.modules and "ray" not in sys.modules, "Ray was imported"
print("NO-RAY-OK")
"""

MISSING_RAY = """
import sys
sys.modules["ray"] = None  # as if the extra were not installed
from medseg_cli.main import main
sys.argv = ["medseg", "slide-score", sys.argv[1], "--out", sys.argv[2], "--ray"]
main()
"""


def _python(code: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code, *args], cwd=ROOT, capture_output=True, text=True, timeout=300
    )


def test_without_ray_flag_ray_is_never_imported(slide_batch, tmp_path):
    proc = _python(LOCAL_RUN, str(slide_batch[2]), str(tmp_path / "out"))
    assert proc.returncode == 0 and "NO-RAY-OK" in proc.stdout, proc.stdout + proc.stderr
    assert (tmp_path / "out" / "s3" / "summary.json").is_file()


def test_ray_flag_without_ray_installed_is_one_line_naming_the_extra(slide_batch, tmp_path):
    proc = _python(MISSING_RAY, str(slide_batch[2]), str(tmp_path / "out"))
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "pip install 'medseg[ray]'" in lines[0] and "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()


def test_priority_without_ray_is_a_usage_error(slide_batch, tmp_path):
    from click.testing import CliRunner
    from medseg_cli.main import cli

    res = CliRunner().invoke(
        cli, ["slide-score", str(slide_batch[2]), "--out", str(tmp_path / "o"), "--priority", "3"]
    )
    assert res.exit_code == 2 and "need --ray" in res.output


@pytest.mark.slow
def test_ray_auto_on_the_command_line(ray_runtime, slide_batch, tmp_path):
    from click.testing import CliRunner
    from medseg_cli.main import cli

    out = tmp_path / "out"
    args = ["slide-score", str(slide_batch[2]), str(slide_batch[4]), "--out", str(out), "--json", "-q"]
    args += ["--device", "cpu", "--tile", "512", "--overlap", "128", "--ray", "--ray-actors", "1"]
    res = CliRunner().invoke(cli, [*args, "--priority", "2", "--deadline", "600"])
    assert res.exit_code == 5, res.output  # the corrupt slide is a failed row, the batch went on
    doc = json.loads(res.stdout)
    assert doc["counts"] == {"ok": 1, "failed": 1, "skipped": 0}
    assert doc["summary"]["ray"]["priority"] == 2 and doc["summary"]["ray"]["actors"] == 1
    assert doc["summary"]["ray"]["deadline_met"] is True and doc["summary"]["ray"]["tiles_inferred"] >= 1
    assert doc["summary"]["demo_weights"] is True and doc["summary"]["weights"].endswith(".safetensors")
    assert (out / "scores.csv").is_file() and (out / "s3" / "detections.geojson").is_file()
    assert (out / "report.html").is_file() and not (out / "s5_corrupt").exists()
