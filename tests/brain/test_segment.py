"""Post-processing, region definitions and volumes."""

from __future__ import annotations

import numpy as np

from medseg.brain.segment import PostprocessConfig, postprocess, region_masks, region_volumes_ml


def test_small_blobs_removed_big_kept():
    seg = np.zeros((10, 40, 40), np.uint8)
    seg[2:8, 5:20, 5:20] = 2  # tumour: 1350 voxels
    seg[4:6, 8:12, 8:12] = 4
    seg[5, 30, 30] = 1  # isolated false positive
    seg[1:3, 35:37, 2:4] = 2  # small blob: 8 voxels
    out = postprocess(seg, (1.0, 1.0, 1.0), PostprocessConfig(min_component_ml=0.05, min_component_fraction=0.1))
    assert out[5, 30, 30] == 0 and not out[1:3, 35:37, 2:4].any()
    assert np.array_equal(out[2:8, 5:20, 5:20], seg[2:8, 5:20, 5:20])
    mask = np.ones_like(seg, bool)
    mask[:, :, :10] = False
    assert not postprocess(seg, (1.0, 1.0, 1.0), mask=mask)[:, :, :10].any()


def test_regions_and_volumes():
    seg = np.array([0, 1, 2, 3, 4, 4], np.uint8).reshape(1, 1, 6)
    m = region_masks(seg)
    assert m["WT"].sum() == 5 and m["TC"].sum() == 4 and m["ET"].sum() == 2
    vols = region_volumes_ml(seg, (2.0, 1.0, 1.0))  # 2 mm^3 voxels
    assert vols == {"WT_ml": 0.01, "TC_ml": 0.008, "ET_ml": 0.004}
