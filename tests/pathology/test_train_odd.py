"""slide-train odd starting points: weights of another pipeline are a weights error (exit 4) naming them."""

from __future__ import annotations

import pytest

from medseg.engine.checkpoint import CheckpointMeta, save_weights
from medseg.errors import ModelError


@pytest.mark.parametrize(
    ("model", "config"),
    [("medseg-cells-unet", {"arch": "unet2015"}), ("ct-kernel-cnn", {"channels": 4})],
)
def test_init_weights_of_another_pipeline_are_not_called_a_detector(tmp_path, model, config):
    import torch

    from medseg.pathology.train import _check_init_arch

    path = tmp_path / "other.safetensors"
    save_weights(path, {"w": torch.zeros(2)}, CheckpointMeta(model=model, task="t", config=config))
    with pytest.raises(ModelError, match=f"weights of '{model}'.*not a C4d detector") as err:
        _check_init_arch(str(path), "light")
    assert err.value.exit_code == 4


def test_init_weights_that_are_not_safetensors_are_exit_4(tmp_path):
    from medseg.pathology.train import _check_init_arch

    path = tmp_path / "model.pt"
    path.write_bytes(b"\x80\x04garbage")
    with pytest.raises(ModelError, match="not a safetensors weights file"):
        _check_init_arch(str(path), "light")


def test_a_damaged_tile_is_refused_before_training_naming_it(tmp_path):
    import json

    import numpy as np
    from PIL import Image

    from medseg.errors import InputError
    from medseg.pathology.train import check_tiles, load_dataset

    (tmp_path / "images").mkdir()
    records = []
    for i in range(2):
        Image.fromarray(np.full((64, 64, 3), 200 + i, np.uint8)).save(tmp_path / "images" / f"t{i}.png")
        records.append({"file": f"images/t{i}.png", "boxes": [[1, 1, 9, 9]], "labels": [1]})
    (tmp_path / "annotations.json").write_text(json.dumps({"images": records}))
    check_tiles(tmp_path, load_dataset(tmp_path)[1])  # whole tiles: fine
    whole = (tmp_path / "images" / "t1.png").read_bytes()
    (tmp_path / "images" / "t1.png").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(InputError, match=r"damaged .*images/t1\.png"):
        check_tiles(tmp_path, load_dataset(tmp_path)[1])
