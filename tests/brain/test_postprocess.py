"""The BraTS post-processing rules of brain/postprocess.py, each switchable."""

from __future__ import annotations

import numpy as np

from medseg.brain.postprocess import PostprocessConfig, fill_core_holes, postprocess, relabel_small_et

OFF = dict(require_core=False, min_component_ml=0.0, min_component_fraction=0.0)


def _tumour() -> np.ndarray:
    seg = np.zeros((10, 40, 40), np.uint8)
    seg[2:8, 5:35, 5:35] = 2  # edema
    seg[3:7, 12:28, 12:28] = 4  # enhancing ring ...
    seg[3:7, 15:25, 15:25] = 2  # ... around a centre wrongly called edema (a hole of the core)
    return seg


def test_small_enhancing_tumour_relabelled_as_core():
    seg = np.zeros((10, 20, 20), np.uint8)
    seg[2:8, 2:18, 2:18] = 2
    seg[4:6, 8:10, 8:10] = 4  # 8 voxels at 2 mm^3 = 0.016 mL
    out = relabel_small_et(seg, (2.0, 1.0, 1.0), 0.02)
    assert not (out == 4).any() and (out == 1).sum() == 8 and (out > 0).sum() == (seg > 0).sum()
    assert np.array_equal(relabel_small_et(seg, (2.0, 1.0, 1.0), 0.016), seg)  # not below the threshold
    cfg = PostprocessConfig(et_min_ml=0.02, **OFF)
    assert np.array_equal(postprocess(seg, (2.0, 1.0, 1.0), cfg), out)
    assert np.array_equal(postprocess(seg, (2.0, 1.0, 1.0), PostprocessConfig(**OFF)), seg)  # rule off


def test_holes_in_the_core_become_necrosis_per_axial_slice():
    seg = _tumour()
    out = fill_core_holes(seg)
    assert (out[3:7, 15:25, 15:25] == 1).all()  # the enclosed centre
    assert np.array_equal(out[seg != 2], seg[seg != 2])  # only edema/healthy inside the core changes
    assert (out[2:8, 5:12, 5:35] == 2).all()  # edema outside the core kept
    assert np.array_equal(postprocess(seg, (1.0,) * 3, PostprocessConfig(fill_core_holes=True, **OFF)), out)
    assert np.array_equal(postprocess(seg, (1.0,) * 3, PostprocessConfig(fill_core_holes=False, **OFF)), seg)


def test_config_from_weights_metadata_ignores_unknown_keys():
    cfg = PostprocessConfig.from_dict({"et_min_ml": 0.5, "fill_core_holes": True, "other": 1})
    assert cfg.et_min_ml == 0.5 and cfg.fill_core_holes and cfg.require_core
