"""Elastic deformation as in the paper: 3x3 grid, 10 px std, bicubic interpolation."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from medseg.cells.augment import AugmentConfig, augment, elastic_displacement, warp


def test_displacement_is_bicubic_through_grid_points():
    rng = np.random.default_rng(0)
    field = elastic_displacement(rng, (101, 61), grid=3, std=10.0)
    coarse = np.random.default_rng(0).normal(scale=10.0, size=(2, 3, 3))
    # the field passes through the coarse grid values at the grid positions
    np.testing.assert_allclose(field[:, ::50, ::30], coarse, atol=1e-9)
    coords = np.meshgrid(np.linspace(0, 2, 101), np.linspace(0, 2, 61), indexing="ij")
    ref = np.stack([ndimage.map_coordinates(c, coords, order=3, mode="nearest") for c in coarse])
    np.testing.assert_allclose(field, ref, atol=1e-9)


def test_displacement_std():
    rng = np.random.default_rng(1)
    values = np.concatenate([elastic_displacement(rng, (9, 9))[:, ::4, ::4].ravel() for _ in range(300)])
    assert abs(values.std() - 10.0) < 0.6


def test_warp_identity_and_label_preserving():
    labels = np.zeros((32, 32), np.int64)
    labels[8:20, 8:20] = 3
    image = labels.astype(np.float32)
    out_img, out_lab = warp([image, labels], np.zeros((2, 32, 32)), [1, 0])
    np.testing.assert_array_equal(out_lab, labels)
    rng = np.random.default_rng(2)
    img, lab, w = augment(
        rng, [image, labels, image], [1, 0, 1], AugmentConfig(elastic_prob=1.0, intensity=0)
    )
    assert set(np.unique(lab)) <= {0, 3} and lab.dtype == np.int64  # nearest keeps labels intact
    assert img.shape == (32, 32) and np.allclose(w, img)  # same transform for every array


def test_recolour_he_moves_tissue_colours_into_the_range_and_keeps_structure():
    from pathlib import Path

    from skimage.color import rgb2lab

    from medseg.cells.augment import HE_RECOLOUR_MEAN, recolour_he
    from medseg.cells.io import read_image

    he = Path(__file__).resolve().parents[1] / "data" / "real" / "he_cmu1_thumb.png"  # real H&E (CMU-1)
    rgb = read_image(he, keep_color=True)[0][0][..., :3].astype(np.uint8)
    a = recolour_he(rgb, np.random.default_rng(3))
    b = recolour_he(rgb, np.random.default_rng(3))
    c = recolour_he(rgb, np.random.default_rng(4))
    assert a.dtype == np.uint8 and a.shape == rgb.shape
    assert np.array_equal(a, b) and not np.array_equal(a, c)  # seeded
    lab = rgb2lab(a / 255.0)
    tissue = rgb2lab(rgb / 255.0)[..., 0] < 85
    mean = lab[tissue].mean(axis=0)
    for k, (lo, hi) in enumerate(HE_RECOLOUR_MEAN):  # gamut clipping moves it a little
        assert lo - 4 <= mean[k] <= hi + 4, (k, mean)
    # the structure stays: lightness of the copy follows the original's, pixel by pixel
    assert np.corrcoef(lab[..., 0].ravel(), rgb2lab(rgb / 255.0)[..., 0].ravel())[0, 1] > 0.95
    glass = np.full((16, 16, 3), 235, np.uint8)
    assert np.array_equal(recolour_he(glass, np.random.default_rng(0)), glass)


def test_training_script_adds_recoloured_copies_of_he_and_repeats_the_rest():
    """``train_demo_weights_cells.py --stain-copies 2``: an RGB H&E image gives 3 samples whose planes
    differ (read after recolouring, as at inference); a fluorescence image is repeated as it is."""
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "data" / "real" / "dsb2018_val"
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
    try:
        import train_demo_weights_cells as script
    finally:
        sys.path.pop(0)
    kinds = dict(line.split("\t")[:2] for line in (root / "index.tsv").read_text().splitlines()[1:])
    he = next(i for i, k in sorted(kinds.items()) if k == "brightfield")
    fluo = next(i for i, k in sorted(kinds.items()) if k == "fluorescence")
    opts = dict(local=False, kind="3class", max_class_weight=10.0)
    plain = script.load_samples(root, [he, fluo], **opts)
    more = script.load_samples(root, [he, fluo], stain_copies=2, **opts)
    assert len(plain) == 2 and len(more) == 6
    np.testing.assert_array_equal(more[0].image, plain[0].image)  # the original first
    assert not np.allclose(more[1].image, more[0].image) and not np.allclose(more[2].image, more[1].image)
    assert np.array_equal(more[1].target, more[0].target)  # same nuclei, other colours
    assert all(np.array_equal(s.image, plain[1].image) for s in more[3:])  # fluorescence: repeats
