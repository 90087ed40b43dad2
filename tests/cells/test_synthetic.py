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
