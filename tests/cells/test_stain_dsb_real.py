"""--stain auto on the real DSB 2018 kinds that were refused or misread before issue 18: grey brightfield
(dark nuclei on bright glass, an RGB file with equal channels) and colour (H&E-like) brightfield."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
from click.testing import CliRunner
from medseg_cli.main import cli

from medseg.cells.io import read_image
from medseg.cells.stain import detect_stain, prepare_plane

REAL = Path(__file__).resolve().parents[1] / "data" / "real"
GREY = REAL / "dsb2018_grey_brightfield" / "grey_bf_crop.png"
VAL = REAL / "dsb2018_val"
pytestmark = pytest.mark.skipif(not GREY.is_file(), reason="real DSB2018 test images absent")


def _he_image() -> Path:
    rows = (VAL / "index.tsv").read_text().splitlines()[1:]
    return VAL / "images" / f"{next(r.split()[0] for r in rows if r.split()[1] == 'brightfield')}.png"


def test_grey_brightfield_is_read_with_nuclei_bright():
    planes, meta = read_image(GREY, keep_color=True)
    decision = detect_stain(planes[0])
    assert decision.stain == "he" and "grey brightfield" in decision.how
    plane = prepare_plane(planes[0])[0]
    mask = tifffile.imread(GREY.with_name("grey_bf_crop_mask.tif")) > 0
    assert plane[mask].mean() > plane[~mask].mean() + 0.3  # inverted: nuclei bright on dark


def test_he_like_dsb_image_is_he_and_nuclei_bright():
    path = _he_image()
    planes, _ = read_image(path, keep_color=True)
    assert detect_stain(planes[0]).stain == "he"
    plane = prepare_plane(planes[0])[0]
    mask = tifffile.imread(VAL / "masks" / f"{path.stem}.tif") > 0
    assert plane[mask].mean() > plane[~mask].mean() + 0.2


def test_cells_segment_auto_does_not_refuse_either(tmp_path):
    import torch

    torch.set_num_threads(1)
    out = tmp_path / "out"
    res = CliRunner().invoke(
        cli,
        ["cells-segment", str(GREY), str(_he_image()), "--out", str(out), "--device", "cpu", "--json", "-q"]
        + ["--no-report"],
    )
    assert res.exit_code == 0, res.output
    items = json.loads(res.stdout)["items"]
    assert [i["status"] for i in items] == ["ok", "ok"]
    assert {i["metrics"]["stain"] for i in items} == {"he"}
    assert all(
        np.asarray(tifffile.imread(out / f"{Path(i['name']).stem}_labels.tif")).max() > 0 for i in items
    )


def _fluo_image() -> Path:
    rows = (VAL / "index.tsv").read_text().splitlines()[1:]
    return VAL / "images" / f"{next(r.split()[0] for r in rows if r.split()[1] == 'fluorescence')}.png"


def test_one_channel_rgb_is_that_channel_and_a_composite_is_still_refused(tmp_path):
    """DAPI saved in the blue channel of an RGB file (the others empty) is the fluorescence image it
    holds: same decision and the same cells as the grey original; two channels with different objects
    stay a composite whose nuclear channel is not knowable (refused, naming --channel)."""
    import torch

    from medseg.cells.io import write_png
    from medseg.errors import InputError

    torch.set_num_threads(1)
    planes, _ = read_image(_fluo_image(), keep_color=True)
    grey = planes[0] if planes[0].ndim == 2 else planes[0][..., :3].mean(-1)
    grey = np.clip(grey, 0, 255).astype(np.uint8)
    blue = np.zeros((*grey.shape, 3), np.uint8)
    blue[..., 2] = grey
    assert detect_stain(blue).stain == "fluo" == detect_stain(grey).stain
    folder = tmp_path / "in"
    folder.mkdir()
    write_png(folder / "grey.png", grey)
    write_png(folder / "blue.png", blue)
    out = tmp_path / "out"
    res = CliRunner().invoke(
        cli,
        ["cells-segment", str(folder), "--out", str(out), "--device", "cpu", "--json", "-q", "--no-report"],
    )
    assert res.exit_code == 0, res.output
    a, b = (tifffile.imread(out / f"{n}_labels.tif") for n in ("grey", "blue"))
    assert a.max() > 5 and abs(int(a.max()) - int(b.max())) <= 1
    assert np.mean((a > 0) == (b > 0)) > 0.99
    composite = blue.copy()
    composite[..., 1] = np.roll(grey, grey.shape[1] // 2, axis=1)  # another channel, other objects
    with pytest.raises(InputError, match="--channel"):
        detect_stain(composite)
