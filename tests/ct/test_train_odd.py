"""ct-train --resume continues the same run: the exams of each part of the split are its identity."""

from __future__ import annotations


def test_resume_identity_is_the_split_without_its_wording():
    from medseg.ct.train import CTTrainTask

    task = CTTrainTask.__new__(CTTrainTask)
    task.split = {
        "mode": "exams",
        "description": "by exam (3 exams)",
        "train": ["e1"],
        "val": ["e2"],
        "test": ["e3"],
    }
    assert task.resume_identity() == {
        "split": {"mode": "exams", "train": ["e1"], "val": ["e2"], "test": ["e3"]}
    }


def test_resume_of_a_folder_whose_last_weights_are_another_pipelines_is_exit_4(tmp_path):
    import pytest
    import torch

    from medseg.ct.train import _resumed_net_config
    from medseg.engine.checkpoint import CheckpointMeta, save_weights
    from medseg.errors import ModelError

    meta = CheckpointMeta(model="medseg-cells-unet", task="cells", config={"arch": "unet2015"})
    save_weights(tmp_path / "last.safetensors", {"w": torch.zeros(1)}, meta)
    with pytest.raises(ModelError, match="'medseg-cells-unet'.*not a CT kernel converter"):
        _resumed_net_config(tmp_path, "B50f", "B30f")


def test_a_resumed_run_reports_the_learning_rate_it_was_planned_with(tmp_path):
    """A resume planned the fine-tuning peak (5e-4) and printed it (and wrote it to train_config.json),
    while the restored optimiser and schedule went on with the run's own peak (1e-3)."""
    import json

    from medseg.ct.train import _saved_lr

    assert _saved_lr(tmp_path) is None  # nothing saved: the usual plan
    (tmp_path / "train_config.json").write_text(json.dumps({"task": {"ct": {"lr": 0.001}}}))
    assert _saved_lr(tmp_path) == 0.001
    (tmp_path / "train_config.json").write_text("{")
    assert _saved_lr(tmp_path) is None


def test_init_of_another_pipelines_weights_is_a_weights_error(tmp_path):
    """--init with brain or cells weights: exit 4 (a weights problem), as cells-train and slide-train say."""
    import pytest
    import torch

    from medseg.ct.train_init import resolve_init
    from medseg.engine.checkpoint import CheckpointMeta, save_weights
    from medseg.errors import ModelError

    path = tmp_path / "brain.safetensors"
    save_weights(path, {"w": torch.zeros(1)}, CheckpointMeta(model="brain-twopath", task="t", config={}))
    with pytest.raises(ModelError, match="'brain-twopath', not a CT kernel converter"):
        resolve_init(str(path), "B50f", "B30f", None, 0.7, channels=8, depth=3)  # type: ignore[arg-type]
