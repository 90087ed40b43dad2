"""Every --arch through the shared trainer and tiled inference: cells-train (one tiny epoch) then
cells-segment with the weights it wrote (rebuilt from the config stored in their metadata)."""

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
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("archdata")
    img_dir, mask_dir = root / "img", root / "mask"
    img_dir.mkdir()
    mask_dir.mkdir()
    for i in range(2):
        image, labels = synthetic_cells(950 + i, SyntheticCellsConfig(height=96, width=112))
        write_png(img_dir / f"c{i}.png", to_uint8(image))
        write_labels(mask_dir / f"c{i}_mask.tif", labels)
    return img_dir, mask_dir


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


@pytest.mark.parametrize(
    ("arch", "extra"),
    [
        ("unet2015", ["--se", "--batch-norm"]),
        ("unet_se", []),
        ("fcn8s", []),
        ("deeplabv3", []),  # torchvision's full-width MobileNetV3 (11 M parameters): about 5 s
        ("pspnet", []),
        ("hed", []),
    ],
)
def test_arch_trains_and_segments(arch, extra, data, tmp_path):
    import torch

    from medseg.cells.archs import ArchConfig
    from medseg.cells.model import CellModelConfig, load_model

    torch.set_num_threads(2)
    img_dir, mask_dir = data
    run_dir = tmp_path / "run"
    res = run(
        "cells-train", "--images", img_dir, "--masks", mask_dir, "--out", run_dir, "--arch", arch,
        "--base-channels", "4", "--epochs", "1", "--steps", "1", "--batch-size", "2", "--tile", "64",
        "--val-fraction", "0.5", "--device", "cpu", "--quiet", "--json", *extra,
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["epochs"] == 1 and np.isfinite(doc["history"][0]["train_loss"])
    weights = run_dir / "best.safetensors"
    model, config, meta = load_model(weights)
    assert config.arch == arch and meta.config["arch"] == arch
    if arch == "unet2015":
        assert isinstance(config, CellModelConfig) and config.se
        assert any(name.endswith(".se.fc1.weight") for name, _ in model.named_parameters())
    else:
        assert isinstance(config, ArchConfig) and config.width == 4
    out = tmp_path / "seg"
    res = run(
        "cells-segment", img_dir / "c0.png", "--out", out, "--weights", weights, "--device", "cpu",
        "--tile", "128", "--quiet", "--json", "--no-report", "--stain", "fluo",
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    labels = tifffile.imread(out / "c0_labels.tif")
    assert labels.shape == (96, 112) and labels.dtype == np.uint16
    item = json.loads(res.stdout)["items"][0]
    assert item["metrics"]["cells"] == int(len(np.unique(labels)) - 1)


def test_global_pooling_archs_need_batches_of_two(data, tmp_path):
    img_dir, mask_dir = data
    res = run(
        "cells-train", "--images", img_dir, "--masks", mask_dir, "--out", tmp_path / "r", "--arch", "pspnet",
        "--base-channels", "4", "--epochs", "1", "--steps", "1", "--batch-size", "1", "--device", "cpu",
    )  # fmt: skip
    assert res.exit_code == 2 and "at least 2" in res.output


def test_se_flag_refused_for_other_archs(data, tmp_path):
    img_dir, mask_dir = data
    res = run(
        "cells-train", "--images", img_dir, "--masks", mask_dir, "--out", tmp_path / "r", "--arch", "fcn8s",
        "--se",
    )  # fmt: skip
    assert res.exit_code == 2 and "--se" in res.output
