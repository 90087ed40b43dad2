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


def _mean(case, mod, tissue):
    return float(case.images[mod][case.tissue == tissue].mean())


def test_normal_tissue_contrast_per_sequence():
    """Grey/white matter and CSF ordered per sequence as in real MRI (bias field off: contrast only)."""
    from medseg.synthetic.brain import BrainPhantomConfig

    case = make_brain_case(12, BrainPhantomConfig(bias=False))
    csf, gm, wm = 3, 4, 5
    assert _mean(case, "t1", wm) > 1.2 * _mean(case, "t1", gm) > 1.2 * _mean(case, "t1", csf)
    assert _mean(case, "t2", csf) > 1.2 * _mean(case, "t2", gm) > 1.2 * _mean(case, "t2", wm)
    assert _mean(case, "flair", gm) > 1.1 * _mean(case, "flair", wm) > 2 * _mean(case, "flair", csf)
    # sulci and ventricles: CSF is a sizeable part of the skull-stripped brain
    assert 0.03 < float((case.tissue[case.brain_mask] == csf).mean()) < 0.4


def test_bright_on_flair_or_t1c_is_not_enough_to_be_tumour():
    """Healthy look-alikes exist: FLAIR-bright white matter (caps, small lesions) and enhancing vessels."""
    n_flair, n_t1c = 0, 0
    for seed in (11, 12, 13, 14):
        case = make_brain_case(seed)
        healthy = case.brain_mask & (case.label == 0)
        flair_cut = np.percentile(case.images["flair"][case.label == 2], 20)
        t1c_cut = np.percentile(case.images["t1c"][case.label == 4], 20)
        n_flair += int((case.images["flair"][healthy] > flair_cut).sum())
        n_t1c += int((case.images["t1c"][healthy] > t1c_cut).sum())
        assert not case.label[np.isin(case.tissue, (9, 10))].any()  # look-alikes are labelled healthy
    assert n_flair > 50 and n_t1c > 50


def test_edema_follows_white_matter():
    """Near the tumour core, edema takes white matter far more often than cortex, and never CSF."""
    from scipy import ndimage as ndi

    from medseg.synthetic.brain import BrainPhantomConfig

    cfg = BrainPhantomConfig(bias=False, noise=0.0)
    hits = {"wm": [0, 0], "gm": [0, 0]}
    for seed in (21, 22, 23):
        case = make_brain_case(seed, cfg)
        edema = case.label == 2
        assert not (edema & (case.anatomy == 3)).any()
        core = np.isin(case.label, (1, 4))
        dist = ndi.distance_transform_edt(~core, sampling=case.spacing)
        band = (dist > 0) & (dist <= 10.0)  # within 10 mm of the core
        for name, tissues in (("wm", (5, 9, 11)), ("gm", (4,))):
            where = band & np.isin(case.anatomy, tissues)
            hits[name][0] += int((edema & where).sum())
            hits[name][1] += int(where.sum())
    frac = {k: a / max(b, 1) for k, (a, b) in hits.items()}
    assert frac["wm"] > 0.6 and frac["wm"] > 2 * frac["gm"], frac
