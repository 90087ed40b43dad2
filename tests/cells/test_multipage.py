"""Multi-page TIFF: every page is a plane (however the file was written); pages of different sizes refused."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile
from click.testing import CliRunner
from medseg_cli.main import cli
from PIL import Image

from medseg.cells.io import read_image, to_uint8
from medseg.synthetic.cells import SyntheticCellsConfig, synthetic_cells

H, W = 96, 112


def _planes(n: int = 3, size: tuple[int, int] = (H, W)) -> list[np.ndarray]:
    return [
        to_uint8(synthetic_cells(700 + k, SyntheticCellsConfig(height=size[0], width=size[1]))[0])
        for k in range(n)
    ]


def _write_pages(path, planes) -> None:
    """Page by page: one TIFF series per page (the case that was read as page 1 only)."""
    for p in planes:
        tifffile.imwrite(path, p, append=True)


WRITERS = {
    "page-by-page": _write_pages,
    "minisblack-stack": lambda path, planes: tifffile.imwrite(
        path, np.stack(planes), photometric="minisblack"
    ),
    "imagej-z": lambda path, planes: tifffile.imwrite(
        path, np.stack(planes), imagej=True, metadata={"axes": "ZYX"}
    ),
    "pillow": lambda path, planes: Image.fromarray(planes[0]).save(
        path, save_all=True, append_images=[Image.fromarray(p) for p in planes[1:]]
    ),
}


@pytest.mark.parametrize("writer", WRITERS)
def test_every_page_is_read_whatever_wrote_the_file(writer, tmp_path):
    planes = _planes()
    path = tmp_path / "stack.tif"
    WRITERS[writer](path, planes)
    pages, meta = read_image(path, keep_color=True)
    assert pages.shape == (3, H, W) and meta["pages"] == 3
    for k in range(3):
        assert np.array_equal(pages[k], planes[k].astype(np.float32)), k


def test_rgb_pages_written_page_by_page(tmp_path):
    rgb = [np.repeat(p[..., None], 3, axis=-1) for p in _planes()]
    for p in rgb:
        tifffile.imwrite(tmp_path / "rgb.tif", p, append=True)
    pages, meta = read_image(tmp_path / "rgb.tif", keep_color=True)
    assert pages.shape == (3, H, W, 3) and meta["color"] == "rgb" and meta["pages"] == 3


def _segment(*args):
    return CliRunner().invoke(
        cli, ["cells-segment", *map(str, args), "--device", "cpu", "--json", "--no-report"]
    )


def test_three_pages_are_three_segmented_planes(tmp_path):
    path = tmp_path / "stack.tif"
    _write_pages(path, _planes())
    out = tmp_path / "out"
    res = _segment(path, "--out", out)
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    item = doc["items"][0]
    assert item["metrics"]["pages"] == 3 and doc["summary"]["pages"] == 3
    assert len(item["metrics"]["cells_per_page"]) == 3 and all(
        n > 0 for n in item["metrics"]["cells_per_page"]
    )
    labels = tifffile.imread(out / "stack_labels.tif")
    assert labels.shape == (3, H, W)
    assert sorted(p.name for p in out.glob("stack_overlay_p*.png")) == [
        f"stack_overlay_p00{k}.png" for k in range(3)
    ]
    rows = (out / "stack_cells.csv").read_text().splitlines()[1:]
    assert {int(r.split(",")[0]) for r in rows} == {0, 1, 2}
    assert int(labels[2].max()) == item["metrics"]["cells_per_page"][2]


def test_pages_of_different_sizes_are_refused_alone_and_failed_in_a_batch(tmp_path):
    mixed = tmp_path / "in" / "mixed.tif"
    mixed.parent.mkdir()
    _write_pages(mixed, [*_planes(1), *_planes(1, (64, W))])
    before = mixed.read_bytes()
    res = _segment(mixed, "--out", tmp_path / "out")
    assert res.exit_code == 2, res.output
    error = json.loads(res.stdout)["error"]
    assert "pages of different sizes" in error and "96 x 112" in error and "64 x 112" in error
    assert not (tmp_path / "out").exists() and mixed.read_bytes() == before
    tifffile.imwrite(tmp_path / "in" / "good.tif", _planes(1)[0])
    res = _segment(tmp_path / "in", "--out", tmp_path / "out2")
    assert res.exit_code == 5, res.output
    status = {
        i["name"].rsplit("/", 1)[-1]: (i["status"], i["reason"]) for i in json.loads(res.stdout)["items"]
    }
    assert status["good.tif"][0] == "ok" and "pages of different sizes" in status["mixed.tif"][1]
    assert not list((tmp_path / "out2").glob("mixed*"))


SVS = Path(__file__).resolve().parents[2].parent / "shared/realdata/slide_cmu1_he_svs/CMU-1-Small-Region.svs"


@pytest.mark.skipif(not SVS.is_file(), reason="../shared/realdata/slide_cmu1_he_svs not present")
def test_slide_thumbnail_is_not_a_page(tmp_path, caplog):
    """An SVS (saved as .tif) holds a thumbnail, label and macro image: not planes of the image."""
    path = shutil.copy(SVS, tmp_path / "slide.tif")
    with caplog.at_level(logging.WARNING, logger="medseg.cells"):
        pages, meta = read_image(path, keep_color=True)
    assert pages.shape == (1, 2967, 2220, 3) and meta["pages"] == 1
    assert "only the first" in caplog.text and "Thumbnail" in caplog.text
