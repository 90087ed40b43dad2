"""Border weight map (eq. 2 of the U-Net paper) against a direct, brute-force computation."""

from __future__ import annotations

import numpy as np
import pytest

from medseg.cells.weights import (
    WeightMapConfig,
    border_weight_map,
    class_weights,
    instances_from_mask,
    nearest_two_distances,
    separate_touching,
    touching_borders,
)


def _two_discs(gap: int = 1, r: int = 12, shape=(48, 64)):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    cy = shape[0] // 2
    cx1 = shape[1] // 2 - r - (gap + 1) // 2
    cx2 = cx1 + 2 * r + gap + 1
    labels = np.zeros(shape, np.int32)
    labels[(yy - cy) ** 2 + (xx - cx1) ** 2 <= r * r] = 1
    labels[(yy - cy) ** 2 + (xx - cx2) ** 2 <= r * r] = 2
    return labels, cy, (cx1 + r, cx2 - r)


def _direct(labels, w0, sigma):
    """w(x) computed pixel by pixel from the definition (distances to every cell pixel)."""
    yy, xx = np.mgrid[: labels.shape[0], : labels.shape[1]]
    dists = []
    for index in range(1, labels.max() + 1):
        py, px = np.nonzero(labels == index)
        d = np.sqrt((yy[..., None] - py) ** 2 + (xx[..., None] - px) ** 2).min(-1)
        dists.append(d)
    dists = np.sort(np.stack(dists), axis=0)
    term = w0 * np.exp(-((dists[0] + dists[1]) ** 2) / (2 * sigma**2))
    return class_weights(labels) + np.where(labels == 0, term, 0)


def test_touching_discs_peak_in_gap_and_match_formula():
    labels, cy, (gap_lo, gap_hi) = _two_discs(gap=1)
    cfg = WeightMapConfig(w0=10.0, sigma=5.0)
    w = border_weight_map(labels, cfg)
    expected = _direct(labels, cfg.w0, cfg.sigma)
    np.testing.assert_allclose(w, expected, rtol=1e-5, atol=1e-5)
    # the peak lies in the one-pixel gap on the line joining the centres
    py, px = np.unravel_index(np.argmax(w), w.shape)
    assert labels[py, px] == 0 and gap_lo < px < gap_hi and abs(py - cy) <= 1
    wc_bg = class_weights(labels)[0, 0]
    # d1 = d2 = 1 in a one-pixel gap: w = w_c + w0 exp(-4 / 2 sigma^2) ~ w_c + 0.92 w0
    assert w[py, px] == pytest.approx(wc_bg + cfg.w0 * np.exp(-4 / 50), rel=1e-4)
    assert w[py, px] > wc_bg + 0.9 * cfg.w0
    # along the gap column the border term decays monotonically away from the centre line
    column = w[cy:, px] - wc_bg
    assert np.all(np.diff(column[:15]) <= 1e-6) and column[14] < 0.5 * column[0]
    # moving away from the gap into the background, it decays with (d1 + d2)^2 / (2 sigma^2)
    assert w[py, px] > w[0, px] and w[0, 0] == pytest.approx(wc_bg, abs=1e-3)


@pytest.mark.parametrize("sigma", [3.0, 5.0])
def test_random_cells_match_direct(sigma):
    from medseg.synthetic.cells import SyntheticCellsConfig, synthetic_cells

    _, labels = synthetic_cells(7, SyntheticCellsConfig(height=40, width=48, radius_range=(5, 8)))
    labels = separate_touching(labels)
    w = border_weight_map(labels, WeightMapConfig(sigma=sigma))
    np.testing.assert_allclose(w, _direct(labels, 10.0, sigma), rtol=1e-4, atol=1e-4)


def test_class_weights_balance():
    labels = np.zeros((10, 10), np.int32)
    labels[:2] = 1
    wc = class_weights(labels)
    assert wc[labels > 0].sum() == pytest.approx(wc[labels == 0].sum())
    assert np.all(class_weights(np.zeros((4, 4), np.int32)) == 1)


def test_no_cells_is_class_weight_only():
    w = border_weight_map(np.zeros((8, 8), np.int32))
    assert np.all(w == 1)


def test_nearest_two_distances_reach():
    labels, *_ = _two_discs()
    d1, d2 = nearest_two_distances(labels, reach=3)
    assert np.isinf(d1[0, 0]) and np.all(d1[labels > 0] == 0)


def test_separate_touching_cuts_shared_border():
    labels = np.zeros((6, 8), np.int32)
    labels[1:5, 1:4] = 1
    labels[1:5, 4:7] = 2
    cut = separate_touching(labels)
    assert touching_borders(labels)[1:5, 3:5].all() and touching_borders(labels).sum() == 8
    assert np.all(cut[1:5, 3:5] == 0) and cut[2, 1] == 1 and cut[2, 6] == 2


def test_instances_from_binary_mask():
    mask = np.zeros((6, 6), np.uint8)
    mask[0:2, 0:2] = 255
    mask[4:6, 4:6] = 255
    assert instances_from_mask(mask).max() == 2
