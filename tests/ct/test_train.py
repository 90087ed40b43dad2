"""ct-train through the engine trainer: held-out validation, learning, resume, run folders as model folders."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from medseg.ct.cohort import discover_exams, split_exams
from medseg.ct.train import CTTrainConfig, train
from medseg.engine.checkpoint import load_weights, read_meta
from medseg.errors import InputError, OutputExistsError
from medseg.synthetic.ct_phantom import PhantomConfig, write_cohort

from .conftest import run_cli


def tiny(**overrides) -> CTTrainConfig:
    """A config that trains in about a second on 2 CPU cores."""
    base = {
        "epochs": 2,
        "batch_size": 2,
        "channels": 8,
        "depth": 3,
        "lr": 1e-3,
        "steps_per_epoch": 3,
        "seed": 1,
        "crop": 32,
    }
    return CTTrainConfig(**{**base, **overrides})


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    root = tmp_path_factory.mktemp("pairs")
    write_cohort(
        root,
        [7001, 7002, 7003, 7004, 7005],
        kernels=("B30f", "B50f"),
        config=PhantomConfig(size=48, n_slices=3),
    )
    return root


def test_split_is_by_exam(pairs):
    exams = discover_exams([pairs])
    split = split_exams(exams, (0.6, 0.2, 0.2), seed=0)
    names = [e.name for part in split.values() for e in part]
    assert sorted(names) == sorted(e.name for e in exams) and len(set(names)) == len(names)
    assert [len(split[k]) for k in ("train", "val", "test")] == [3, 1, 1]


def test_training_beats_the_unconverted_input_on_held_out_exams(pairs, tmp_path):
    out = tmp_path / "run"
    result = train([pairs], out, tiny(epochs=3, steps_per_epoch=15, batch_size=4), device="cpu")
    assert result.validated_on == "held-out data" and result.epochs == 3
    history = result.history
    assert [h["epoch"] for h in history] == [1, 2, 3]
    # the net starts as (almost) the identity: RMSE about the input's; training must bring it well below
    assert result.best_metric < 0.8 * result.extra["input_rmse_hu"], (result.best_metric, result.extra)
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    split = json.loads((out / "train_config.json").read_text())["task"]["split"]
    assert split["mode"] == "exams" and "by exam (5 exams" in split["description"]
    assert split["val"] and split["test"] and not set(split["val"]) & set(split["train"])
    test = result.extra["test"]  # held-out test exam, scored with the best weights
    assert list(result.extra)[-1] == "test" and test["on"] == "held-out test exams"
    assert test["rmse_after_hu"] < test["rmse_before_hu"], test
    for name in ("best.safetensors", "last.safetensors", "state.pt", "history.json"):
        assert (out / name).is_file()
    meta = read_meta(out / "best.safetensors")
    assert meta.config["source_kernel"] == "B50f" and meta.config["target_kernel"] == "B30f"
    assert meta.config["channels"] == 8 and meta.metrics["epoch"] == result.best_epoch
    with pytest.raises(OutputExistsError):
        train([pairs], out, tiny(), device="cpu")


def test_resume_continues_weights_and_optimizer(pairs, tmp_path):
    straight = train([pairs], tmp_path / "a", tiny(epochs=2), device="cpu")
    train([pairs], tmp_path / "b", tiny(epochs=1), device="cpu")
    resumed = train([pairs], tmp_path / "b", tiny(epochs=2), device="cpu", resume=True)
    assert [h["epoch"] for h in resumed.history] == [1, 2]
    # epoch 2 after a resume is the same epoch 2 as without a stop: same loss, same weights
    assert resumed.history[1]["train_loss"] == pytest.approx(straight.history[1]["train_loss"], rel=1e-5)
    assert resumed.history[1]["val_rmse_hu"] == pytest.approx(straight.history[1]["val_rmse_hu"], rel=1e-5)
    a, _ = load_weights(tmp_path / "a" / "last.safetensors")
    b, _ = load_weights(tmp_path / "b" / "last.safetensors")
    assert all(np.allclose(a[k].numpy(), b[k].numpy(), rtol=1e-5, atol=1e-7) for k in a)


def test_resume_without_state_is_exit_2(pairs, tmp_path):
    out = tmp_path / "nothing"
    r = run_cli(
        "ct-train",
        pairs,
        "--from",
        "B50f",
        "--to",
        "B30f",
        "--out",
        out,
        "--resume",
        "--device",
        "cpu",
        "-q",
        "--json",
    )
    assert r.exit_code == 2, r.output
    assert "no training state" in json.loads(r.stdout)["error"]


def test_missing_kernel_is_reported_before_any_file_is_written(pairs, tmp_path):
    with pytest.raises(InputError, match="no B70f series"):
        train([pairs], tmp_path / "x", tiny(source_kernel="B70f", target_kernel="B30f"), device="cpu")
    assert not (tmp_path / "x").exists()
    assert (
        train([pairs], tmp_path / "x", tiny(epochs=1), device="cpu").epochs == 1
    )  # corrected: no --overwrite


def test_without_validation_exams_the_trainer_says_so(pairs, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="medseg"):
        result = train([pairs], tmp_path / "r", tiny(epochs=1, split=(1.0, 0.0, 0.0)), device="cpu")
    assert result.validated_on == "training data"
    assert "no held-out validation data" in caplog.text


def test_ct_train_cli_and_the_run_folder_as_models_folder(pairs, small_exam_dir, tmp_path):
    out = tmp_path / "cli_run"
    args = [
        "ct-train",
        pairs,
        "--from",
        "B50f",
        "--to",
        "B30f",
        "--out",
        out,
        "--epochs",
        "1",
        "--crop",
        "32",
        "--steps-per-epoch",
        "1",
        "--batch-size",
        "2",
        "--device",
        "cpu",
        "--json",
        "-q",
    ]
    r = run_cli(*args)
    assert r.exit_code == 0, r.output
    result = json.loads(r.stdout)
    assert result["epochs"] == 1 and result["best_weights"] == str(out / "best.safetensors")
    assert result["extra"]["input_rmse_hu"] > 0 and result["metric"] == "val_rmse_hu"
    assert read_meta(out / "best.safetensors").task == "B50f->B30f"
    again = run_cli(*args)
    assert (
        again.exit_code == 3 and json.loads(again.stdout)["exit_code"] == 3
    )  # needs --resume or --overwrite
    bad = run_cli(*args[:-2], "--split", "0.5,0.5", "--overwrite")
    assert bad.exit_code == 2 and "three comma-separated fractions" in bad.output

    models = json.loads(run_cli("ct-models", "--models-dir", out, "--json").stdout)["models"]
    ours = [m for m in models if not m["demo"]]
    assert [(m["from"], m["to"], m["path"]) for m in ours] == [
        ("B50f", "B30f", str(out / "best.safetensors"))
    ]
    for how in (("--models-dir", out), ("--weights", out / "best.safetensors")):
        conv = run_cli(
            "ct-convert",
            small_exam_dir / "B50f",
            "--from",
            "B50f",
            "--to",
            "B30f",
            "--out",
            tmp_path / f"o{how[0]}",
            *how,
            "--device",
            "cpu",
            "-q",
            "--json",
        )
        assert conv.exit_code == 0, conv.output
        doc = json.loads(conv.stdout)
        assert (
            doc["summary"]["weights"] == str(out / "best.safetensors") and not doc["summary"]["demo_weights"]
        )


def test_trained_weights_record_the_scanner_vendor(tmp_path):
    """Kernel names are per vendor: weights trained on Philips series are listed under Philips."""
    import pydicom

    from medseg.ct.models import list_models

    root = tmp_path / "study"
    write_cohort(root, [7101], kernels=("B30f", "B50f"), config=PhantomConfig(size=48, n_slices=3))
    for path in root.rglob("*.dcm"):
        ds = pydicom.dcmread(path)
        ds.Manufacturer = "Philips Medical Systems"
        ds.save_as(path)
    out = tmp_path / "run"
    train([root], out, tiny(epochs=1, steps_per_epoch=1), device="cpu")
    assert read_meta(out / "best.safetensors").config["manufacturer"] == "Philips"
    [entry] = list_models([out], demo=False)
    assert entry.vendor == "Philips"
