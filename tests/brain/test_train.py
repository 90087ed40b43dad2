"""Two-phase training on the shared trainer: phase 2 touches only the output layer, cascade first stage
frozen bit for bit, held-out validation, resume continues weights and optimiser."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch

from medseg.brain import train as train_mod
from medseg.brain.models import BrainNetConfig
from medseg.brain.preprocess import PreprocessConfig
from medseg.brain.sampling import class_balanced_coords, natural_coords
from medseg.brain.train import BrainTrainConfig, PhaseConfig, train
from medseg.engine.checkpoint import load_weights, read_meta
from medseg.errors import InputError, OutputExistsError


def _cfg(arch: str, *, epochs: int = 2, steps: int = 3, **kw) -> BrainTrainConfig:
    return BrainTrainConfig(
        net=BrainNetConfig(arch=arch, local_channels=4, global_channels=6),
        preprocess=PreprocessConfig(n4=False),
        phase1=PhaseConfig(epochs=epochs, steps_per_epoch=steps),
        phase2=PhaseConfig(epochs=1, steps_per_epoch=2, lr=0.001),
        batch_size=16,
        val_patches=40,
        training_data="synthetic test cases",
        **kw,
    )


@pytest.fixture(scope="module")
def twopath_run(brain_cases, tmp_path_factory):
    """A small TwoPathCNN run on both cases (one held out): reused as a cascade's first stage."""
    out = tmp_path_factory.mktemp("tp")
    return train(brain_cases, out, _cfg("twopath"), device="cpu")


def test_sampling_phase1_balanced_phase2_natural():
    rng = np.random.default_rng(0)
    labels = np.zeros((4, 30, 30), np.uint8)
    labels[1, 10:12, 10:12] = 4
    labels[1, 12:20, 10:20] = 2
    mask = np.ones_like(labels, bool)
    c = class_balanced_coords(labels, mask, 300, rng)
    counts = np.bincount(labels[c[:, 0], c[:, 1], c[:, 2]], minlength=5)
    assert counts.tolist() == [100, 0, 100, 0, 100]
    n = natural_coords(mask, 3000, rng)
    frac = np.mean(labels[n[:, 0], n[:, 1], n[:, 2]] > 0)
    assert frac == pytest.approx((labels > 0).mean(), abs=0.02)


def test_two_phases_held_out_validation_and_phase2_only_output_layer(twopath_run, brain_cases):
    out = twopath_run.out_dir
    assert twopath_run.stopped == "completed" and twopath_run.best_weights == f"{out}/best.safetensors"
    assert twopath_run.validated_on == "held-out data"
    assert twopath_run.extra["validation_cases"] == [brain_cases[1].name]
    assert twopath_run.extra["training_cases"] == [brain_cases[0].name]
    assert [(h["stage"], h["epoch"]) for h in twopath_run.history] == [
        ("phase1", 1),
        ("phase1", 2),
        ("phase2", 1),
    ]
    config = json.loads(open(f"{out}/phase1/train_config.json").read())
    assert config["task"]["validation_cases"] == [brain_cases[1].name]
    p1, _ = load_weights(f"{out}/phase1/best.safetensors")
    p2, meta = load_weights(twopath_run.best_weights)
    changed = {k for k, v in p2.items() if not torch.equal(v, p1[k])}
    assert changed == {"output.weight", "output.bias"}  # phase 2 retrains the output layer only
    assert meta.model == "brain-twopath" and meta.metrics["stage"] == "phase2"
    assert meta.metrics["validated_on"] == "held-out cases"
    # the phantoms' in-plane spacing: brain-segment resamples other cases to it
    assert meta.config["train_spacing_mm"] == [3.0, 3.0]


def test_single_case_validates_on_training_data_with_warning(brain_cases, tmp_path, caplog):
    cfg = _cfg("twopath", epochs=1, steps=1)
    with caplog.at_level(logging.WARNING, logger="medseg"):
        result = train(brain_cases[:1], tmp_path, cfg, device="cpu")
    assert result.validated_on == "training data" and result.extra["validation_cases"] == []
    assert "no held-out validation data" in caplog.text


def _interrupt_validation(monkeypatch, at_call: int) -> None:
    real = train_mod.BrainTask.validate
    calls = {"n": 0}

    def flaky(self, model, device):
        calls["n"] += 1
        if calls["n"] == at_call:
            raise KeyboardInterrupt
        return real(self, model, device)

    monkeypatch.setattr(train_mod.BrainTask, "validate", flaky)


def test_resume_continues_weights_and_optimizer(brain_cases, tmp_path, monkeypatch):
    """Interrupted after epoch 1, resumed: epoch 2 is exactly the uninterrupted run's epoch 2."""
    cfg = _cfg("twopath", epochs=3, steps=2)
    straight = train(brain_cases, tmp_path / "straight", cfg, device="cpu")
    _interrupt_validation(monkeypatch, at_call=2)  # during phase-1 epoch 2, before it is saved
    with pytest.raises(KeyboardInterrupt):
        train(brain_cases, tmp_path / "cut", cfg, device="cpu")
    assert len(json.loads((tmp_path / "cut/phase1/history.json").read_text())) == 1
    monkeypatch.undo()
    resumed = train(brain_cases, tmp_path / "cut", cfg, device="cpu", resume=True)
    loss = [h["train_loss"] for h in straight.history]
    assert [h["train_loss"] for h in resumed.history] == loss  # bit for bit, not restarted
    assert loss[1] != loss[0]  # (epoch 2 really differs from a restarted epoch 1)
    for name in ("phase1/last.safetensors", "phase2/last.safetensors", "best.safetensors"):
        a, _ = load_weights(tmp_path / "straight" / name)
        b, _ = load_weights(tmp_path / "cut" / name)
        assert all(torch.equal(a[k], b[k]) for k in a), name
    state = torch.load(tmp_path / "cut/phase1/state.pt", weights_only=True)
    assert state["epoch"] == 3 and state["optimizer"]["state"]  # momentum buffers saved (and restored)
    assert set(state) <= {
        "optimizer",
        "scheduler",
        "epoch",
        "best",
        "best_epoch",
        "history",
        "numpy_rng",
        "torch_rng",
        "identity",  # JSON text: the network and cases --resume must share
    }  # no weights in the state: they resume from last.safetensors


def test_cascade_first_stage_frozen_bit_identical_and_resume(twopath_run, brain_cases, tmp_path, monkeypatch):
    first_state, _ = load_weights(twopath_run.best_weights)
    cfg = _cfg("input-cascade")
    _interrupt_validation(monkeypatch, at_call=2)
    with pytest.raises(KeyboardInterrupt):
        train(brain_cases, tmp_path, cfg, first_weights=twopath_run.best_weights, device="cpu")
    monkeypatch.undo()
    result = train(
        brain_cases, tmp_path, cfg, first_weights=twopath_run.best_weights, device="cpu", resume=True
    )
    assert [(h["stage"], h["epoch"]) for h in result.history] == [("phase1", 1), ("phase1", 2), ("phase2", 1)]
    state, meta = load_weights(result.best_weights)
    assert meta.model == "brain-input-cascade"
    for k, v in first_state.items():  # the first stage is exactly the frozen TwoPathCNN
        assert torch.equal(state[f"first.{k}"], v), k
    init_like = [k for k, v in first_state.items() if state[f"second.{k}"].shape == v.shape]
    assert init_like and all(not torch.equal(state[f"second.{k}"], first_state[k]) for k in init_like)


def test_existing_output_needs_overwrite_and_resume_needs_state(twopath_run, brain_cases, tmp_path):
    cfg = _cfg("twopath", epochs=1, steps=1)
    with pytest.raises(OutputExistsError, match="--resume to continue or --overwrite"):
        train(brain_cases, twopath_run.out_dir, cfg, device="cpu")
    with pytest.raises(InputError, match="no training state"):
        train(brain_cases, tmp_path / "empty", cfg, device="cpu", resume=True)
    with pytest.raises(InputError, match="is a file"):
        (tmp_path / "afile.txt").write_text("x")
        train(brain_cases, tmp_path / "afile.txt" / "out", cfg, device="cpu")
    assert not (tmp_path / "empty").exists()


@pytest.mark.parametrize("arch", ["local-cascade", "mf-cascade"])
def test_other_cascades_train_with_frozen_first_stage(arch, twopath_run, brain_cases, tmp_path):
    result = train(
        brain_cases,
        tmp_path,
        _cfg(arch, epochs=1, steps=2),
        first_weights=twopath_run.best_weights,
        device="cpu",
    )
    state, meta = load_weights(result.best_weights)
    first_state, _ = load_weights(twopath_run.best_weights)
    assert meta.model == f"brain-{arch}"
    assert all(torch.equal(state[f"first.{k}"], v) for k, v in first_state.items())


def test_cascade_trains_its_first_stage_when_not_given(brain_cases, tmp_path):
    from medseg.brain.models import build_model
    from medseg.engine.runtime import seed_everything

    cfg = _cfg("input-cascade", epochs=1, steps=2)
    result = train(brain_cases, tmp_path, cfg, device="cpu")
    assert [h["stage"] for h in result.history] == ["first/phase1", "first/phase2", "phase1", "phase2"]
    first, _ = load_weights(tmp_path / "first/phase2/best.safetensors")
    state, _ = load_weights(result.best_weights)
    assert read_meta(tmp_path / "first/phase2/best.safetensors").model == "brain-twopath"
    assert all(torch.equal(state[f"first.{k}"], v) for k, v in first.items())
    seed_everything(cfg.seed)  # the first fit() seeds the same way before building its model
    init = build_model(
        config=BrainNetConfig(arch="twopath", local_channels=4, global_channels=6)
    ).state_dict()
    for key in ("local1.conv.weight", "output.weight"):  # the first stage was trained
        assert not torch.equal(first[key], init[key]), key


def test_time_budget_spent_in_phase1_still_writes_weights_then_resume_finishes(brain_cases, tmp_path):
    """A budget spent inside phase 1 shortens every phase but ends with OUT/best.safetensors."""
    cfg = _cfg("twopath", epochs=2, steps=2, max_minutes=1e-5)  # spent after the first step
    short = train(brain_cases, tmp_path, cfg, device="cpu")
    assert short.stopped == "time budget" and short.best_weights == str(tmp_path / "best.safetensors")
    assert short.extra["budget_shortened"] == ["phase1", "phase2"]
    assert [(h["stage"], h["epoch"]) for h in short.history] == [("phase1", 1), ("phase2", 1)]
    state, meta = load_weights(tmp_path / "best.safetensors")  # usable: phase 2's (calibrated) weights
    assert meta.metrics["stage"] == "phase2" and "not yet calibrated" not in meta.notes
    cfg.max_minutes = None
    done = train(brain_cases, tmp_path, cfg, device="cpu", resume=True)
    assert done.stopped == "completed" and (tmp_path / "best.safetensors").is_file()
    assert [(h["stage"], h["epoch"]) for h in done.history] == [("phase1", 1), ("phase1", 2), ("phase2", 1)]


def test_time_budget_shared_by_remaining_steps_of_every_stage(tmp_path):
    """Cascade: four stages share the budget by their steps (phase 2 steps at half cost)."""
    cfg = _cfg("input-cascade", epochs=4, steps=10, max_minutes=10.0)  # phase 2: 1 epoch x 2 steps
    stages = train_mod.plan_stages(tmp_path, cfg, None)
    left = train_mod.remaining_epochs(tmp_path, stages, cfg, resume=False)
    assert [s.name for s in stages] == ["first/phase1", "first/phase2", "phase1", "phase2"]
    assert left == [4, 1, 4, 1]
    # costs 40, 1, 40, 1 of 82: the first stage gets 10 * 40 / 82 minutes
    assert train_mod.stage_budget(stages, cfg, left, 0, 0.0) == pytest.approx(400 / 82)
    # after 6 minutes the last stage gets all that is left; a spent budget still gives it one step
    assert train_mod.stage_budget(stages, cfg, left, 3, 360.0) == pytest.approx(4.0)
    assert train_mod.stage_budget(stages, cfg, left, 3, 900.0) == pytest.approx(1e-9)
