"""Learning from a few real annotations (the U-Net paper's promise), on CPU in a few minutes.

``cells-train`` fine-tunes the demo weights (its default: ``--init demo``) on the LEFT half of the
real DSB 2018 image (about 70 expert-annotated nuclei) and the result is scored by ``cells-eval``
on the RIGHT half, which training never saw. Issue 11 asks AP@0.5 >= 0.75 there; the demo weights
alone are the reference it must beat. A longer run is recorded in docs/cells.md.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
from click.testing import CliRunner
from medseg_cli.main import cli

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared" / "realdata" / "nuclei_dsb2018"
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (SHARED / "img2d.tif").is_file(), reason=f"shared real data absent: {SHARED}"),
]

# what the test trains (kept here so that docs/cells.md can quote it)
FEWSHOT_ARGS = ["--epochs", "4", "--steps", "15", "--lr", "1e-3", "--val-fraction", "0", "--seed", "0"]


def run(*args):
    res = CliRunner().invoke(cli, [str(a) for a in args])
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)


def halves(tmp_path: Path) -> dict[str, Path]:
    image = tifffile.imread(SHARED / "img2d.tif")
    mask = tifffile.imread(SHARED / "mask2d.tif")
    dirs = {k: tmp_path / k for k in ("train_img", "train_mask", "test_img", "test_mask")}
    for d in dirs.values():
        d.mkdir()
    w = image.shape[1] // 2
    tifffile.imwrite(dirs["train_img"] / "left.tif", image[:, :w])
    tifffile.imwrite(dirs["train_mask"] / "left.tif", mask[:, :w])
    tifffile.imwrite(dirs["test_img"] / "right.tif", image[:, w:])
    tifffile.imwrite(dirs["test_mask"] / "right.tif", mask[:, w:])
    return dirs


def segment_and_score(image_dir: Path, truth_dir: Path, out: Path, *weights: str) -> dict:
    run(
        "cells-segment",
        image_dir,
        "--out",
        out,
        "--device",
        "cpu",
        "--json",
        "--quiet",
        "--no-report",
        *weights,
    )
    return run("cells-eval", out, "--truth", truth_dir, "--json", "--quiet")["summary"]


def test_finetune_on_one_half_segments_the_other(tmp_path):
    import torch

    torch.set_num_threads(2)
    d = halves(tmp_path)
    n_train = len(np.unique(tifffile.imread(d["train_mask"] / "left.tif"))) - 1
    assert 55 <= n_train <= 80  # about 60 nuclei, as the issue says
    demo = segment_and_score(d["test_img"], d["test_mask"], tmp_path / "demo")
    start, cpu = time.monotonic(), time.process_time()
    doc = run(
        "cells-train", "--images", d["train_img"], "--masks", d["train_mask"], "--out", tmp_path / "run",
        *FEWSHOT_ARGS, "--device", "cpu", "--json", "--quiet",
    )  # fmt: skip
    train_s, train_cpu_s = time.monotonic() - start, time.process_time() - cpu
    config = json.loads((tmp_path / "run" / "train_config.json").read_text())
    assert config["task"]["init_weights"], config  # fine-tuned from the demo weights by default
    weights = str(tmp_path / "run" / "last.safetensors")
    tuned = segment_and_score(d["test_img"], d["test_mask"], tmp_path / "tuned", "--weights", weights)
    print({"demo_ap50": demo["ap50"], "tuned_ap50": tuned["ap50"], "tuned_map": tuned["map_50_95"],
           "train_s": round(train_s, 1), "train_cpu_s": round(train_cpu_s, 1), "epochs": doc["epochs"]})  # fmt: skip
    assert tuned["ap50"] >= 0.75, tuned
    assert tuned["ap50"] > demo["ap50"], (demo, tuned)
