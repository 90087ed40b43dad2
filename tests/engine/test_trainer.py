"""The one trainer: files, 1-based epochs, resume continues weights and optimizer, time budget."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np
import pytest
import torch
from torch import nn

from medseg.engine.checkpoint import CheckpointMeta, load_training_state, load_weights
from medseg.engine.trainer import TrainConfig, TrainTask, fit
from medseg.errors import InputError, OutputExistsError


@dataclass
class LineTask:
    """Fit y = 3x - 2 with a 1->1 linear layer: the loss path is known and deterministic."""

    metric: str = "val_mse"
    mode: str = "min"
    has_validation: bool = True
    steps: int = 5
    lr: float = 0.05
    sleep: float = 0.0
    losses: list = field(default_factory=list)

    def build_model(self):
        torch.manual_seed(0)
        return nn.Linear(1, 1)

    def build_optimizer(self, model):
        return torch.optim.Adam(model.parameters(), lr=self.lr)

    def build_scheduler(self, optimizer):
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.5)

    def train_batches(self, epoch, rng):
        for _ in range(self.steps):
            x = rng.normal(size=(16, 1)).astype(np.float32)
            yield torch.from_numpy(x), torch.from_numpy(3 * x - 2)

    def train_step(self, model, batch, device):
        if self.sleep:
            import time

            time.sleep(self.sleep)
        x, y = (t.to(device) for t in batch)
        loss = torch.mean((model(x) - y) ** 2)
        self.losses.append(float(loss.detach()))
        return loss

    def validate(self, model, device):
        x = torch.linspace(-2, 2, 50)[:, None]
        with torch.no_grad():
            return {"val_mse": float(torch.mean((model(x) - (3 * x - 2)) ** 2))}

    def weights_meta(self, metrics, epoch):
        return CheckpointMeta(
            model="line", task="test", config={"in": 1}, metrics={**metrics, "epoch": epoch}
        )

    def config_dict(self):
        return {"steps": self.steps, "lr": self.lr}


def test_task_satisfies_protocol():
    assert isinstance(LineTask(), TrainTask)


def test_fit_writes_the_conventional_files_and_learns(tmp_path):
    result = fit(LineTask(), tmp_path / "run", TrainConfig(epochs=4, seed=1))
    names = sorted(p.name for p in (tmp_path / "run").iterdir())
    assert names == ["best.safetensors", "history.json", "last.safetensors", "state.pt", "train_config.json"]
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2, 3, 4]  # 1-based
    assert history[-1]["val_mse"] < history[0]["val_mse"]
    assert result.best_metric == min(h["val_mse"] for h in history)
    _, meta = load_weights(tmp_path / "run" / "best.safetensors")
    assert meta.metrics["epoch"] == result.best_epoch
    state = load_training_state(tmp_path / "run" / "state.pt")
    assert "model" not in state and set(state) >= {"optimizer", "epoch", "history"}  # only what resume needs


def test_resume_continues_weights_and_optimizer_exactly(tmp_path):
    straight = LineTask()
    fit(straight, tmp_path / "a", TrainConfig(epochs=4, seed=3))
    first = LineTask()
    fit(first, tmp_path / "b", TrainConfig(epochs=2, seed=3))
    second = LineTask()
    fit(second, tmp_path / "b", TrainConfig(epochs=4, seed=3), resume=True)
    # the resumed run's losses are exactly those the uninterrupted run saw in epochs 3-4:
    # that holds only if weights, Adam moments, the LR schedule and the data RNG all continued
    np.testing.assert_allclose(first.losses + second.losses, straight.losses, rtol=1e-6)
    wa, _ = load_weights(tmp_path / "a" / "last.safetensors")
    wb, _ = load_weights(tmp_path / "b" / "last.safetensors")
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k])
    history = json.loads((tmp_path / "b" / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2, 3, 4]


def test_resume_without_state_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="no training state"):
        fit(LineTask(), tmp_path / "none", TrainConfig(epochs=1), resume=True)


def test_existing_run_needs_resume_or_overwrite(tmp_path):
    fit(LineTask(), tmp_path / "r", TrainConfig(epochs=1))
    with pytest.raises(OutputExistsError):
        fit(LineTask(), tmp_path / "r", TrainConfig(epochs=1))
    result = fit(LineTask(), tmp_path / "r", TrainConfig(epochs=1), overwrite=True)
    assert result.epochs == 1


def test_unwritable_out_dir_fails_before_training(tmp_path):
    (tmp_path / "file.txt").write_text("x")
    task = LineTask()
    with pytest.raises(InputError, match="cannot write"):
        fit(task, tmp_path / "file.txt" / "run", TrainConfig(epochs=1))
    assert task.losses == []


def test_time_budget_stops_and_keeps_weights(tmp_path):
    task = LineTask(steps=50, sleep=0.02)
    result = fit(task, tmp_path / "t", TrainConfig(epochs=10, max_minutes=0.3 / 60))
    assert result.stopped == "time budget"
    assert result.epochs == 1 and len(task.losses) < 50
    assert (tmp_path / "t" / "best.safetensors").is_file()


def test_no_validation_warns(tmp_path, caplog):
    import logging

    caplog.set_level(logging.WARNING, logger="medseg")
    logging.getLogger("medseg").propagate = True
    try:
        result = fit(LineTask(has_validation=False), tmp_path / "v", TrainConfig(epochs=1))
    finally:
        logging.getLogger("medseg").propagate = False
    assert result.validated_on == "training data"
    assert any("no held-out validation" in r.getMessage() for r in caplog.records)


def _raw_weights_by_step(task: LineTask) -> list[dict[str, torch.Tensor]]:
    """Filled with the raw weights before every optimiser step of ``task``'s run."""
    seen = []
    step = task.train_step

    def record(model, batch, device):
        seen.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        return step(model, batch, device)

    task.train_step = record
    return seen


def test_ema_validates_and_saves_the_moving_average(tmp_path):
    decay = 0.8
    task = LineTask()
    seen = _raw_weights_by_step(task)
    fit(task, tmp_path / "plain", TrainConfig(epochs=3, seed=5))
    final, _ = load_weights(tmp_path / "plain" / "last.safetensors")
    # weights before each step 2..n are the weights after steps 1..n-1; then the final weights
    after = seen[1:] + [final]
    expected = {k: v.clone() for k, v in after[0].items()}
    for w in after[1:]:
        for k in expected:
            expected[k] = decay * expected[k] + (1 - decay) * w[k]
    result = fit(LineTask(), tmp_path / "ema", TrainConfig(epochs=3, seed=5, ema=decay))
    last, _ = load_weights(tmp_path / "ema" / "last.safetensors")
    for k in expected:
        torch.testing.assert_close(last[k], expected[k])
        assert not torch.allclose(last[k], final[k])  # the average, not the raw weights
    history = json.loads((tmp_path / "ema" / "history.json").read_text())
    assert result.best_metric == min(h["val_mse"] for h in history)


def test_ema_resume_continues_exactly(tmp_path):
    straight = LineTask()
    fit(straight, tmp_path / "a", TrainConfig(epochs=4, seed=3, ema=0.9))
    first, second = LineTask(), LineTask()
    fit(first, tmp_path / "b", TrainConfig(epochs=2, seed=3, ema=0.9))
    fit(second, tmp_path / "b", TrainConfig(epochs=4, seed=3, ema=0.9), resume=True)
    np.testing.assert_allclose(first.losses + second.losses, straight.losses, rtol=1e-6)
    wa, _ = load_weights(tmp_path / "a" / "last.safetensors")
    wb, _ = load_weights(tmp_path / "b" / "last.safetensors")
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k])


def test_ema_decay_is_checked_and_a_plain_run_does_not_resume_with_it(tmp_path):
    with pytest.raises(InputError, match="--ema"):
        fit(LineTask(), tmp_path / "x", TrainConfig(epochs=1, ema=1.0))
    fit(LineTask(), tmp_path / "p", TrainConfig(epochs=1))
    with pytest.raises(InputError, match="without --ema"):
        fit(LineTask(), tmp_path / "p", TrainConfig(epochs=2, ema=0.9), resume=True)
