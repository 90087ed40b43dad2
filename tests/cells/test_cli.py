"""cells-segment / cells-train / cells-eval end to end on tiny inputs (random tiny model)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
from click.testing import CliRunner
from medseg_cli.main import cli

from medseg.cells.io import to_uint8, write_labels, write_png
from medseg.synthetic.cells import SyntheticCellsConfig, synthetic_cells


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory):
    import torch

    from medseg.cells.model import CellModelConfig, build_model
    from medseg.cells.train import TrainConfig, make_meta
    from medseg.engine.checkpoint import save_weights

    torch.manual_seed(0)
    config = TrainConfig(model=CellModelConfig(base_channels=4), training_data="random init (test)")
    path = tmp_path_factory.mktemp("w") / "tiny.safetensors"
    save_weights(path, build_model(config=config.model).state_dict(), make_meta(config, {}))
    return path


@pytest.fixture
def data(tmp_path):
    img_dir, mask_dir = tmp_path / "img", tmp_path / "mask"
    img_dir.mkdir()
    mask_dir.mkdir()
    for i in range(2):
        image, labels = synthetic_cells(900 + i, SyntheticCellsConfig(height=96, width=112))
        write_png(img_dir / f"c{i}.png", to_uint8(image))
        write_labels(mask_dir / f"c{i}_mask.tif", labels)
    return img_dir, mask_dir


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def test_segment_outputs_and_bad_input_continues(tmp_path, data, tiny_weights):
    img_dir, _ = data
    (img_dir / "broken.png").write_bytes(b"\x89PNG garbage")
    write_png(img_dir / "blank.png", np.full((40, 50), 17, np.uint8))  # an empty field is not an error
    tifffile.imwrite(img_dir / "stack.tif", (np.random.default_rng(0).random((2, 70, 50)) * 255).astype(np.uint8),
                     photometric="minisblack")
    out = tmp_path / "out"
    res = run("cells-segment", img_dir, "--out", out, "--weights", tiny_weights, "--device", "cpu", "--tile", "200",
              "--save-prob", "--json", "-q")
    assert res.exit_code == 5, res.output  # one bad image: recorded, the others done
    summary = json.loads(res.stdout)
    assert summary["n_ok"] == 4 and summary["n_failed"] == 1 and "broken.png" in summary["failures"][0]["image"]
    assert any(r["image"].endswith("blank.png") for r in summary["images"])  # processed, not failed
    for name in ("c0_labels.tif", "c0_overlay.png", "c0_cells.csv", "c0_prob.tif", "stack_overlay_p001.png",
                 "summary.json", "report.html"):
        assert (out / name).is_file(), name
    labels = tifffile.imread(out / "c0_labels.tif")
    assert labels.shape == (96, 112) and labels.dtype == np.uint16
    assert tifffile.imread(out / "stack_labels.tif").shape == (2, 70, 50)
    header = (out / "c0_cells.csv").read_text().splitlines()[0]
    assert header == "page,label,area,centroid_y,centroid_x,perimeter,eccentricity,mean_intensity"
    assert "Cell segmentation QA" in (out / "report.html").read_text()
    # existing outputs are not clobbered without --overwrite
    res = run("cells-segment", img_dir / "c0.png", "--out", out, "--weights", tiny_weights, "--device", "cpu")
    assert res.exit_code == 3


def test_segment_wrong_weights(tmp_path, data):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"nope")
    res = run("cells-segment", data[0], "--out", tmp_path / "o", "--weights", bad, "--device", "cpu")
    assert res.exit_code == 4 and "safetensors" in res.output


def test_train_resume_and_skip_mismatched(tmp_path, data):
    img_dir, mask_dir = data
    write_png(img_dir / "odd.png", np.zeros((50, 50), np.uint8))
    write_labels(mask_dir / "odd_mask.tif", np.zeros((40, 50), np.int32))  # wrong size
    out = tmp_path / "run"
    def args(epochs):
        return ["cells-train", "--images", img_dir, "--masks", mask_dir, "--out", out, "--base-channels", "2",
                "--epochs", epochs, "--steps", "1", "--batch-size", "1", "--tile", "188", "--device", "cpu",
                "--json", "-q"]

    res = run(*args(1))
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["epochs_run"] == 1 and len(summary["skipped"]) == 1
    assert any("odd" in s["image"] and "but the image is" in s["error"] for s in summary["skipped"])
    assert (out / "best.safetensors").is_file() and (out / "state.pt").is_file()
    assert run(*args(1)).exit_code == 3  # refuses to restart over an existing run
    res = run(*args(2), "--resume")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["history"][-1]["epoch"] == 1


def test_train_no_pairs(tmp_path):
    empty = tmp_path / "e"
    empty.mkdir()
    res = run("cells-train", "--images", empty, "--masks", empty, "--out", tmp_path / "r", "--device", "cpu")
    assert res.exit_code == 2 and "no usable" in res.output


def test_eval(tmp_path, data):
    _, mask_dir = data
    pred_dir = tmp_path / "pred"
    pred_dir.mkdir()
    truth = tifffile.imread(mask_dir / "c0_mask.tif")
    write_labels(pred_dir / "c0_labels.tif", truth)
    write_labels(pred_dir / "c1_labels.tif", np.zeros((3, 3), np.int32))  # wrong size: skipped
    write_png(pred_dir / "c0_overlay.png", np.zeros((4, 4, 3), np.uint8))  # not a label image: ignored
    res = run("cells-eval", pred_dir, "--truth", mask_dir, "--json", "--out", tmp_path / "m.json")
    assert res.exit_code == 0, res.output
    s = json.loads(res.stdout)
    assert s["summary"]["ap50"] == 1 and s["summary"]["mean_pixel_iou"] == 1 and len(s["failures"]) == 1
    assert (tmp_path / "m.json").is_file()
