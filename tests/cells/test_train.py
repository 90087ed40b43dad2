"""Training pieces: weighted cross-entropy, patch drawing, checkpoints that rebuild the model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medseg.cells.augment import AugmentConfig
from medseg.cells.model import CellModelConfig, build_model
from medseg.cells.train import (
    TrainConfig,
    draw_batch,
    load_model,
    make_meta,
    prepare_sample,
    weighted_cross_entropy,
)
from medseg.cells.weights import WeightMapConfig
from medseg.engine.checkpoint import save_weights
from medseg.errors import InputError, ModelError
from medseg.synthetic.cells import SyntheticCellsConfig, synthetic_cells


def test_weighted_cross_entropy_matches_definition():
    torch.manual_seed(0)
    logits = torch.randn(2, 2, 5, 6)
    target = torch.randint(0, 2, (2, 5, 6))
    weight = torch.rand(2, 5, 6) * 10
    logp = torch.log_softmax(logits, 1).gather(1, target[:, None])[:, 0]
    assert weighted_cross_entropy(logits, target, weight).item() == pytest.approx((-(weight * logp)).mean().item())
    with pytest.raises(ValueError):
        weighted_cross_entropy(logits, target[:, :4], weight)


def test_prepare_sample_and_draw_batch():
    image, labels = synthetic_cells(11, SyntheticCellsConfig(height=80, width=90))
    sample = prepare_sample(image, labels, WeightMapConfig())
    assert sample.target.sum() < (labels > 0).sum()  # touching borders became background
    assert sample.weight.max() > 5  # border term present
    with pytest.raises(InputError):
        prepare_sample(image, labels[:10], WeightMapConfig())
    x, t, w = draw_batch(np.random.default_rng(0), [sample], batch_size=3, tile=188, margin=92, out_size=4,
                         augment_config=AugmentConfig())
    assert x.shape == (3, 1, 188, 188) and t.shape == (3, 4, 4) and w.shape == (3, 4, 4)
    # without augmentation the target core is exactly the sample's target at that place
    x, t, w = draw_batch(np.random.default_rng(1), [sample], batch_size=2, tile=188 + 40, margin=92, out_size=44,
                         augment_config=AugmentConfig(elastic_prob=0, flips=False, rot90=False, intensity=0))
    img = sample.image
    found = [np.argwhere((np.lib.stride_tricks.sliding_window_view(img, (44, 44)) == x[k, 0, 92:136, 92:136].numpy())
                         .all(axis=(2, 3))) for k in range(2)]
    for k, pos in enumerate(found):
        (y0, x0), = pos
        np.testing.assert_array_equal(t[k].numpy(), sample.target[y0:y0 + 44, x0:x0 + 44])


def test_checkpoint_roundtrip_and_wrong_model(tmp_path):
    config = TrainConfig(model=CellModelConfig(base_channels=2))
    model = build_model(config=config.model)
    path = tmp_path / "w.safetensors"
    save_weights(path, {k: v.half() if v.is_floating_point() else v for k, v in model.state_dict().items()},
                 make_meta(config, {"val_pixel_iou": 0.5}))
    loaded, cfg, meta = load_model(path)
    assert cfg == config.model and meta.metrics["val_pixel_iou"] == 0.5
    assert next(loaded.parameters()).dtype == torch.float32
    other = TrainConfig(model=CellModelConfig(base_channels=3))
    save_weights(path, model.state_dict(), make_meta(other, {}))
    with pytest.raises(ModelError, match="do not fit"):
        load_model(path)
