"""The synthetic microscopy generator: seeded, both modalities, many touching cells."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from medseg.cells.weights import touching_borders
from medseg.synthetic.cells import MODALITIES, SyntheticCellsConfig, synthetic_batch, synthetic_cells


@pytest.mark.parametrize("modality", ["fluorescence", "phase"])
def test_seeded_and_realistic(modality):
    cfg = SyntheticCellsConfig(modality=modality, height=128, width=160)
    a_img, a_lab = synthetic_cells(5, cfg)
    b_img, b_lab = synthetic_cells(5, cfg)
    c_img, _ = synthetic_cells(6, cfg)
    np.testing.assert_array_equal(a_img, b_img)
    np.testing.assert_array_equal(a_lab, b_lab)
    assert not np.array_equal(a_img, c_img)
    assert a_img.shape == a_lab.shape == (128, 160) and a_img.dtype == np.float32
    assert 0 <= a_img.min() and a_img.max() <= 1
    n = a_lab.max()
    assert n >= 15 and set(np.unique(a_lab)) == set(range(n + 1))
    # many cells touch another cell
    touching = {int(v) for v in np.unique(a_lab[touching_borders(a_lab)])} - {0}
    assert len(touching) >= 0.3 * n
    # cells differ from background in intensity (bright in fluorescence, dark in phase)
    fg, bg = a_img[a_lab > 0].mean(), a_img[a_lab == 0].mean()
    assert (fg > bg + 0.2) if modality == "fluorescence" else (fg < bg - 0.1)


def test_batch_alternates_modalities():
    cfg = SyntheticCellsConfig(height=96, width=96)
    pairs = synthetic_batch(3, 4, cfg)
    assert len(pairs) == 4
    for i, (image, labels) in enumerate(pairs):  # seeds 3000 + i, fluorescence / phase in turn
        expected = synthetic_cells(3000 + i, replace(cfg, modality=MODALITIES[i % 2]))
        np.testing.assert_array_equal(image, expected[0])
        np.testing.assert_array_equal(labels, expected[1])
    for image, labels in pairs[0::2]:  # fluorescence: dark background, bright cells
        bg, fg = np.median(image[labels == 0]), np.median(image[labels > 0])
        assert bg < 0.15 and fg > bg + 0.3
    for image, labels in pairs[1::2]:  # phase contrast: grey background, cells darker than it
        bg, fg = np.median(image[labels == 0]), np.median(image[labels > 0])
        assert 0.3 < bg < 0.85 and fg < bg - 0.1


def test_unknown_modality():
    with pytest.raises(ValueError):
        synthetic_cells(0, SyntheticCellsConfig(modality="xray"))


def test_randomised_batch_spans_what_real_images_vary_in():
    """The demo weights' training distribution: sizes 4-40 px, three looks, brightness over decades."""
    from medseg.synthetic.cells import randomised_batch, randomised_config

    configs = [randomised_config(np.random.default_rng([1, i])) for i in range(200)]
    diameters = np.array([sum(c.radius_range) for c in configs])  # mean diameter: 2 x mean radius
    assert diameters.min() < 6 and diameters.max() > 32
    assert {c.modality for c in configs} == {"fluorescence", "phase", "he"}
    assert max(c.brightness_decades for c in configs) > 1.8 and any(c.saturation > 0 for c in configs)
    assert any(c.photons for c in configs) and any(c.photons is None for c in configs)

    a = randomised_batch(5, 6, height=96, width=112)
    b = randomised_batch(5, 6, height=96, width=112)
    for (ia, la, ma), (ib, lb, mb) in zip(a, b):
        assert ma == mb and np.array_equal(ia, ib) and np.array_equal(la, lb)  # seeded
        assert la.shape == (96, 112) and ia.shape[:2] == (96, 112) and la.max() >= 1
        assert ia.shape == ((96, 112, 3) if ma == "he" else (96, 112))


def test_he_rendering_reads_as_he_with_bright_hematoxylin_nuclei():
    """H&E-like RGB: auto stain detection says he, and the hematoxylin plane the net reads has the
    nuclei brighter than the eosin background."""
    from medseg.cells.stain import detect_stain, nuclear_plane

    image, labels = synthetic_cells(11, SyntheticCellsConfig(modality="he", height=128, width=128))
    assert image.shape == (128, 128, 3) and 0 <= image.min() and image.max() <= 1
    assert detect_stain(image).stain == "he"
    h = nuclear_plane(image, "he")
    assert np.median(h[labels > 0]) > 2 * np.median(h[labels == 0])


def test_brightness_decades_and_saturation():
    cfg = SyntheticCellsConfig(height=160, width=160, brightness_decades=2.0, saturation=0.05, noise=0.0)
    image, labels = synthetic_cells(3, cfg)
    from scipy import ndimage as ndi

    means = ndi.mean(image, labels, np.arange(1, labels.max() + 1))
    assert means.max() / max(np.percentile(means, 10), 1e-6) > 10  # over a decade within one image
    assert (image >= image.max() - 1e-6).sum() >= 10  # a saturated plateau, not one peak pixel
