"""Two-phase training: phase 2 touches only the output layer, cascade first stage frozen, resume."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medseg.brain import train as train_mod
from medseg.brain.models import BrainNetConfig, build_model
from medseg.brain.preprocess import PreprocessConfig
from medseg.brain.sampling import class_balanced_coords, natural_coords
from medseg.brain.train import PhaseConfig, TrainConfig, load_training_cases, run_phase, train


def _cfg(arch: str, **kw) -> TrainConfig:
    return TrainConfig(net=BrainNetConfig(arch=arch, local_channels=4, global_channels=6),
                       preprocess=PreprocessConfig(n4=False), phase1=PhaseConfig(epochs=2, steps_per_epoch=3),
                       phase2=PhaseConfig(epochs=1, steps_per_epoch=2, lr=0.001), batch_size=16, val_patches=40,
                       training_data="synthetic test cases", **kw)


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


def test_phase2_trains_only_output_layer(brain_cases):
    cfg = _cfg("twopath")
    cases = load_training_cases(brain_cases[:1], labels="brats2021", prep=cfg.preprocess)
    model = build_model(config=cfg.net)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    run_phase(model, cases, phase=2, cfg=cfg, device=torch.device("cpu"), state={}, state_path=None,
              probs_size=None)
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed == {"output.weight", "output.bias"}


def test_cascade_first_stage_frozen_and_resume(brain_cases, tmp_path, monkeypatch):
    from medseg.engine.checkpoint import load_weights, read_meta

    first = train(brain_cases, tmp_path / "tp", _cfg("twopath"), device="cpu")
    meta = read_meta(first["weights"])
    assert meta.model == "brain-twopath" and meta.config["net"]["arch"] == "twopath"
    first_state, _ = load_weights(first["weights"])

    # interrupt the cascade's second stage during phase-1 epoch 2, then resume
    calls = {"n": 0}
    real = train_mod._val_loss

    def flaky(*a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(train_mod, "_val_loss", flaky)
    cfg = _cfg("input-cascade")
    with pytest.raises(KeyboardInterrupt):
        train(brain_cases, tmp_path / "ic", cfg, first_weights=first["weights"], device="cpu")
    assert (tmp_path / "ic" / "train_state.pt").is_file()
    monkeypatch.setattr(train_mod, "_val_loss", real)
    result = train(brain_cases, tmp_path / "ic", cfg, device="cpu", resume=True)
    assert [h["epoch"] for h in result["history"]["phase1"]] == [1, 2]
    state, meta = load_weights(result["weights"])
    assert meta.model == "brain-input-cascade"
    for k, v in first_state.items():  # the first stage is exactly the frozen TwoPathCNN
        assert torch.equal(state[f"first.{k}"], v), k
    assert any(not torch.equal(state[f"second.{k}"][:, :4] if k == "local1.conv.weight" else state[f"second.{k}"],
                               v) for k, v in first_state.items() if state[f"second.{k}"].shape == v.shape)


def test_existing_output_needs_overwrite(brain_cases, tmp_path):
    from medseg.errors import OutputExistsError

    cfg = _cfg("twopath")
    cfg.phase1 = PhaseConfig(epochs=1, steps_per_epoch=1)
    train(brain_cases[:1], tmp_path, cfg, device="cpu")
    with pytest.raises(OutputExistsError):
        train(brain_cases[:1], tmp_path, cfg, device="cpu")


@pytest.mark.parametrize("arch", ["local-cascade", "mf-cascade"])
def test_other_cascades_train_with_frozen_first_stage(arch, brain_cases, tmp_path):
    from medseg.engine.checkpoint import load_weights

    quick = _cfg("twopath")
    quick.phase1 = PhaseConfig(epochs=1, steps_per_epoch=2)
    first = train(brain_cases[:1], tmp_path / "tp", quick, device="cpu")
    cfg = _cfg(arch)
    cfg.phase1 = PhaseConfig(epochs=1, steps_per_epoch=2)
    result = train(brain_cases[:1], tmp_path / arch, cfg, first_weights=first["weights"], device="cpu")
    state, meta = load_weights(result["weights"])
    first_state, _ = load_weights(first["weights"])
    assert meta.model == f"brain-{arch}"
    assert all(torch.equal(state[f"first.{k}"], v) for k, v in first_state.items())


def test_cascade_trains_its_first_stage_when_not_given(brain_cases, tmp_path):
    cfg = _cfg("input-cascade")
    cfg.phase1 = PhaseConfig(epochs=1, steps_per_epoch=2)
    result = train(brain_cases[:1], tmp_path, cfg, device="cpu")
    from medseg.engine.checkpoint import load_weights
    from medseg.engine.runtime import seed_everything

    state, _ = load_weights(result["weights"])
    seed_everything(cfg.seed)  # train() seeds the same way before building the model
    init = build_model(config=cfg.net).state_dict()
    for key in ("first.local1.conv.weight", "first.output.weight"):  # the first stage was trained
        assert not torch.equal(state[key], init[key]), key
    assert result["history"]["phase1"] and result["history"]["phase2"]
