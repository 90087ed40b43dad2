"""Network slimming core: the L1 sub-gradient on batch-norm scales, the global threshold, the trainer's
``slim`` setting and the train -> prune -> fine-tune driver."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from medseg.engine import slim
from medseg.engine.checkpoint import CheckpointMeta
from medseg.engine.trainer import TrainConfig, TrainResult, fit
from medseg.errors import InputError


def _toy(batch_norm: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(1, 6, 3)]
    if batch_norm:
        layers.append(nn.BatchNorm2d(6))
    layers += [nn.ReLU(), nn.Conv2d(6, 2, 1)]
    return nn.Sequential(*layers)


def test_l1_subgradient_adds_lambda_sign_gamma():
    torch.manual_seed(0)
    net = _toy()
    with torch.no_grad():
        net[1].weight.copy_(torch.tensor([0.5, -0.2, 1.0, 0.3, -0.7, 0.1]))
    x = torch.randn(2, 1, 8, 8)
    net(x).sum().backward()
    plain = net[1].weight.grad.clone()
    slim.add_bn_l1_grad(net, 0.01)
    expected = plain + 0.01 * torch.sign(net[1].weight.detach())
    assert torch.allclose(net[1].weight.grad, expected)
    assert not torch.allclose(net[1].weight.grad, plain)
    assert float(slim.bn_l1_penalty(net).detach()) == pytest.approx(2.8)


@pytest.mark.parametrize("ratio", [0.3, 0.5, 0.7])
def test_global_threshold_prunes_the_requested_share(ratio):
    values = (torch.randperm(60, generator=torch.Generator().manual_seed(3)) + 1).float() / 100
    gammas = [values[:10], -values[10:30], values[30:]]  # distinct |gamma|, some negative
    threshold = slim.global_threshold(gammas, ratio)
    keeps = [slim.keep_indices(g, threshold) for g in gammas]
    assert 60 - sum(int(k.numel()) for k in keeps) == round(ratio * 60)
    kept = torch.cat([g.abs()[k] for g, k in zip(gammas, keeps)])
    assert float(kept.min()) > threshold  # every kept scale is larger than every pruned one
    threshold2, keeps2 = slim.global_keep(gammas, ratio)
    assert threshold2 == threshold and all(torch.equal(a, b) for a, b in zip(keeps, keeps2))


def test_global_keep_breaks_ties_to_the_exact_share():
    gammas = [torch.tensor([0.0, 0.0, 0.5, 0.0]), torch.tensor([0.0, 0.2, 0.0, 0.0, 0.9, 0.0])]
    _, keeps = slim.global_keep(gammas, 0.3)  # 3 of 10, among 7 zero scales
    assert sum(int(k.numel()) for k in keeps) == 7
    _, keeps = slim.global_keep(gammas, 0.9)  # 9 of 10: each layer still keeps its largest channel
    assert [k.tolist() for k in keeps] == [[2], [4]]


def test_keep_indices_keeps_at_least_one_channel_and_ratio_is_checked():
    assert (
        slim.keep_indices(torch.zeros(4), 1.0).tolist() == [0]
        or slim.keep_indices(torch.zeros(4), 1.0).numel() == 1
    )
    for bad in (0.0, 1.0, -0.5, 1.5):
        with pytest.raises(ValueError, match="strictly between 0 and 1"):
            slim.global_threshold([torch.ones(3)], bad)


def test_constant_shift_is_exact_for_a_valid_convolution():
    torch.manual_seed(1)
    conv = nn.Conv2d(4, 3, 3)
    x = torch.randn(1, 4, 9, 9)
    x[:, [1, 3]] = torch.tensor([0.7, -0.4])[None, :, None, None]  # constant input channels
    removed = torch.tensor([1, 3])
    shift = slim.constant_shift(conv.weight, removed, torch.tensor([0.7, -0.4]))
    small = nn.Conv2d(2, 3, 3)
    with torch.no_grad():
        small.weight.copy_(conv.weight[:, [0, 2]])
        small.bias.copy_(conv.bias + shift)
    assert torch.allclose(conv(x), small(x[:, [0, 2]]), atol=1e-5)


@dataclass
class _Task:
    """A minimal TrainTask: a batch-normed toy net fitting a constant."""

    batch_norm: bool = True
    metric: str = "val_loss"
    mode: str = "min"
    has_validation: bool = True
    model: nn.Module | None = field(default=None, repr=False)

    def build_model(self) -> nn.Module:
        torch.manual_seed(0)
        self.model = _toy(self.batch_norm)
        return self.model

    def build_optimizer(self, model):
        return torch.optim.SGD(model.parameters(), lr=0.05)

    def build_scheduler(self, optimizer):
        return None

    def train_batches(self, epoch, rng):
        for _ in range(5):
            yield torch.from_numpy(rng.normal(size=(4, 1, 6, 6)).astype(np.float32))

    def train_step(self, model, batch, device):
        return (model(batch.to(device)) - 1.0).pow(2).mean()

    def validate(self, model, device):
        return {"val_loss": 0.0}

    def weights_meta(self, metrics, epoch):
        return CheckpointMeta(model="toy", task="toy", config={})

    def config_dict(self):
        return {}


def test_trainer_slim_shrinks_the_batch_norm_scales(tmp_path):
    plain, sparse = _Task(), _Task()
    fit(plain, tmp_path / "plain", TrainConfig(epochs=1, amp="off"), device="cpu")
    fit(sparse, tmp_path / "sparse", TrainConfig(epochs=1, amp="off", slim=0.2), device="cpu")
    assert float(slim.bn_l1_penalty(sparse.model)) < float(slim.bn_l1_penalty(plain.model)) - 0.2


def test_trainer_refuses_slim_without_batch_norm_or_negative(tmp_path):
    with pytest.raises(InputError, match="no batch norm"):
        fit(
            _Task(batch_norm=False), tmp_path / "a", TrainConfig(epochs=1, amp="off", slim=1e-4), device="cpu"
        )
    with pytest.raises(InputError, match=">= 0"):
        fit(_Task(), tmp_path / "b", TrainConfig(epochs=1, amp="off", slim=-1.0), device="cpu")


@dataclass
class _Model:
    width: int = 8

    @classmethod
    def from_dict(cls, data):
        return cls(**data)


@dataclass
class _Config:
    model: _Model = field(default_factory=_Model)
    epochs: int = 4
    slim: float = 1e-4
    prune_ratio: float | None = 0.5
    finetune_epochs: int = 2
    init_weights: str | None = None


def test_train_and_prune_runs_sparse_prune_finetune(tmp_path):
    calls = []

    def train(out_dir: Path, config, *, resume, overwrite, tag):
        calls.append((out_dir.name, config.epochs, config.slim, config.model.width, config.init_weights, tag))
        out_dir.mkdir(parents=True)
        (out_dir / "best.safetensors").write_text(out_dir.name)
        return TrainResult(
            str(out_dir),
            str(out_dir / "best.safetensors"),
            "",
            "m",
            0.5,
            1,
            1,
            "completed",
            "cpu",
            1.0,
            "held-out data",
        )

    def prune(src: Path, dst: Path, ratio: float):
        dst.write_text(f"pruned {src.read_text()} {ratio}")
        return {"params_before": 100, "params_after": 40, "config": {"width": 4}}

    result = slim.train_and_prune(train, prune, tmp_path / "run", _Config(), tag="x")
    assert [c[:4] for c in calls] == [("sparse", 4, 1e-4, 8), ("finetune", 2, 0.0, 4)]
    assert calls[1][4] == str(tmp_path / "run" / "pruned.safetensors")
    assert Path(result.best_weights).read_text() == "finetune"
    summary = json.loads((tmp_path / "run" / "slim.json").read_text())
    assert summary["params_after"] == 40 and summary["prune_ratio"] == 0.5
    with pytest.raises(Exception, match="slimming run"):
        slim.train_and_prune(train, prune, tmp_path / "run", _Config(), tag="x")
