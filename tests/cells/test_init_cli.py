"""cells-train --init: fine-tunes the demo weights by default (the net's shape taken from them),
trains from scratch when another net is asked for, and refuses a weights file that does not fit."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from medseg_cli.main import cli

from medseg.cells.io import to_uint8, write_labels, write_png
from medseg.cells.model import DEMO_WEIGHTS, CellModelConfig
from medseg.cells.train import init_compatible, resolve_init
from medseg.engine.checkpoint import read_meta
from medseg.engine.weights import demo_weights_path
from medseg.synthetic.cells import SyntheticCellsConfig, synthetic_batch

TINY = ["--epochs", "1", "--steps", "1", "--batch-size", "1", "--tile", "188", "--val-fraction", "0"]


@pytest.fixture
def folders(tmp_path):
    img_dir, mask_dir = tmp_path / "img", tmp_path / "mask"
    img_dir.mkdir()
    mask_dir.mkdir()
    for i, (image, labels) in enumerate(synthetic_batch(43, 1, SyntheticCellsConfig(height=96, width=96))):
        write_png(img_dir / f"c{i}.png", to_uint8(image))
        write_labels(mask_dir / f"c{i}_mask.tif", labels)
    return img_dir, mask_dir


def train(tmp_path, folders, name, *extra):
    img_dir, mask_dir = folders
    args = ["cells-train", "--images", img_dir, "--masks", mask_dir, "--out", tmp_path / name, *TINY]
    return CliRunner().invoke(cli, [str(a) for a in [*args, *extra, "--device", "cpu", "--json", "-q"]])


def test_default_finetunes_the_demo_weights(tmp_path, folders):
    res = train(tmp_path, folders, "ft")
    assert res.exit_code == 0, res.output
    task = json.loads((tmp_path / "ft" / "train_config.json").read_text())["task"]
    demo = demo_weights_path(DEMO_WEIGHTS)
    assert task["init_weights"] == str(demo)
    shape = ("arch", "base_channels", "batch_norm", "depth")
    theirs = read_meta(demo).config
    assert {k: task["model"][k] for k in shape} == {k: theirs[k] for k in shape}  # the demo weights' net
    assert init_compatible(CellModelConfig.from_dict(task["model"]), tmp_path / "ft" / "last.safetensors")


def test_another_net_trains_from_scratch(tmp_path, folders):
    res = train(tmp_path, folders, "scratch", "--base-channels", "4")
    assert res.exit_code == 0, res.output
    task = json.loads((tmp_path / "scratch" / "train_config.json").read_text())["task"]
    assert task["init_weights"] is None and task["model"]["base_channels"] == 4


def test_a_weights_file_that_does_not_fit_is_refused(tmp_path, folders):
    res = train(tmp_path, folders, "bad", "--init", demo_weights_path(DEMO_WEIGHTS), "--base-channels", "4")
    assert res.exit_code == 2, res.output
    assert "--init scratch" in res.output and "demo_unet2015" in res.output
    res = train(tmp_path, folders, "missing", "--init", tmp_path / "nope.safetensors")
    assert (
        res.exit_code == 4 and "not found" in res.output
    )  # a missing weights file: exit 4, as for --weights


def test_resolve_init_library():
    demo = demo_weights_path(DEMO_WEIGHTS)
    model, path = resolve_init("demo", None)
    assert path == str(demo) and init_compatible(model, demo)
    model, path = resolve_init("demo", CellModelConfig(base_channels=16))
    assert path is None and model.base_channels == 16
    model, path = resolve_init("scratch", None)
    assert path is None and model == CellModelConfig()  # --init scratch: the CLI's default net


def test_target_option_sets_the_recorded_instance_target(tmp_path, folders):
    """--target fine-tunes the demo weights (3class) into another instance target; the weights record it."""
    target = "dist"
    res = train(tmp_path, folders, target, "--target", target)
    assert res.exit_code == 0, res.output
    meta = read_meta(tmp_path / target / "last.safetensors")
    assert meta.config["instance_target"] == target
    assert read_meta(demo_weights_path(DEMO_WEIGHTS)).config["instance_target"] == "3class"


def test_target_option_refuses_an_unknown_kind_and_a_head_it_cannot_adapt(tmp_path, folders):
    res = train(tmp_path, folders, "bad_target", "--target", "stars")
    assert res.exit_code == 2 and "--target" in res.output
    res = train(tmp_path, folders, "back", "--target", "borders")  # a 3class head has no borders form
    assert res.exit_code == 2 and "cannot adapt a 3class head to the borders target" in res.output


def test_ema_option_saves_the_average_and_records_it(tmp_path, folders):
    """--ema: the saved weights are the moving average (they differ from the plain run's, which took the
    same steps), the decay is recorded, and a decay of 1 is refused in words."""
    import torch

    from medseg.engine.checkpoint import load_weights

    two = ["--steps", "2"]
    assert train(tmp_path, folders, "plain", *two).exit_code == 0
    res = train(tmp_path, folders, "ema", *two, "--ema", "0.5")
    assert res.exit_code == 0, res.output
    loop = json.loads((tmp_path / "ema" / "train_config.json").read_text())["train"]
    assert loop["ema"] == 0.5
    plain, _ = load_weights(tmp_path / "plain" / "last.safetensors")
    avg, _ = load_weights(tmp_path / "ema" / "last.safetensors")
    assert plain.keys() == avg.keys()
    assert any(not torch.equal(plain[k], avg[k]) for k in plain if plain[k].is_floating_point())
    res = train(tmp_path, folders, "bad", "--ema", "1")
    assert res.exit_code == 2 and "--ema" in res.output


def test_demo_init_follows_the_stain_of_the_training_images(tmp_path):
    """H&E training images fine-tune the weights cells-segment uses for H&E (the brightfield specialist),
    fluorescence ones the main demo weights; an explicit --stain decides without looking."""
    from pathlib import Path

    from medseg.cells.dataset import images_stain
    from medseg.cells.model import DEMO_WEIGHTS_BY_STAIN

    val = Path(__file__).resolve().parents[2] / "tests" / "data" / "real" / "dsb2018_val"
    he_id = "673baf65ae5c571d6be452eb41e79ef3fc2eb3fd238e621c6b7621763b429989"
    img_dir, mask_dir = tmp_path / "he", tmp_path / "he_masks"
    img_dir.mkdir()
    mask_dir.mkdir()
    (img_dir / f"{he_id}.png").write_bytes((val / "images" / f"{he_id}.png").read_bytes())
    (mask_dir / f"{he_id}.tif").write_bytes((val / "masks" / f"{he_id}.tif").read_bytes())
    assert images_stain(img_dir) == "he" and images_stain(img_dir, stain="fluo") == "fluo"
    res = train(tmp_path, (img_dir, mask_dir), "he_run")
    assert res.exit_code == 0, res.output
    task = json.loads((tmp_path / "he_run" / "train_config.json").read_text())["task"]
    assert task["init_weights"] == str(demo_weights_path(DEMO_WEIGHTS_BY_STAIN["he"]))
    res = train(tmp_path, (img_dir, mask_dir), "as_fluo", "--stain", "fluo")
    assert res.exit_code == 0, res.output
    task = json.loads((tmp_path / "as_fluo" / "train_config.json").read_text())["task"]
    assert task["init_weights"] == str(demo_weights_path(DEMO_WEIGHTS))
