"""ct-report's sharpness-conditioned converter row (issue 20 §3): which model ran, its sharpness, and the
ICC / limits of agreement of LAA-950 and Perc15 computed from the cohort's own numbers."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from medseg.ct.metrics import bland_altman, icc_a1
from medseg.ct.report import ReportConfig, report_text, run_ct_report
from medseg.synthetic.ct_phantom import PhantomConfig, write_cohort

SEEDS = [6101, 6102, 6103, 6104]


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("cond_cohort")
    write_cohort(root, SEEDS, kernels=("B30f", "B50f"), config=PhantomConfig(size=112, n_slices=3))
    return root


def _column(rows: list[dict], key: str) -> np.ndarray:
    return np.array([float(r[key]) if r[key] != "" else np.nan for r in rows])


@pytest.mark.slow
def test_conditioned_row_is_computed_from_the_cohort(cohort, tmp_path):
    res = run_ct_report([cohort], tmp_path / "qa", ReportConfig("B50f", "B30f", device="cpu", pdf=False))
    assert res.exit_code == 0, res.items
    described = res.summary["conditioned"]
    assert described["model"] == "sharpness-conditioned" and described["weights"].endswith(".safetensors")
    exams = list(csv.DictReader(open(tmp_path / "qa" / "ct_qa.csv")))
    assert len(exams) == len(SEEDS)
    src, tgt = _column(exams, "sharpness_plan_source"), _column(exams, "sharpness_plan_target")
    assert np.all(tgt < 0.7 * src), (src, tgt)  # B50f -> B30f: planned much smoother than measured
    # the conditioned conversion moves every exam towards the B30f reference
    assert np.all(_column(exams, "rmse_conditioned_hu") < 0.7 * _column(exams, "rmse_original_hu"))

    rows = {
        (r["quantity"], r["comparison"]): r
        for r in csv.DictReader(open(tmp_path / "qa" / "ct_qa_agreement.csv"))
    }
    for quantity, key in (("LAA-950", "laa950"), ("Perc15", "perc15")):
        row = rows[(quantity, "conditioned vs reference")]
        conv, ref = _column(exams, f"{key}_conditioned"), _column(exams, f"{key}_reference")
        # recomputed here from the per-exam CSV (rounded to 4 decimals there)
        expected = bland_altman(conv, ref)
        assert float(row["icc"]) == pytest.approx(icc_a1(np.stack([conv, ref], 1)), abs=2e-3)
        assert float(row["bias"]) == pytest.approx(expected.bias, abs=1e-3)
        assert float(row["loa_low"]) == pytest.approx(expected.loa_low, abs=1e-3)
        assert float(row["loa_high"]) == pytest.approx(expected.loa_high, abs=1e-3)
        assert int(row["n"]) == len(SEEDS)
        # the row differs from the direction weights' row: it is not a copy
        assert row["bias"] != rows[(quantity, "converted vs reference")]["bias"]
    doc = json.loads((tmp_path / "qa" / "ct_qa.json").read_text())
    assert doc["conditioned"]["model"] == "sharpness-conditioned"
    assert "conditioned_vs_reference" in doc["summary"]["bland_altman_laa950"]
    html = (tmp_path / "qa" / "ct_qa.html").read_text()
    assert "Sharpness-conditioned converter" in html and "conditioned vs reference" in html
    text = report_text(res)
    assert "LAA-950 conditioned vs reference" in text and "sharpness-conditioned converter (" in text


def test_conditioned_row_can_be_left_out(cohort, tmp_path):
    cfg = ReportConfig("B50f", "B30f", device="cpu", pdf=False, conditioned=False)
    res = run_ct_report([cohort / f"exam{SEEDS[0]:04d}"], tmp_path / "qa", cfg)
    assert res.exit_code == 0 and "conditioned" not in res.summary
    comparisons = [r["comparison"] for r in csv.DictReader(open(tmp_path / "qa" / "ct_qa_agreement.csv"))]
    assert "conditioned vs reference" not in comparisons and len(comparisons) == 4


def test_required_row_for_a_kernel_without_table_sharpness_is_an_error():
    from medseg.ct.kernels import KernelSpec
    from medseg.ct.report_conditioned import conditioned_row
    from medseg.errors import ModelError

    assert conditioned_row(None, KernelSpec("B50f"), KernelSpec("SMOOTH9")) is None
    with pytest.raises(ModelError, match="SMOOTH9"):
        conditioned_row(True, KernelSpec("B50f"), KernelSpec("SMOOTH9"))
    assert conditioned_row(None, KernelSpec("B50f"), KernelSpec("B30f")) is not None
    assert conditioned_row(False, KernelSpec("B50f"), KernelSpec("B30f")) is None


def test_cli_no_conditioned_leaves_the_row_out(cohort, tmp_path):
    """``ct-report --no-conditioned``: one conversion per exam, no conditioned row anywhere."""
    from click.testing import CliRunner
    from medseg_cli.main import cli

    res = CliRunner().invoke(
        cli,
        [
            "ct-report", str(cohort), "--from", "B50f", "--to", "B30f", "--out", str(tmp_path / "qa"),
            "--no-pdf", "--no-conditioned", "--device", "cpu", "--quiet", "--json",
        ],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "conditioned" not in json.loads((tmp_path / "qa" / "ct_qa.json").read_text())
    comparisons = {r["comparison"] for r in csv.DictReader(open(tmp_path / "qa" / "ct_qa_agreement.csv"))}
    assert "converted vs reference" in comparisons and "conditioned vs reference" not in comparisons
