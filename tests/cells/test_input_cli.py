"""cells-segment / cells-train on awkward input: --diameter rescaling (px, um, auto) maps results
back to the input size, all-zero images, undeterminable stains, a training mask of another size."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
from click.testing import CliRunner
from medseg_cli.main import cli
from skimage.transform import rescale

from medseg.cells.evaluate import evaluate_labels
from medseg.cells.io import to_uint8, write_labels, write_png
from medseg.synthetic.cells import SyntheticCellsConfig, synthetic_cells


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def segment(inputs, out, *extra):
    res = run(
        "cells-segment", inputs, "--out", out, "--device", "cpu", "--json", "--quiet", "--no-report", *extra
    )
    return res, (json.loads(res.stdout) if res.stdout.strip() else None)


@pytest.fixture(scope="module")
def big_cells(tmp_path_factory):
    """Synthetic fluorescence cells at twice the demo weights' training scale (diameter ~46 px)."""
    image, labels = synthetic_cells(7100, SyntheticCellsConfig(height=160, width=176))
    big = rescale(image, 2, order=1)
    big_labels = rescale(labels, 2, order=0, preserve_range=True, anti_aliasing=False).astype(np.int32)
    folder = tmp_path_factory.mktemp("big")
    write_png(folder / "big.png", to_uint8(big))
    return folder / "big.png", big_labels


def test_diameter_rescales_and_maps_back(big_cells, tmp_path):
    path, truth = big_cells
    scores = {}
    for name, extra in {
        "none": ["--diameter", "none"],
        "default": [],
        "px": ["--diameter", "46"],
        "um": ["--diameter", "23", "--pixel-size", "0.5"],
        "auto": ["--diameter", "auto"],
    }.items():
        res, doc = segment(path, tmp_path / name, *extra)
        assert res.exit_code == 0, res.output
        labels = tifffile.imread(tmp_path / name / "big_labels.tif")
        assert labels.shape == truth.shape  # mapped back to the input size
        scores[name] = evaluate_labels(truth, labels.astype(np.int32))["ap50"]
        metrics = doc["items"][0]["metrics"]
        if name in ("px", "um"):
            assert metrics["diameter_px"] == 46
        if name in ("auto", "default"):  # auto is the default (chosen on the real validation split)
            assert 30 <= metrics["diameter_px"] <= 60, metrics
    print(scores)
    np.testing.assert_allclose(scores["px"], scores["um"])
    assert scores["default"] == scores["auto"]
    # with the synthetic-data weights (before issue 18): no rescaling 0.20 (cells twice the training size
    # fell apart), --diameter 0.69, auto 0.60. The DSB 2018 weights were trained with scale jitter
    # 0.6-1.6 on nuclei of many sizes: no rescaling 0.94 here, --diameter 46 0.79 (it shrinks these
    # cells to the training median of 17.5 px). Rescaling must still work, not necessarily help. The
    # shipped 3class weights (instance method chosen on the real validation split): no rescaling 0.70
    # (interior seeds split some of these twice-the-training-size cells), --diameter 46 and auto 0.93.
    assert scores["px"] >= 0.6 and scores["auto"] >= 0.5 and scores["none"] >= 0.65


def test_bad_diameter_is_a_usage_error(big_cells, tmp_path):
    path, _ = big_cells
    for bad in ("-3", "zero", "0"):
        res, _ = segment(path, tmp_path / "x", "--diameter", bad)
        assert res.exit_code == 2 and "--diameter" in res.output and "Traceback" not in res.output


def test_all_zero_image_gives_zero_cells(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    tifffile.imwrite(folder / "zero.tif", np.zeros((96, 112), np.uint16))
    res, doc = segment(folder, tmp_path / "out", "--diameter", "auto")
    assert res.exit_code == 0, res.output
    assert doc["items"][0]["status"] == "ok" and doc["items"][0]["metrics"]["cells"] == 0
    assert tifffile.imread(tmp_path / "out" / "zero_labels.tif").max() == 0


def test_undeterminable_stain_is_a_failed_item_naming_stain(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    composite = np.zeros((96, 96, 3), np.uint8)
    composite[20:40, 20:40, 0] = 200
    composite[50:70, 50:70, 1] = 180
    write_png(folder / "composite.png", composite)
    res, doc = segment(folder, tmp_path / "out")
    assert res.exit_code == 5
    assert "--stain" in doc["items"][0]["reason"]
    res, doc = segment(folder, tmp_path / "out2", "--stain", "fluo", "--channel", "1")
    assert res.exit_code == 0 and doc["items"][0]["metrics"]["stain"] == "fluo"


def test_training_mask_of_another_size_is_one_line_exit_2(tmp_path):
    images, masks = tmp_path / "img", tmp_path / "mask"
    images.mkdir()
    masks.mkdir()
    image, labels = synthetic_cells(5, SyntheticCellsConfig(height=96, width=112))
    write_png(images / "a.png", to_uint8(image))
    write_labels(masks / "a_mask.tif", labels[:80])
    res = CliRunner().invoke(
        cli,
        ["cells-train", "--images", str(images), "--masks", str(masks), "--out", str(tmp_path / "run")],
    )
    assert res.exit_code == 2, res.output
    lines = [line for line in res.output.strip().splitlines() if line]
    assert len(lines) == 1 and "80x112" in lines[0] and "96x112" in lines[0], res.output
    assert not (tmp_path / "run" / "best.safetensors").exists()
