"""Metrics: pixel IoU/Dice, one-to-one matching at IoU 0.5, AP, adapted Rand error."""

from __future__ import annotations

import numpy as np
import pytest

from medseg.cells.evaluate import evaluate_labels, iou_matrix, summarise


def _labels():
    truth = np.zeros((20, 30), np.int32)
    truth[2:8, 2:8] = 1
    truth[2:8, 12:18] = 2
    truth[12:18, 2:8] = 3
    return truth


def test_perfect_prediction():
    truth = _labels()
    pred = truth.copy()
    pred[pred == 1] = 7  # label values need not match
    r = evaluate_labels(truth, pred)
    assert (
        r["pixel_iou"] == 1
        and r["ap50"] == 1
        and r["f1"] == 1
        and r["adapted_rand_error"] == pytest.approx(0)
    )


def test_missed_split_and_false_positive():
    truth = _labels()
    pred = truth.copy()
    pred[pred == 3] = 0  # missed cell -> FN
    pred[12:18, 20:26] = 9  # extra object -> FP
    pred[2:8, 8:12] = 1
    pred[2:8, 12:18] = 1  # cells 1 and 2 merged -> merged object matches neither at IoU > 0.5
    r = evaluate_labels(truth, pred)
    assert (r["tp"], r["fp"], r["fn"]) == (0, 2, 3)
    assert r["ap50"] == 0 and r["count_pred"] == 2 and r["count_true"] == 3
    assert r["adapted_rand_error"] > 0.1


def test_partial_overlap_threshold():
    truth = np.zeros((10, 10), np.int32)
    truth[0:4, 0:4] = 1
    pred = np.zeros_like(truth)
    pred[0:4, 1:5] = 1  # IoU = 12 / 20 = 0.6
    assert iou_matrix(truth, pred)[0, 0] == pytest.approx(0.6)
    assert evaluate_labels(truth, pred)["tp"] == 1
    pred[0:4, 2:6] = 1
    pred[0:4, 1] = 0  # IoU 8/24
    assert evaluate_labels(truth, pred)["tp"] == 0


def test_summarise_pools_counts():
    truth = _labels()
    rows = [evaluate_labels(truth, truth), evaluate_labels(truth, np.zeros_like(truth))]
    s = summarise(rows)
    assert s["tp"] == 3 and s["fn"] == 3 and s["ap50"] == pytest.approx(0.5)
    with pytest.raises(ValueError):
        evaluate_labels(truth, truth[:5])
