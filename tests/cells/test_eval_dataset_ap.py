"""cells-eval: dataset-level AP (TP/FP/FN pooled over images, StarDist / Kaggle) vs the mean of per-image
AP, and the per-kind breakdown, on a hand-built case whose counts are known."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from medseg_cli.main import cli

from medseg.cells.evaluate import evaluate_labels, summarise, summarise_groups
from medseg.cells.io import write_labels


def _square(a: np.ndarray, y: int, x: int, label: int) -> None:
    a[y : y + 10, x : x + 10] = label


def hand_built() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """a: 3 true cells, 2 found exactly + 1 false positive (TP 2, FP 1, FN 1 -> AP 0.5);
    b: 1 true cell found exactly (TP 1 -> AP 1.0). Pooled: TP 3, FP 1, FN 1 -> 0.6; per-image mean 0.75."""
    ta, pa = np.zeros((64, 64), np.int32), np.zeros((64, 64), np.int32)
    for k, (y, x) in enumerate([(2, 2), (2, 30), (30, 2)], 1):
        _square(ta, y, x, k)
    _square(pa, 2, 2, 1)
    _square(pa, 2, 30, 2)
    _square(pa, 40, 40, 3)  # nothing there
    tb, pb = np.zeros((64, 64), np.int32), np.zeros((64, 64), np.int32)
    _square(tb, 20, 20, 1)
    _square(pb, 20, 20, 5)
    return {"a": (ta, pa), "b": (tb, pb)}


def test_dataset_and_per_image_ap_on_known_counts():
    rows = [evaluate_labels(t, p) for t, p in hand_built().values()]
    assert [(r["tp"], r["fp"], r["fn"]) for r in rows] == [(2, 1, 1), (1, 0, 0)]
    s = summarise(rows)
    assert (s["tp"], s["fp"], s["fn"]) == (3, 1, 1)
    assert s["ap50"] == pytest.approx(0.6)  # dataset level
    assert s["mean_image_ap50"] == pytest.approx(0.75)  # (0.5 + 1.0) / 2
    # exact matches: every threshold up to 0.95 matches the same pairs
    assert s["map_50_95"] == pytest.approx(0.6) and s["mean_image_map_50_95"] == pytest.approx(0.75)
    groups = summarise_groups(rows, ["fluorescence", "brightfield"])
    assert groups["fluorescence"]["ap50"] == pytest.approx(0.5) and groups["brightfield"]["ap50"] == 1.0


def test_cli_reports_groups_from_index_tsv_and_group_by(tmp_path):
    pred, truth = tmp_path / "pred", tmp_path / "data" / "masks"
    pred.mkdir()
    truth.mkdir(parents=True)
    for name, (t, p) in hand_built().items():
        write_labels(truth / f"{name}.tif", t)
        write_labels(pred / f"{name}_labels.tif", p)
    (tmp_path / "data" / "index.tsv").write_text("id\tkind\na\tfluorescence\nb\tbrightfield\n")
    res = CliRunner().invoke(cli, ["cells-eval", str(pred), "--truth", str(truth), "--json", "-q"])
    assert res.exit_code == 0, res.output
    s = json.loads(res.stdout)["summary"]
    assert s["ap50"] == pytest.approx(0.6) and s["mean_image_ap50"] == pytest.approx(0.75)
    assert s["group_by"].endswith("index.tsv:kind")
    assert s["groups"]["fluorescence"]["ap50"] == pytest.approx(0.5)
    assert s["groups"]["brightfield"]["count_true"] == 1
    res = CliRunner().invoke(cli, ["cells-eval", str(pred), "--truth", str(truth), "-q"])
    assert "dataset AP@0.5 0.6000" in res.stdout and "mean per image 0.7500" in res.stdout
    assert "fluorescence: 1 image(s)" in res.stdout
    table = tmp_path / "groups.csv"
    table.write_text("name,lab\na.png,one\nb.png,one\n")
    res = CliRunner().invoke(
        cli, ["cells-eval", str(pred), "--truth", str(truth), "--group-by", f"{table}:lab", "--json", "-q"]
    )
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["summary"]["groups"]["one"]["ap50"] == pytest.approx(0.6)
    res = CliRunner().invoke(
        cli, ["cells-eval", str(pred), "--truth", str(truth), "--group-by", f"{table}:nope", "--json", "-q"]
    )
    assert res.exit_code == 2 and "no column 'nope'" in json.loads(res.stdout)["error"]
