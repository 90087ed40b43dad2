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
    for cfg, spacing in (  # the size rule alone (the core rule and hole filling have their own tests)
        (PostprocessConfig(require_core=False, fill_core_holes=False), (1.0, 1.0, 1.0)),
        (PostprocessConfig(0.05, 0.1, require_core=False, fill_core_holes=False), (2.0, 1.0, 1.0)),
        (PostprocessConfig(0.0, 0.3, require_core=False, fill_core_holes=False), (1.0, 1.0, 1.0)),
        (PostprocessConfig(0.0, 0.0, require_core=False, fill_core_holes=False), (1.0,) * 3),
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


def _two_tumours():
    seg = np.zeros((12, 50, 50), np.uint8)
    seg[2:10, 5:25, 5:25] = 2  # tumour with a core: 3200 voxels
    seg[4:8, 10:18, 10:18] = 1
    seg[5:7, 12:16, 12:16] = 4
    seg[2:10, 32:48, 32:48] = 2  # core-less "edema" (e.g. a periventricular cap): 2048 voxels
    return seg


def test_core_rule_drops_coreless_components():
    seg = _two_tumours()
    out = postprocess(seg, (1.0, 1.0, 1.0))
    assert np.array_equal(out[:, :, :30], seg[:, :, :30])  # the tumour with a core: untouched
    assert not out[:, :, 30:].any()  # the large edema-only component: removed
    kept = postprocess(seg, (1.0, 1.0, 1.0), PostprocessConfig(require_core=False))
    assert np.array_equal(kept, seg)  # rule off: both kept (the edema is > 10 % of the largest)


def test_core_rule_needs_min_core_volume_and_keeps_edema_only_predictions():
    seg = _two_tumours()
    seg[5, 40, 40] = 1  # one core voxel (1 uL) does not make the edema a tumour at 0.1 mL ...
    assert not postprocess(seg, (1.0, 1.0, 1.0))[:, :, 30:].any()
    seg[4:8, 38:44, 38:44] = 4  # ... 144 uL of enhancing tumour does
    assert np.array_equal(postprocess(seg, (1.0, 1.0, 1.0))[:, :, 30:], seg[:, :, 30:])
    edema_only = np.where(_two_tumours() > 0, 2, 0).astype(np.uint8)
    # no component holds core: nothing to be consistent with, the prediction is left to the size rule
    assert np.array_equal(postprocess(edema_only, (1.0, 1.0, 1.0)), edema_only)
    # coarse voxels: 0.1 mL = 2.2 voxels of 45 mm^3; a 3-voxel core counts
    coarse = _two_tumours()
    coarse[4:8, 10:18, 10:18] = 2
    coarse[5:7, 12:16, 12:16] = 2
    coarse[5, 14, 14:17] = 4
    out = postprocess(coarse, (5.0, 3.0, 3.0))
    assert out[5, 14, 14] == 4 and not out[:, :, 30:].any()
