"""A regular (non-editable) install finds the demo weights: build a wheel, install it into a fresh
virtualenv, and run one command of each pipeline from an unrelated folder.

The fresh venv sees the already-installed dependencies (torch & co.) through a ``.pth`` line, but
not the editable medseg: only the wheel's copy of ``medseg`` and ``medseg_cli`` is importable.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "sample_data"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def wheel_env(tmp_path_factory) -> dict:
    base = tmp_path_factory.mktemp("wheel")
    build = base / "src"
    shutil.copytree(
        ROOT,
        build,
        ignore=shutil.ignore_patterns(
            ".venv*", ".git", "build", "dist", "*.egg-info", "__pycache__", "results", "tests"
        ),
    )
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(base / "dist"),
            str(build),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    wheel = next((base / "dist").glob("medseg-*.whl"))
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    purelib = Path(
        subprocess.run(
            [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    deps = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (purelib / "medseg_deps.pth").write_text("\n".join(sorted(deps)) + "\n")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(py),
            "install",
            "--no-deps",
            "--no-index",
            "-q",
            str(wheel),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    work = base / "work"
    work.mkdir()
    return {"medseg": str(venv / "bin" / "medseg"), "py": str(py), "work": work, "purelib": purelib}


def run(env: dict, *args, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [env["medseg"], *map(str, args)], cwd=env["work"], capture_output=True, text=True, timeout=timeout
    )


def test_wheel_imports_its_own_copy(wheel_env):
    out = subprocess.run(
        [wheel_env["py"], "-c", "import medseg, medseg_cli; print(medseg.__file__)"],
        cwd=wheel_env["work"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert Path(out.stdout.strip()).is_relative_to(wheel_env["purelib"])


def test_ct_models_lists_packaged_demo_weights_and_converts(wheel_env):
    r = run(wheel_env, "ct-models", "--json")
    assert r.returncode == 0, r.stderr
    text = json.dumps(json.loads(r.stdout))
    assert "B50f" in text and str(wheel_env["purelib"]) in text
    import SimpleITK as sitk

    rng = np.random.default_rng(0)
    vol = (rng.normal(0, 40, (2, 48, 48)) - 800).astype(np.float32)
    image = sitk.GetImageFromArray(vol)
    image.SetSpacing((0.7, 0.7, 1.0))
    sitk.WriteImage(image, str(wheel_env["work"] / "tiny_B50f.nii.gz"))
    r = run(
        wheel_env,
        "ct-convert",
        "tiny_B50f.nii.gz",
        "--from",
        "B50f",
        "--to",
        "B30f",
        "--out",
        "tiny_B30f.nii.gz",
        "--device",
        "cpu",
        "--json",
    )
    assert r.returncode == 0, r.stderr
    out = sitk.GetArrayFromImage(sitk.ReadImage(str(wheel_env["work"] / "tiny_B30f.nii.gz")))
    assert out.shape == vol.shape and out.std() < vol.std()  # B30f is smoother than B50f


def test_cells_segment_with_packaged_demo_weights(wheel_env):
    r = run(
        wheel_env,
        "cells-segment",
        SAMPLE / "cells" / "images" / "fluo_01.png",
        "--out",
        "cells_out",
        "--device",
        "cpu",
        "--json",
        "--quiet",
    )
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["items"][0]["status"] == "ok"
    assert "demo" in r.stderr  # the one demo-weights warning


def test_brain_segment_with_packaged_demo_weights(wheel_env):
    r = run(
        wheel_env,
        "brain-segment",
        SAMPLE / "brain" / "SYN_0001",
        "--out",
        "brain_out",
        "--device",
        "cpu",
        "--json",
        "--quiet",
    )
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["items"][0]["status"] == "ok"


def test_slide_score_with_packaged_demo_weights(wheel_env):
    r = run(
        wheel_env,
        "slide-score",
        SAMPLE / "pathology" / "sample_slide.tiff",
        "--out",
        "slides_out",
        "--device",
        "cpu",
        "--json",
        "--quiet",
    )
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["items"][0]["status"] == "ok"
