"""One-to-one optimal matching (Hungarian) and mean AP over IoU 0.5:0.95."""

from __future__ import annotations

import numpy as np

from medseg.cells.evaluate import AP_THRESHOLDS, evaluate_labels, matched_ious, summarise


def greedy_tp(iou: np.ndarray, threshold: float) -> int:
    """Highest IoU first, each object used once (what a greedy matcher does)."""
    used_t, used_p, tp = set(), set(), 0
    for flat in np.argsort(-iou, axis=None):
        t, p = np.unravel_index(flat, iou.shape)
        if iou[t, p] <= threshold:
            break
        if t not in used_t and p not in used_p:
            used_t.add(t)
            used_p.add(p)
            tp += 1
    return tp


def test_hungarian_beats_greedy_where_greedy_is_wrong():
    # true A overlaps predicted X (0.45) and Y (0.35); true B overlaps only X (0.40).
    # Greedy takes A-X and leaves B unmatched (1 TP); the assignment pairs A-Y and B-X (2 TP).
    iou = np.array([[0.45, 0.35], [0.40, 0.0]])
    assert greedy_tp(iou, 0.3) == 1
    matched = matched_ious(iou, 0.3)
    assert matched.size == 2
    np.testing.assert_allclose(sorted(matched), [0.35, 0.40])


def test_constructed_label_images_match_one_to_one():
    # the same situation as label images: A (rows 0-9, cols 0-19); predictions overlap it partly
    truth = np.zeros((20, 40), np.int32)
    truth[0:10, 0:20] = 1  # A
    truth[10:20, 0:8] = 2  # B
    pred = np.zeros_like(truth)
    pred[0:10, 8:20] = 1  # X: IoU with A = 120/200 = 0.6
    pred[10:20, 0:8] = 2  # Y: exact B
    row = evaluate_labels(truth, pred)
    assert (row["tp"], row["fp"], row["fn"]) == (2, 0, 0)
    assert row["ap50"] == 1.0
    # mAP: A-X counts up to IoU 0.6 (0.5, 0.55), B-Y at every threshold
    expected = np.mean([(1 + (t < 0.6)) / (4 - (1 + (t < 0.6))) for t in AP_THRESHOLDS])
    assert abs(row["map_50_95"] - expected) < 1e-9
    assert 0 < row["map_50_95"] < 1


def test_perfect_and_empty():
    labels = np.zeros((30, 30), np.int32)
    labels[2:10, 2:10], labels[15:25, 15:25] = 1, 2
    row = evaluate_labels(labels, labels)
    assert row["ap50"] == 1.0 and row["map_50_95"] == 1.0
    empty = evaluate_labels(labels, np.zeros_like(labels))
    assert empty["ap50"] == 0.0 and empty["map_50_95"] == 0.0 and empty["fn"] == 2
    pooled = summarise([row, empty])
    assert abs(pooled["ap50"] - 2 / 4) < 1e-9 and abs(pooled["map_50_95"] - 0.5) < 1e-9
