"""Synthetic 4-modality brain generator: seeded, BraTS-like contrasts, NIfTI output."""

from __future__ import annotations

import numpy as np

from medseg.synthetic.brain import MODALITIES, make_brain_case, write_brain_case


def test_seeded_and_labelled():
    a, b, c = make_brain_case(3), make_brain_case(3), make_brain_case(4)
    assert np.array_equal(a.label, b.label) and np.array_equal(a.images["t1c"], b.images["t1c"])
    assert not np.array_equal(a.label, c.label)
    assert set(np.unique(a.label)) == {0, 1, 2, 4}
    assert a.label.shape == (24, 64, 64) and all(a.images[m].shape == (24, 64, 64) for m in MODALITIES)
    assert not np.any(a.images["t1"][~a.brain_mask])  # skull-stripped


def test_tumour_contrasts():
    case = make_brain_case(11)
    lab, im = case.label, case.images
    healthy = (lab == 0) & case.brain_mask
    # enhancing rim bright on T1c only; edema bright on FLAIR; necrosis bright on T2
    assert im["t1c"][lab == 4].mean() > 1.3 * im["t1c"][healthy].mean()
    assert im["t1"][lab == 4].mean() < 1.1 * im["t1"][healthy].mean()
    assert im["flair"][lab == 2].mean() > 1.4 * im["flair"][healthy].mean()
    assert im["t2"][lab == 1].mean() > 1.3 * im["t2"][healthy].mean()


def test_written_as_brats_case_folder(tmp_path):
    from medseg.brain.io import find_case_files, load_case, load_seg

    case = make_brain_case(5)
    folder = write_brain_case(case, tmp_path, name="SYN_5")
    files = find_case_files(folder)
    stack, geo = load_case(files)
    assert stack.shape == (4, 24, 64, 64)
    assert geo.spacing == (5.0, 3.0, 3.0)
    np.testing.assert_allclose(stack[1], case.images["t1c"], rtol=1e-6)
    assert np.array_equal(load_seg(files, geo), case.label)
