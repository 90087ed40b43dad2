"""cells-train pairs: RGB images with 2-D masks (the DSB 2018 brightfield case), and masks that cannot be
instance labels (empty, a raw image saved as the mask, non-integer floats) refused per pair, in words."""

from __future__ import annotations

import json

import numpy as np
import tifffile
from click.testing import CliRunner
from medseg_cli.main import cli

from medseg.cells.dataset import load_pairs
from medseg.cells.io import write_labels, write_png


def _cells(h: int = 64, w: int = 80) -> np.ndarray:
    labels = np.zeros((h, w), np.int32)
    for k, (y, x) in enumerate([(5, 5), (5, 40), (35, 10), (35, 50)], 1):
        labels[y : y + 14, x : x + 14] = k
    return labels


def _rgb_brightfield(labels: np.ndarray) -> np.ndarray:
    """Pink glass with purple (hematoxylin-like) nuclei."""
    rgb = np.empty((*labels.shape, 3), np.uint8)
    rgb[:] = (235, 200, 225)
    rgb[labels > 0] = (90, 40, 130)
    return rgb


def test_rgb_image_with_2d_mask_is_a_usable_pair(tmp_path):
    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir()
    masks.mkdir()
    labels = _cells()
    write_png(images / "x.png", _rgb_brightfield(labels))
    write_labels(masks / "x.tif", labels)
    pairs, skipped = load_pairs(images, masks)
    assert not skipped and len(pairs) == 1
    image, mask = pairs[0]
    assert image.shape == mask.shape == (64, 80)
    assert image[labels > 0].mean() > image[labels == 0].mean() + 0.3  # nuclei bright (hematoxylin)


def test_masks_that_are_not_labels_are_refused_in_words(tmp_path):
    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir()
    masks.mkdir()
    rng = np.random.default_rng(0)
    labels = _cells()
    for name in ("empty", "raw", "float", "good"):
        write_png(images / f"{name}.png", _rgb_brightfield(labels))
    write_labels(masks / "empty.tif", np.zeros_like(labels))
    write_labels(masks / "raw.tif", rng.integers(0, 255, labels.shape).astype(np.int32))  # an image
    tifffile.imwrite(masks / "float.tif", labels.astype(np.float32) + 0.25)
    write_labels(masks / "good.tif", labels)
    pairs, skipped = load_pairs(images, masks)
    assert len(pairs) == 1
    reasons = {s["image"].rsplit("/", 1)[-1]: s["reason"] for s in skipped}
    assert "mask is empty" in reasons["empty.png"]
    assert "not instance labels" in reasons["raw.png"] and "image saved as the mask" in reasons["raw.png"]
    assert "non-integer" in reasons["float.png"]

    (images / "good.png").unlink()
    res = CliRunner().invoke(
        cli,
        [
            "cells-train",
            "--images",
            str(images),
            "--masks",
            str(masks),
            "--out",
            str(tmp_path / "r"),
            "--json",
        ],
    )
    assert res.exit_code == 2 and not (tmp_path / "r").exists()
    error = json.loads(res.stdout)["error"]
    assert "no usable image/mask pairs" in error and "mask is empty" in error
