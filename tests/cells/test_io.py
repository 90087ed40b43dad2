"""Image reading: PNG/TIFF, 8/16-bit, gray/RGB, stacks; clear errors for bad input."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from medseg.cells.io import normalise, read_image, read_mask, write_labels, write_png
from medseg.errors import InputError


@pytest.fixture
def gray():
    return (np.random.default_rng(0).random((30, 40)) * 200).astype(np.uint8)


def test_png8_png16_tiff16_rgb(tmp_path, gray):
    write_png(tmp_path / "a.png", gray)
    write_png(tmp_path / "b.png", gray.astype(np.uint16) * 300)
    tifffile.imwrite(tmp_path / "c.tif", gray.astype(np.uint16) * 300)
    write_png(tmp_path / "d.png", np.stack([gray, gray, gray], -1))
    for name in ("a.png", "b.png", "c.tif", "d.png"):
        planes, meta = read_image(tmp_path / name)
        assert planes.shape == (1, 30, 40), name
        np.testing.assert_allclose(normalise(planes[0]), normalise(gray.astype(np.float32)), atol=1e-3)
    assert read_image(tmp_path / "d.png")[1]["color"] == "rgb"
    assert read_image(tmp_path / "b.png")[1]["dtype"] == "uint16"


def test_stack(tmp_path, gray):
    tifffile.imwrite(tmp_path / "s.tif", np.stack([gray] * 3), photometric="minisblack")
    tifffile.imwrite(
        tmp_path / "planar_rgb.tif", np.stack([gray] * 3), photometric="rgb", planarconfig="separate"
    )
    assert read_image(tmp_path / "planar_rgb.tif")[0].shape == (1, 30, 40)
    planes, meta = read_image(tmp_path / "s.tif")
    assert planes.shape == (3, 30, 40) and meta["pages"] == 3
    with pytest.raises(InputError, match="expected a 2D image"):
        read_image(tmp_path / "s.tif", allow_stack=False)


@pytest.mark.filterwarnings("ignore:.*zero-size array:UserWarning")
def test_bad_inputs(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "junk.tif").write_bytes(b"not a tiff at all")
    tifffile.imwrite(tmp_path / "zero.tif", np.zeros((0, 5), np.uint8))
    tifffile.imwrite(tmp_path / "4d.tif", np.zeros((2, 2, 8, 8), np.uint8))
    for name, msg in [
        ("empty.png", "empty file"),
        ("junk.tif", "cannot read"),
        ("missing.png", "not found"),
        ("4d.tif", "expected a 2D image"),
    ]:
        with pytest.raises(InputError, match=msg):
            read_image(tmp_path / name)
    with pytest.raises(InputError):
        read_image(tmp_path / "zero.tif")


def test_constant_image_normalises_to_zero():
    assert np.all(normalise(np.full((5, 5), 7.0)) == 0)


def test_labels_roundtrip_16_and_32_bit(tmp_path):
    small = np.arange(12, dtype=np.int32).reshape(3, 4)
    write_labels(tmp_path / "l.tif", small)
    assert tifffile.imread(tmp_path / "l.tif").dtype == np.uint16
    np.testing.assert_array_equal(read_mask(tmp_path / "l.tif"), small)
    big = small.copy()
    big[0, 0] = 70000
    write_labels(tmp_path / "L.tif", big)
    assert tifffile.imread(tmp_path / "L.tif").dtype == np.uint32
