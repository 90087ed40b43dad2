"""ct-report's emphysema agreement: ICC(A,1) and Bland-Altman limits of agreement of LAA-950 and Perc15."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest

from medseg.ct.metrics import bland_altman, icc_a1
from medseg.ct.report import QA_AGREEMENT, cohort_summary, qa_files, write_qa_outputs
from medseg.results import ItemResult

# Shrout & Fleiss (1979), Psychol Bull 86:420, Table 2: 6 targets rated by 4 judges.
SHROUT_FLEISS = np.array(
    [[9, 2, 5, 8], [6, 1, 3, 2], [8, 4, 6, 8], [7, 1, 2, 6], [10, 5, 6, 9], [6, 2, 4, 7]], float
)


def test_icc_matches_shrout_and_fleiss_table_4():
    """Their ICC(2,1) of the 4 judges is 0.29 (McGraw & Wong's ICC(A,1)); exactly 0.28976."""
    assert icc_a1(SHROUT_FLEISS) == pytest.approx(0.2898, abs=5e-5)


def test_icc_of_two_measurements_by_hand():
    """Judges 1 and 4 of Shrout & Fleiss as (measured, reference), worked by hand:
    row means 8.5 4 8 6.5 9.5 6.5, grand mean 86/12; SS rows 37.667 (MSR 113/15), SS columns 3 (MSC 3),
    SS total 47.667, so SS error 7 (MSE 1.4): ICC = (113/15 - 7/5) / (113/15 + 7/5 + 2 (3 - 7/5) / 6)
    = (92/15) / (142/15) = 46/71."""
    pairs = SHROUT_FLEISS[:, [0, 3]]
    assert icc_a1(pairs) == pytest.approx(46 / 71, abs=1e-12)
    ba = bland_altman(pairs[:, 0], pairs[:, 1])
    diffs = pairs[:, 0] - pairs[:, 1]  # 1 4 0 1 1 -1: mean 1, SD sqrt(14/5)
    assert ba.bias == pytest.approx(1.0) and ba.sd == pytest.approx(math.sqrt(14 / 5))
    assert ba.loa_low == pytest.approx(1 - 1.96 * math.sqrt(2.8)) and ba.icc == pytest.approx(46 / 71)
    assert ba.n == len(diffs) == 6 and diffs.mean() == 1.0


def test_icc_absolute_agreement_counts_an_offset_against_it():
    """A constant offset keeps the correlation at 1 but lowers ICC(A,1); identical values give 1."""
    ref = np.array([5.0, 9.0, 12.0, 15.0, 20.0])
    assert icc_a1(np.stack([ref, ref], 1)) == pytest.approx(1.0)
    shifted = icc_a1(np.stack([ref + 5.0, ref], 1))
    # by hand: row means ref + 2.5, so MSR = 2 * 130.8 / 4 = 65.4; MSC = 5 * (2.5^2 + 2.5^2) = 62.5; MSE 0
    assert shifted == pytest.approx(65.4 / (65.4 + 2 * 62.5 / 5), abs=1e-9)
    assert math.isnan(icc_a1(np.ones((4, 2))))  # nothing varies: nothing to agree on
    assert math.isnan(icc_a1(np.array([[1.0, 2.0]])))  # one exam
    with_nan = np.array([[1.0, 1.5], [np.nan, 3.0], [4.0, 4.5], [6.0, 5.0]])
    assert icc_a1(with_nan) == pytest.approx(icc_a1(with_nan[[0, 2, 3]]))


def _cohort() -> list[ItemResult]:
    """Four exams whose converted LAA-950 are the hand-worked pairs above; Perc15 offset by 10 HU."""
    items = []
    for i, (conv, ref) in enumerate(SHROUT_FLEISS[:, [0, 3]]):
        items.append(
            ItemResult(
                f"exam{i}",
                metrics={
                    "rmse_original_hu": 100.0,
                    "rmse_converted_hu": 10.0,
                    "rmse_reduction_pct": 90.0,
                    "laa950_original": ref + 8.0,
                    "laa950_converted": conv,
                    "laa950_reference": ref,
                    "perc15_original": -900.0 - 3 * ref,
                    "perc15_converted": -880.0 - 3 * ref,
                    "perc15_reference": -890.0 - 3 * ref,
                },
            )
        )
    items.append(ItemResult("broken", status="failed", reason="unreadable"))
    return items


def test_cohort_agreement_in_json_csv_and_html(tmp_path):
    items = _cohort()
    summary = cohort_summary(items)
    conv = summary["bland_altman_laa950"]["converted_vs_reference"]
    assert conv["icc"] == pytest.approx(46 / 71) and conv["bias"] == pytest.approx(1.0)
    orig = summary["bland_altman_laa950"]["original_vs_reference"]
    assert orig["bias"] == pytest.approx(8.0) and orig["sd"] == pytest.approx(0.0, abs=1e-12)
    p15 = summary["bland_altman_perc15"]["converted_vs_reference"]
    assert p15["bias"] == pytest.approx(10.0) and p15["n"] == 6 and 0 < p15["icc"] < 1

    assert QA_AGREEMENT in qa_files(pdf=False)
    written = write_qa_outputs(
        tmp_path, items, source="B50f", target="B30f", inputs=["c"], figures=[], pdf=False
    )
    rows = list(csv.DictReader(open(written["agreement_csv"])))
    assert [(r["quantity"], r["comparison"]) for r in rows] == [
        ("LAA-950", "original vs reference"),
        ("LAA-950", "converted vs reference"),
        ("Perc15", "original vs reference"),
        ("Perc15", "converted vs reference"),
    ]
    assert float(rows[1]["icc"]) == pytest.approx(46 / 71, abs=1e-4)
    assert float(rows[1]["loa_high"]) == pytest.approx(1 + 1.96 * math.sqrt(2.8), abs=1e-4)
    doc = json.loads((tmp_path / "ct_qa.json").read_text())
    assert doc["summary"]["bland_altman_perc15"]["converted_vs_reference"]["bias"] == pytest.approx(10.0)
    html = (tmp_path / "ct_qa.html").read_text()
    assert "ICC(A,1)" in html and "Perc15" in html and "limits of agreement" in html


def test_one_exam_has_no_icc_and_empty_csv_cells(tmp_path):
    items = _cohort()[:1]
    written = write_qa_outputs(
        tmp_path, items, source="B50f", target="B30f", inputs=["c"], figures=[], pdf=False
    )
    rows = list(csv.DictReader(open(written["agreement_csv"])))
    assert rows[1]["icc"] == "" and rows[1]["sd"] == "" and float(rows[1]["bias"]) == 1.0
