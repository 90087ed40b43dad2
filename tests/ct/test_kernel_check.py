"""ct-convert --reference: the QA says when a series does not look like its stated kernel (issue 9)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medseg.synthetic.ct_phantom import PhantomConfig, make_exam, write_exam_dicom

from .conftest import run_cli

DEMO = Path(__file__).resolve().parents[2] / "medseg" / "weights" / "ct" / "B50f_to_B30f.safetensors"


@pytest.fixture(scope="module")
def exam(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ct_kc") / "exam"
    config = PhantomConfig(size=128, n_slices=3)
    write_exam_dicom(
        make_exam(9191, kernels=("B30f", "B50f", "B70f"), config=config), out, seed=9191, name="exam"
    )
    return out


@pytest.mark.parametrize(("reference", "flagged"), [("B30f", False), ("B70f", True)])
def test_reference_of_the_wrong_kernel_is_flagged(exam, tmp_path, reference, flagged):
    r = run_cli(
        "ct-convert",
        exam / "B50f",
        "--from",
        "B50f",
        "--to",
        "B30f",
        "--out",
        tmp_path / "out",
        "--weights",
        DEMO,
        "--reference",
        exam / reference,
        "--report",
        tmp_path / "qa",
        "--device",
        "cpu",
        "--json",
        "-q",
    )
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    item = doc["items"][0]
    sharp = {k: item["metrics"][f"sharpness_{k}"] for k in ("original", "converted", "reference")}
    assert sharp["converted"] < sharp["original"]  # the demo converter smooths
    kernel_warnings = [w for w in item["warnings"] if "reference" in w and "sharp" in w]
    assert bool(kernel_warnings) is flagged, (item["warnings"], sharp)
    html = (tmp_path / "qa" / "ct_qa.html").read_text()
    assert "Does each series look like its kernel?" in html
    assert ("Every input, converted series and reference looks like its stated kernel" in html) is not flagged
