"""Training: weighted cross-entropy, patch drawing, checkpoints that rebuild the model, and
cells-train on the shared trainer (held-out validation, small resumable state, resume that
continues weights and optimiser, exit codes)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from medseg_cli.main import cli

from medseg.cells.augment import AugmentConfig
from medseg.cells.io import to_uint8, write_labels, write_png
from medseg.cells.model import CellModelConfig, build_model, load_model
from medseg.cells.train import (
    CellsTrainConfig,
    CellsTrainTask,
    draw_batch,
    make_meta,
    prepare_sample,
    train_pairs,
    weighted_cross_entropy,
)
from medseg.cells.weights import WeightMapConfig
from medseg.engine.checkpoint import load_weights, save_weights
from medseg.errors import InputError, ModelError
from medseg.synthetic.cells import SyntheticCellsConfig, synthetic_batch, synthetic_cells


def test_weighted_cross_entropy_matches_definition():
    torch.manual_seed(0)
    logits = torch.randn(2, 2, 5, 6)
    target = torch.randint(0, 2, (2, 5, 6))
    weight = torch.rand(2, 5, 6) * 10
    logp = torch.log_softmax(logits, 1).gather(1, target[:, None])[:, 0]
    assert weighted_cross_entropy(logits, target, weight).item() == pytest.approx(
        (-(weight * logp)).mean().item()
    )
    with pytest.raises(ValueError):
        weighted_cross_entropy(logits, target[:, :4], weight)


def test_prepare_sample_and_draw_batch():
    image, labels = synthetic_cells(11, SyntheticCellsConfig(height=80, width=90))
    sample = prepare_sample(image, labels, WeightMapConfig())
    assert sample.target.sum() < (labels > 0).sum()  # touching borders became background
    assert sample.weight.max() > 5  # border term present
    with pytest.raises(InputError):
        prepare_sample(image, labels[:10], WeightMapConfig())
    x, t, w = draw_batch(
        np.random.default_rng(0),
        [sample],
        batch_size=3,
        tile=188,
        margin=92,
        out_size=4,
        augment_config=AugmentConfig(),
    )
    assert x.shape == (3, 1, 188, 188) and t.shape == (3, 4, 4) and w.shape == (3, 4, 4)
    # without augmentation the target core is exactly the sample's target at that place
    x, t, w = draw_batch(
        np.random.default_rng(1),
        [sample],
        batch_size=2,
        tile=188 + 40,
        margin=92,
        out_size=44,
        augment_config=AugmentConfig(elastic_prob=0, flips=False, rot90=False, intensity=0),
    )
    img = sample.image
    found = [
        np.argwhere(
            (np.lib.stride_tricks.sliding_window_view(img, (44, 44)) == x[k, 0, 92:136, 92:136].numpy()).all(
                axis=(2, 3)
            )
        )
        for k in range(2)
    ]
    for k, pos in enumerate(found):
        ((y0, x0),) = pos
        np.testing.assert_array_equal(t[k].numpy(), sample.target[y0 : y0 + 44, x0 : x0 + 44])


def test_checkpoint_roundtrip_and_wrong_model(tmp_path):
    config = CellsTrainConfig(model=CellModelConfig(base_channels=2))
    model = build_model(config=config.model)
    path = tmp_path / "w.safetensors"
    save_weights(
        path,
        {k: v.half() if v.is_floating_point() else v for k, v in model.state_dict().items()},
        make_meta(config, {"val_pixel_iou": 0.5}),
    )
    loaded, cfg, meta = load_model(path)
    assert cfg == config.model and meta.metrics["val_pixel_iou"] == 0.5
    assert next(loaded.parameters()).dtype == torch.float32 and not loaded.training
    other = CellsTrainConfig(model=CellModelConfig(base_channels=3))
    save_weights(path, model.state_dict(), make_meta(other, {}))
    with pytest.raises(ModelError, match="do not fit"):
        load_model(path)


def test_inference_does_not_import_training():
    code = (
        "import sys, medseg.cells.segment, medseg.cells.predict, medseg.cells.model; "
        "bad = [m for m in ('medseg.cells.train', 'medseg.engine.trainer', 'medseg.cells.augment') "
        "if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


TINY = dict(model=CellModelConfig(base_channels=4), steps_per_epoch=2, batch_size=1, tile=188, seed=3)


@pytest.fixture(scope="module")
def pairs():
    return synthetic_batch(40, 3, SyntheticCellsConfig(height=80, width=96))


def test_resume_continues_weights_and_optimizer(tmp_path, pairs, monkeypatch):
    """Two epochs in one go == two epochs interrupted after the first, then resumed (loss, lr, weights)."""
    torch.set_num_threads(2)
    config = CellsTrainConfig(epochs=2, **TINY)
    straight = train_pairs(pairs, tmp_path / "a", config, device="cpu")
    original = CellsTrainTask.train_batches

    def crash_in_epoch_2(self, epoch, rng):
        if epoch == 2:
            raise KeyboardInterrupt  # the user pressed Ctrl-C (or the machine went down)
        yield from original(self, epoch, rng)

    monkeypatch.setattr(CellsTrainTask, "train_batches", crash_in_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        train_pairs(pairs, tmp_path / "b", config, device="cpu")
    monkeypatch.undo()
    after_first, _ = load_weights(tmp_path / "b" / "last.safetensors")
    resumed = train_pairs(pairs, tmp_path / "b", config, device="cpu", resume=True)
    assert resumed.epochs == 2 and [h["epoch"] for h in resumed.history] == [1, 2]
    a, b = straight.history[1], resumed.history[1]
    # a fresh model, a fresh Adam or a restarted schedule would give epoch 2 another loss
    assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-4)
    assert b["lr"] == pytest.approx(a["lr"]) and b["val_pixel_iou"] == pytest.approx(
        a["val_pixel_iou"], abs=1e-3
    )
    wa, _ = load_weights(tmp_path / "a" / "last.safetensors")
    wb, _ = load_weights(tmp_path / "b" / "last.safetensors")
    for key in wa:
        torch.testing.assert_close(wb[key], wa[key], rtol=1e-4, atol=1e-5)
    assert any(not torch.equal(wb[k], after_first[k]) for k in wb)  # the second epoch did train
    assert straight.validated_on == "held-out data" and straight.extra["val_images"] == 1


def test_training_state_is_small(tmp_path, pairs):
    """state.pt holds the optimiser (Adam: two moments per weight) and counters, not the model or data."""
    result = train_pairs(pairs, tmp_path, CellsTrainConfig(epochs=1, **TINY), device="cpu")
    weights = (tmp_path / "last.safetensors").stat().st_size
    state = (tmp_path / "state.pt").stat().st_size
    assert state < 2.5 * weights, (state, weights)  # a second copy of the model would make it >= 3x
    from medseg.engine.checkpoint import load_training_state

    assert "model" not in load_training_state(tmp_path / "state.pt")
    assert result.best_weights.endswith("best.safetensors")
    assert set(json.loads((tmp_path / "history.json").read_text())[0]) >= {
        "epoch",
        "train_loss",
        "val_pixel_iou",
    }


def test_single_pair_validates_on_training_data_with_warning(tmp_path, pairs, caplog):
    caplog.set_level("WARNING", logger="medseg")
    import logging

    logging.getLogger("medseg").propagate = True
    try:
        result = train_pairs(pairs[:1], tmp_path, CellsTrainConfig(epochs=1, **TINY), device="cpu")
    finally:
        logging.getLogger("medseg").propagate = False
    assert result.validated_on == "training data" and result.extra["val_images"] == 0
    assert "no held-out validation" in caplog.text


@pytest.fixture
def folders(tmp_path):
    img_dir, mask_dir = tmp_path / "img", tmp_path / "mask"
    img_dir.mkdir()
    mask_dir.mkdir()
    for i, (image, labels) in enumerate(synthetic_batch(41, 2, SyntheticCellsConfig(height=80, width=96))):
        write_png(img_dir / f"c{i}.png", to_uint8(image))
        write_labels(mask_dir / f"c{i}_mask.tif", labels)
    return img_dir, mask_dir


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def test_cli_train_resume_and_skip_mismatched(tmp_path, folders):
    img_dir, mask_dir = folders
    write_png(img_dir / "odd.png", np.zeros((50, 50), np.uint8))
    write_labels(mask_dir / "odd_mask.tif", np.zeros((40, 50), np.int32))  # wrong size
    out = tmp_path / "run"

    def args(epochs, *extra):
        return [
            "cells-train",
            "--images",
            img_dir,
            "--masks",
            mask_dir,
            "--out",
            out,
            "--base-channels",
            "2",
            "--epochs",
            epochs,
            "--steps",
            "1",
            "--batch-size",
            "1",
            "--tile",
            "188",
            "--device",
            "cpu",
            "--json",
            "-q",
            *extra,
        ]

    res = run(*args(1, "--resume"))  # nothing to resume from yet
    assert res.exit_code == 2 and "no training state" in json.loads(res.stdout)["error"] and not out.exists()
    res = run(*args(1))
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["epochs"] == 1 and doc["validated_on"] == "held-out data" and len(doc["extra"]["skipped"]) == 1
    assert (
        "odd" in doc["extra"]["skipped"][0]["image"]
        and "but the image is" in doc["extra"]["skipped"][0]["reason"]
    )
    assert {p.name for p in out.iterdir()} == {
        "best.safetensors",
        "last.safetensors",
        "state.pt",
        "history.json",
        "train_config.json",
    }
    res = run(*args(1))  # refuses to restart over an existing run
    assert res.exit_code == 3 and "--resume" in json.loads(res.stdout)["error"]
    res = run(*args(2, "--resume"))
    assert res.exit_code == 0, res.output
    assert [h["epoch"] for h in json.loads(res.stdout)["history"]] == [1, 2]
    res = run(*args(1)[:-2], "--overwrite")  # human output
    assert res.exit_code == 0 and "best validation pixel IoU" in res.stdout and "skipped 1 pair" in res.stdout


def test_cli_train_no_pairs_and_unwritable(tmp_path):
    empty = tmp_path / "e"
    empty.mkdir()
    res = run(
        "cells-train",
        "--images",
        empty,
        "--masks",
        empty,
        "--out",
        tmp_path / "r",
        "--device",
        "cpu",
        "--json",
    )
    assert res.exit_code == 2 and "no usable" in json.loads(res.stdout)["error"]
    (tmp_path / "afile.txt").write_text("x")
    res = run(
        "cells-train",
        "--synthetic",
        "1",
        "--out",
        tmp_path / "afile.txt" / "run",
        "--device",
        "cpu",
        "--json",
    )
    assert res.exit_code == 2 and "afile.txt" in json.loads(res.stdout)["error"]
    res = run("cells-train", "--out", tmp_path / "r", "--device", "cpu")
    assert res.exit_code == 2 and "--synthetic" in res.stderr
