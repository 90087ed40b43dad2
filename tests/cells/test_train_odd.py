"""cells-train, odd starting points and resumes: weights of another pipeline, a .pt pickle, the split by name,
--resume with another network or other data (one line, before any training)."""

from __future__ import annotations

import numpy as np
import pytest

from medseg.engine.checkpoint import CheckpointMeta, save_weights
from medseg.errors import ModelError


def _foreign_weights(path):
    import torch

    meta = CheckpointMeta(model="ct-kernel-cnn", task="B50f->B30f", config={"channels": 4})
    save_weights(path, {"w": torch.zeros(2)}, meta)
    return path


def test_init_of_another_pipelines_weights_is_a_weights_error_naming_it(tmp_path):
    from medseg.cells.train import resolve_init

    with pytest.raises(ModelError, match="weights of 'ct-kernel-cnn'.*not a cell segmentation net"):
        resolve_init(str(_foreign_weights(tmp_path / "ct.safetensors")), None)


def test_init_of_a_pickle_is_refused_without_unpickling(tmp_path):
    import pickle

    from medseg.cells.train import resolve_init

    class Boom:
        def __reduce__(self):
            return (open, (str(tmp_path / "ran"), "w"))

    path = tmp_path / "model.pt"
    path.write_bytes(pickle.dumps({"x": Boom()}))
    with pytest.raises(ModelError, match="not a safetensors weights file"):
        resolve_init(str(path), None)
    assert not (tmp_path / "ran").exists()


def test_split_is_recorded_by_name_and_the_same_for_the_same_seed():
    from medseg.cells.train import split_indices, split_validation

    a = split_indices(7, 0.3, np.random.default_rng([0, 7]))
    assert a == split_indices(7, 0.3, np.random.default_rng([0, 7]))
    assert sorted(a[0] + a[1]) == list(range(7)) and len(a[1]) == 2
    assert split_indices(1, 0.2, np.random.default_rng(0)) == ([0], [])  # one image: nothing held out
    assert len(split_indices(2, 0.2, np.random.default_rng(0))[1]) == 1
    train, val = split_validation(list("abcdefg"), 0.3, np.random.default_rng([0, 7]))
    assert val == [list("abcdefg")[i] for i in a[1]]


def test_resume_identity_names_network_target_data_and_split():
    from medseg.cells.train import CellsTrainConfig, CellsTrainTask, prepare_sample

    labels = np.zeros((64, 64), np.int32)
    labels[10:30, 10:30] = 1
    cfg = CellsTrainConfig(training_data="images /data/a")
    sample = prepare_sample(
        np.random.default_rng(0).random((64, 64)).astype(np.float32), labels, cfg.weight_map
    )
    split = {"train": ["a.tif"], "validation": ["b.tif"]}
    ident = CellsTrainTask(cfg, [sample], [sample], {"split": split}).resume_identity()
    assert ident["data"] == "images /data/a" and ident["images"] == split
    assert ident["target"] == "borders" and ident["network"]["base_channels"] == cfg.model.base_channels


def test_resume_and_overwrite_together_are_refused_before_any_work(tmp_path):
    from medseg.cells.train import CellsTrainConfig, train_cells
    from medseg.errors import InputError

    with pytest.raises(InputError, match="give one of them"):
        train_cells(tmp_path / "run", CellsTrainConfig(synthetic=2), resume=True, overwrite=True)
    assert not (tmp_path / "run").exists()
