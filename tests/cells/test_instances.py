"""Instance separation: thin background lines, watershed on merges, small objects, gap filling."""

from __future__ import annotations

import numpy as np

from medseg.cells.instances import InstanceConfig, instances_from_probability


def _disc(shape, cy, cx, r):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def test_thin_line_separates_and_is_filled_back():
    shape = (40, 60)
    a, b = np.zeros(shape, bool), np.zeros(shape, bool)
    a[10:30, 10:29] = True
    b[10:30, 31:50] = True  # a 2 px background line between two rectangles
    prob = (a | b).astype(np.float32)
    labels = instances_from_probability(prob, InstanceConfig(watershed=False, grow=2))
    assert labels.max() == 2
    # the line pixels are given back, the outer edges are not grown
    assert (labels[10:30, 29:31] > 0).all()
    assert labels[9, 20] == 0 and labels[20, 9] == 0 and labels[20, 50] == 0
    assert set(np.unique(labels[10:30, 10:29])) == {1} or set(np.unique(labels[10:30, 10:29])) == {2}


def test_watershed_splits_merged_discs_but_not_single_disc():
    shape = (60, 90)
    merged = _disc(shape, 30, 30, 14) | _disc(shape, 30, 55, 14)  # overlapping: a neck, no line
    cc = instances_from_probability(merged.astype(float), InstanceConfig(watershed=False))
    ws = instances_from_probability(merged.astype(float), InstanceConfig(h=2, solidity=0.95))
    assert cc.max() == 1 and ws.max() == 2
    # solidity gate: two overlapping discs are ~0.9 solid, kept whole at the default 0.85 ...
    assert instances_from_probability(merged.astype(float), InstanceConfig(h=2)).max() == 1
    # ... while a clearly non-convex merge (discs joined by a thin bridge) is split by default
    dumbbell = _disc(shape, 30, 22, 12) | _disc(shape, 30, 64, 12)
    dumbbell[29:32, 22:64] = True
    assert instances_from_probability(dumbbell.astype(float)).max() == 2
    single = instances_from_probability(
        _disc(shape, 30, 40, 15).astype(float), InstanceConfig(h=2, solidity=1.1)
    )
    assert single.max() == 1  # even when forced through the watershed, one disc has one h-maximum


def test_small_objects_removed_and_threshold():
    prob = np.zeros((30, 30), np.float32)
    prob[2:4, 2:4] = 0.9  # 4 px speck
    prob[10:20, 10:20] = 0.7
    labels = instances_from_probability(prob, InstanceConfig(min_size=20))
    assert labels.max() == 1 and labels[3, 3] == 0
    assert instances_from_probability(prob, InstanceConfig(threshold=0.8, min_size=20)).max() == 0


def test_empty_probability():
    assert instances_from_probability(np.zeros((16, 16))).max() == 0
