"""The CT commands end to end through the CLI, on sample_data and generated cohorts."""

from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path

import pytest

from medseg.synthetic.ct_phantom import PhantomConfig, write_cohort

from .conftest import run_cli, tree_digest

SAMPLE = Path(__file__).resolve().parents[2] / "sample_data" / "ct" / "exam01"


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    """Two tiny exams; tests copy it before breaking it."""
    root = tmp_path_factory.mktemp("ct_cohort") / "cohort"
    write_cohort(root, [8001, 8002], kernels=("B30f", "B50f"), config=PhantomConfig(size=64, n_slices=4))
    return root


def report_args(inputs, out, weights, *extra):
    return (
        "ct-report",
        inputs,
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
        "--no-pdf",
        "-q",
        *extra,
    )


def test_ct_models_lists_the_packaged_demo_weights(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # package data: found from any directory
    monkeypatch.delenv("MEDSEG_CT_MODELS", raising=False)
    r = run_cli("ct-models", "--json")
    assert r.exit_code == 0, r.output
    models = json.loads(r.stdout)["models"]
    kernels = ("B10f", "B30f", "B50f", "B70f")  # all twelve directions among the simulated kernels
    assert {(m["from"], m["to"]) for m in models} == {(a, b) for a in kernels for b in kernels if a != b}
    assert len(models) == 12 and {m["vendor"] for m in models} == {"Siemens"}
    assert all(m["demo"] and "SYNTHETIC" in m["training_data"] for m in models)
    assert all(
        Path(m["path"]).parent.name == "ct" and Path(m["path"]).parent.parent.name == "weights"
        for m in models
    )


@pytest.mark.slow
def test_quick_start_job_on_sample_data(tmp_path):
    before = tree_digest(SAMPLE)
    out = tmp_path / "exam01_B30f"
    r = run_cli(
        "ct-convert",
        SAMPLE / "B50f",
        "--from",
        "B50f",
        "--to",
        "B30f",
        "--out",
        out,
        "--reference",
        SAMPLE / "B30f",
        "--report",
        tmp_path / "qa",
        "--device",
        "cpu",
        "--json",
        "-q",
    )
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["command"] == "ct-convert" and doc["exit_code"] == 0 and doc["summary"]["demo_weights"] is True
    assert any("synthetic" in w for w in doc["warnings"])  # the demo weights say so in the JSON too
    qa = doc["items"][0]["metrics"]
    assert qa["slices"] == len(list((SAMPLE / "B50f").iterdir())) == len(list(out.iterdir()))
    assert qa["rmse_converted_hu"] < 0.5 * qa["rmse_original_hu"]
    assert abs(qa["laa950_converted"] - qa["laa950_reference"]) < abs(
        qa["laa950_original"] - qa["laa950_reference"]
    )
    assert (tmp_path / "qa" / "ct_qa.html").exists() and (tmp_path / "qa" / "ct_qa.pdf").exists()
    assert doc["outputs"]["qa_html"] == str(tmp_path / "qa" / "ct_qa.html")
    assert tree_digest(SAMPLE) == before


def test_ct_report_records_a_bad_exam_and_continues(cohort, tmp_path, tiny_weights):
    broken = tmp_path / "cohort"
    shutil.copytree(cohort, broken)
    shutil.rmtree(broken / "exam8002" / "B30f")  # no reference for this exam
    r = run_cli(*report_args(broken, tmp_path / "qa", tiny_weights, "--save-masks", "--json"))
    assert r.exit_code == 5, r.output
    doc = json.loads(r.stdout)  # one parseable document also on exit 5
    assert doc["exit_code"] == 5 and doc["counts"] == {"ok": 1, "failed": 1, "skipped": 0}
    failed = [i for i in doc["items"] if i["status"] == "failed"]
    assert [i["name"] for i in failed] == ["exam8002"] and "no B30f series" in failed[0]["reason"]
    assert "exam8002: " in r.output and "no B30f series" in r.output  # the failure, in words, on stderr too
    rows = list(csv.DictReader(open(tmp_path / "qa" / "ct_qa.csv")))
    assert [(row["exam"], row["status"]) for row in rows] == [("exam8001", "ok"), ("exam8002", "failed")]
    assert "no B30f series" in rows[1]["error"] and rows[1]["rmse_original_hu"] == ""  # empty, not 'nan'
    assert (tmp_path / "qa" / "masks" / "exam8001_lungmask.nii.gz").exists()
    # the fixture model subtracts 200 HU: RMSE converted vs reference is then known to exceed the original's
    assert float(rows[0]["rmse_converted_hu"]) > float(rows[0]["rmse_original_hu"])
    html = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", (tmp_path / "qa" / "ct_qa.html").read_text())
    assert "None" not in html and not re.search(r"\bnan\b", html, flags=re.I) and "n/a" in html
    again = run_cli(*report_args(broken, tmp_path / "qa", tiny_weights, "--json"))
    assert again.exit_code == 3 and json.loads(again.stdout)["exit_code"] == 3


def test_ct_report_human_summary_is_in_words(cohort, tmp_path, tiny_weights):
    r = run_cli(*report_args(cohort, tmp_path / "qa", tiny_weights))
    assert r.exit_code == 0, r.output
    assert "2 of 2 exam(s) evaluated" in r.stdout and "LAA-950 converted vs reference: bias" in r.stdout
    assert "None" not in r.stdout and "nan" not in r.stdout and "{" not in r.stdout


def test_ct_report_failed_run_leaves_nothing_and_the_rerun_needs_no_overwrite(cohort, tmp_path, tiny_weights):
    out = tmp_path / "qa"
    bad = run_cli(
        "ct-report",
        cohort,
        "--from",
        "B50f",
        "--to",
        "B40f",  # the demo weights cover B10f/B30f/B50f/B70f: no weights for B40f
        "--out",
        out,
        "--models-dir",
        tmp_path,
        "--device",
        "cpu",
        "-q",
        "--save-masks",
    )
    assert bad.exit_code == 4 and "no weights for B50f->B40f" in bad.output
    assert not out.exists() or not any(out.iterdir())
    r = run_cli(*report_args(cohort, out, tiny_weights, "--save-masks"))
    assert r.exit_code == 0, r.output
    assert (out / "ct_qa.csv").is_file() and len(list((out / "masks").iterdir())) == 2


def test_ct_report_unwritable_out(cohort, tmp_path, tiny_weights):
    afile = tmp_path / "afile.txt"
    afile.write_text("x")
    r = run_cli(*report_args(cohort, afile / "qa", tiny_weights, "--json"))
    assert r.exit_code == 2 and "afile.txt" in json.loads(r.stdout)["error"]
