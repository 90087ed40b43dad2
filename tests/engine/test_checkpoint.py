from __future__ import annotations

import os
import pickle

import pytest
import torch

from medseg.engine.checkpoint import (
    CheckpointMeta,
    load_training_state,
    load_weights,
    read_meta,
    save_training_state,
    save_weights,
)
from medseg.errors import ModelError


def test_weights_round_trip_with_metadata(tmp_path):
    net = torch.nn.Conv2d(1, 2, 3)
    meta = CheckpointMeta(
        model="m",
        task="t",
        config={"a": 1},
        training_data="synthetic, seed 1",
        normalisation={"mean": -500.0},
    )
    path = save_weights(tmp_path / "w.safetensors", net.state_dict(), meta)
    state, back = load_weights(path, expect_model="m")
    assert torch.equal(state["weight"], net.weight.detach())
    assert back.config == {"a": 1} and back.training_data == "synthetic, seed 1"
    assert read_meta(path).normalisation == {"mean": -500.0}
    with pytest.raises(ModelError, match="expected 'other'"):
        load_weights(path, expect_model="other")


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_untrusted_pickles_are_not_executed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    evil = tmp_path / "state.pt"
    with open(evil, "wb") as f:
        pickle.dump({"model": _Evil()}, f)
    with pytest.raises(ModelError):
        load_training_state(evil)
    assert not (tmp_path / "pwned").exists()
    with pytest.raises(ModelError, match="not a safetensors"):
        read_meta(evil)


def test_training_state_round_trip(tmp_path):
    net = torch.nn.Linear(2, 2)
    opt = torch.optim.Adam(net.parameters())
    net(torch.randn(3, 2)).sum().backward()
    opt.step()
    save_training_state(
        tmp_path / "s.pt",
        {"model": net.state_dict(), "optimizer": opt.state_dict(), "epoch": 3, "history": [{"val": 1.5}]},
    )
    state = load_training_state(tmp_path / "s.pt")
    assert state["epoch"] == 3 and state["history"][0]["val"] == 1.5
    opt2 = torch.optim.Adam(torch.nn.Linear(2, 2).parameters())
    opt2.load_state_dict(state["optimizer"])
