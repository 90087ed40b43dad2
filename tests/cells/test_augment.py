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
