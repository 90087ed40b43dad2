"""--resume of a run folder that is not this run's: other network, other data, a damaged state (one line)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from torch import nn

from medseg.engine.checkpoint import load_training_state, save_training_state
from medseg.engine.trainer import TrainConfig, fit
from medseg.errors import InputError, ModelError

from .test_trainer import LineTask


@dataclass
class WideTask(LineTask):
    """LineTask with a configurable network width and a data description for resume."""

    width: int = 1
    data: str = "set A"

    def build_model(self):
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(1, self.width), nn.Linear(self.width, 1))

    def resume_identity(self):
        return {"network": {"width": self.width}, "data": self.data}


def test_resume_with_other_data_is_refused_naming_what_changed(tmp_path):
    fit(WideTask(), tmp_path / "run", TrainConfig(epochs=1))
    with pytest.raises(InputError, match=r"--resume: .*data \"set A\" -> \"set B\""):
        fit(WideTask(data="set B"), tmp_path / "run", TrainConfig(epochs=2), resume=True)
    with pytest.raises(InputError, match=r"network.width 1 -> 4"):
        fit(WideTask(width=4), tmp_path / "run", TrainConfig(epochs=2), resume=True)
    result = fit(WideTask(), tmp_path / "run", TrainConfig(epochs=2), resume=True)  # the same run goes on
    assert [h["epoch"] for h in result.history] == [1, 2]


def test_resume_of_an_older_state_with_another_network_is_one_line_exit_4(tmp_path):
    """A state without the identity (older runs): weights that do not fit are a ModelError, not a crash."""
    fit(WideTask(), tmp_path / "run", TrainConfig(epochs=1))
    state = load_training_state(tmp_path / "run" / "state.pt")
    del state["identity"]
    save_training_state(tmp_path / "run" / "state.pt", state)
    with pytest.raises(ModelError, match="do not fit the network") as err:
        fit(LineTaskWide4(), tmp_path / "run", TrainConfig(epochs=2), resume=True)
    assert "\n" not in str(err.value) and err.value.exit_code == 4


class LineTaskWide4(LineTask):
    """A wider network, from a task that does not describe itself (no resume_identity)."""

    def build_model(self):
        return nn.Sequential(nn.Linear(1, 4), nn.Linear(4, 1))


@pytest.mark.parametrize("state", [{"epoch": 1}, {"optimizer": 3}, [1, 2]])
def test_resume_of_a_state_lacking_entries_is_one_line_exit_4(tmp_path, state):
    fit(LineTask(), tmp_path / "run", TrainConfig(epochs=1))
    torch.save(state, tmp_path / "run" / "state.pt")
    with pytest.raises(ModelError, match="not a readable training state") as err:
        fit(LineTask(), tmp_path / "run", TrainConfig(epochs=2), resume=True)
    assert "\n" not in str(err.value)


class FailingTask(LineTask):
    """A task whose first training step fails (damaged data found late, out of memory ...)."""

    def train_step(self, model, batch, device):
        raise OSError("disk gone")


def test_a_run_that_fails_in_epoch_1_leaves_no_empty_folder_it_made(tmp_path):
    with pytest.raises(OSError):
        fit(FailingTask(), tmp_path / "run", TrainConfig(epochs=1))
    assert not (tmp_path / "run").exists()
    (tmp_path / "mine").mkdir()  # a folder the user made is kept
    with pytest.raises(OSError):
        fit(FailingTask(), tmp_path / "mine", TrainConfig(epochs=1))
    assert (tmp_path / "mine").is_dir() and not list((tmp_path / "mine").iterdir())


def test_ctrl_c_while_an_epoch_is_written_keeps_that_epoch_whole_and_resume_goes_on(tmp_path, monkeypatch):
    import json
    import os
    import signal

    import medseg.engine.checkpoint as checkpoint

    real = checkpoint.save_training_state

    def interrupted(path, state):  # Ctrl-C arrives between the weights and the state
        os.kill(os.getpid(), signal.SIGINT)
        return real(path, state)

    monkeypatch.setattr(checkpoint, "save_training_state", interrupted)
    with pytest.raises(KeyboardInterrupt):
        fit(LineTask(), tmp_path / "run", TrainConfig(epochs=3))
    monkeypatch.undo()
    state = load_training_state(tmp_path / "run" / "state.pt")
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert state["epoch"] == 1 and [h["epoch"] for h in history] == [1]
    assert not [p for p in (tmp_path / "run").iterdir() if p.name.startswith(".")]  # no half-written file
    result = fit(LineTask(), tmp_path / "run", TrainConfig(epochs=3), resume=True)
    assert [h["epoch"] for h in result.history] == [1, 2, 3]


def test_a_task_that_is_one_step_of_a_longer_run_says_what_to_rerun(tmp_path, caplog):
    """brain-train's phase 2 interrupted in its first epoch: phase 1 is kept, a plain rerun is exit 3."""
    task = FailingTask()
    task.rerun_hint = "phase1 is kept: rerun with --resume to train phase2 again"

    def interrupted(model, batch, device):
        raise KeyboardInterrupt

    task.train_step = interrupted
    with pytest.raises(KeyboardInterrupt), caplog.at_level("WARNING"):
        fit(task, tmp_path / "run", TrainConfig(epochs=1))
    assert "nothing was saved; phase1 is kept: rerun with --resume" in caplog.text
