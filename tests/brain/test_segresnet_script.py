"""The SegResNet comparison script's label handling: BraTS regions in, nested labels back."""

from __future__ import annotations

import numpy as np

from medseg.brain.volume3d import regions_to_labels


def test_regions_and_labels_round_trip(repo_script):
    mod = repo_script("scripts/train_segresnet_brain.py")
    labels = np.random.default_rng(0).choice(np.array([0, 1, 2, 4], np.uint8), size=(6, 7, 8))
    targets = mod.regions(labels)
    assert targets.shape == (3, 6, 7, 8)
    assert np.array_equal(targets[0] > 0, np.isin(labels, (1, 4)))  # tumour core
    assert np.array_equal(targets[1] > 0, labels > 0)  # whole tumour
    assert np.array_equal(targets[2] > 0, labels == 4)  # enhancing
    assert np.array_equal(regions_to_labels(targets), labels)


def test_an_enhancing_or_core_voxel_outside_the_whole_tumour_is_background():
    prob = np.zeros((3, 1, 1, 3), np.float32)
    prob[0, 0, 0, 0] = 0.9  # core only
    prob[2, 0, 0, 1] = 0.9  # enhancing only
    prob[:, 0, 0, 2] = 0.9  # all three: enhancing
    assert regions_to_labels(prob).ravel().tolist() == [0, 0, 4]


def test_patches_are_centred_near_tumour_and_padded_when_the_case_is_small(repo_script):
    mod = repo_script("scripts/train_segresnet_brain.py")
    rng = np.random.default_rng(1)
    labels = np.zeros((20, 30, 30), np.uint8)
    labels[8:12, 10:14, 10:14] = 4
    norm = rng.normal(size=(4, 20, 30, 30)).astype(np.float32)
    x, y = mod.sample(rng, norm, labels, 24)
    assert x.shape == (4, 24, 24, 24) and y.shape == (3, 24, 24, 24)
    hits = sum(mod.sample(rng, norm, labels, 24)[1][1].any() for _ in range(30))
    assert hits >= 15  # two thirds of the patches are drawn around a tumour voxel
