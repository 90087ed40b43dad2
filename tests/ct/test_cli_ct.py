"""The CT commands end to end through the CLI, on sample_data and generated cohorts."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from medseg_cli.main import cli

from medseg.synthetic.ct_phantom import PhantomConfig, write_cohort

from .conftest import tree_digest

SAMPLE = Path(__file__).resolve().parents[2] / "sample_data" / "ct" / "exam01"


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def test_ct_models_lists_demo_weights():
    r = invoke("ct-models", "--json")
    assert r.exit_code == 0
    pairs = {(m["from"], m["to"]) for m in json.loads(r.output)["models"]}
    assert {("B50f", "B30f"), ("B30f", "B50f")} <= pairs
    assert all("SYNTHETIC" in m["training_data"] for m in json.loads(r.output)["models"])


@pytest.mark.slow
def test_quick_start_job_on_sample_data(tmp_path):
    before = tree_digest(SAMPLE)
    out = tmp_path / "exam01_B30f"
    r = invoke("ct-convert", SAMPLE / "B50f", "--from", "B50f", "--to", "B30f", "--out", out,
               "--reference", SAMPLE / "B30f", "--report", tmp_path / "qa", "--device", "cpu", "--json", "-q")
    assert r.exit_code == 0, r.output
    summary = json.loads(r.output)
    assert summary["slices"] == len(list((SAMPLE / "B50f").iterdir()))
    assert summary["qa"]["rmse_converted_hu"] < 0.5 * summary["qa"]["rmse_original_hu"]
    assert abs(summary["qa"]["laa950_converted"] - summary["qa"]["laa950_reference"]) < \
        abs(summary["qa"]["laa950_original"] - summary["qa"]["laa950_reference"])
    assert (tmp_path / "qa" / "ct_qa.html").exists() and (tmp_path / "qa" / "ct_qa.pdf").exists()
    assert tree_digest(SAMPLE) == before


def test_ct_report_records_a_bad_exam_and_continues(tmp_path, tiny_weights):
    cohort = tmp_path / "cohort"
    write_cohort(cohort, [8001, 8002], kernels=("B30f", "B50f"), config=PhantomConfig(size=64, n_slices=4))
    shutil.rmtree(cohort / "exam8002" / "B30f")  # no reference for this exam
    r = invoke("ct-report", cohort, "--from", "B50f", "--to", "B30f", "--out", tmp_path / "qa", "--weights",
               tiny_weights, "--device", "cpu", "--no-pdf", "--save-masks", "-q")
    assert r.exit_code == 5, r.output
    assert "1 of 2 exam(s) failed: exam8002" in r.output
    rows = list(csv.DictReader(open(tmp_path / "qa" / "ct_qa.csv")))
    assert [(row["exam"], row["status"]) for row in rows] == [("exam8001", "ok"), ("exam8002", "failed")]
    assert "no B30f series" in rows[1]["error"]
    assert (tmp_path / "qa" / "masks" / "exam8001_lungmask.nii.gz").exists()
    # the fixture model subtracts 200 HU: RMSE converted vs reference is then known to exceed the original's
    assert float(rows[0]["rmse_converted_hu"]) > float(rows[0]["rmse_original_hu"])
    again = invoke("ct-report", cohort, "--from", "B50f", "--to", "B30f", "--out", tmp_path / "qa", "--weights",
                   tiny_weights, "--device", "cpu", "-q")
    assert again.exit_code == 3
