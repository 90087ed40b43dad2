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
    out = postprocess(
        seg, (1.0, 1.0, 1.0), PostprocessConfig(min_component_ml=0.05, min_component_fraction=0.1)
    )
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


def _hand_written_postprocess(seg, spacing, cfg):
    """The pre-skimage implementation, kept as the reference the library version must equal."""
    from scipy import ndimage as ndi

    seg = seg.copy()
    comps, n = ndi.label(seg > 0, structure=ndi.generate_binary_structure(3, 2))
    if n == 0:
        return seg
    sizes = np.bincount(comps.ravel())[1:]
    voxel_ml = float(np.prod(spacing)) / 1000.0
    keep = (sizes * voxel_ml >= cfg.min_component_ml) & (sizes >= cfg.min_component_fraction * sizes.max())
    seg[~np.concatenate([[True], keep])[comps]] = 0
    return seg


def test_postprocess_equals_hand_written_version():
    from scipy import ndimage as ndi

    rng = np.random.default_rng(3)
    blobs = ndi.gaussian_filter(rng.random((12, 40, 40)), 1.2) > 0.53  # many components of many sizes
    seg = (blobs * rng.integers(1, 5, blobs.shape)).astype(np.uint8)
    comps, n = ndi.label(seg > 0, structure=ndi.generate_binary_structure(3, 2))
    assert n > 10
    for cfg, spacing in (
        (PostprocessConfig(), (1.0, 1.0, 1.0)),
        (PostprocessConfig(0.05, 0.1), (2.0, 1.0, 1.0)),
        (PostprocessConfig(0.0, 0.3), (1.0, 1.0, 1.0)),
        (PostprocessConfig(0.0, 0.0), (1.0,) * 3),
    ):
        expected = _hand_written_postprocess(seg, spacing, cfg)
        got = postprocess(seg, spacing, cfg)
        assert np.array_equal(got, expected), cfg
    assert (
        0 < (postprocess(seg, (1.0, 1.0, 1.0)) > 0).sum() < (seg > 0).sum()
    )  # something removed, something kept
    one = np.zeros((4, 10, 10), np.uint8)
    one[1:3, 2:5, 2:5] = 2  # a single 18-voxel component: kept at 0.01 mL, removed at 0.02 mL
    for floor in (0.01, 0.02):
        cfg = PostprocessConfig(min_component_ml=floor)
        assert np.array_equal(
            postprocess(one, (1.0, 1.0, 1.0), cfg), _hand_written_postprocess(one, (1.0,) * 3, cfg)
        )
    assert postprocess(one, (1.0,) * 3, PostprocessConfig(min_component_ml=0.02)).sum() == 0
