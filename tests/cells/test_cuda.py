"""CUDA path: AMP + channels_last overlap-tile inference agrees with CPU fp32."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.mark.cuda
@pytest.mark.parametrize("arch", ["unet2015", "basicunet"])
def test_cuda_amp_matches_cpu(arch):
    import torch

    from medseg.cells.model import CellModelConfig, build_model
    from medseg.cells.predict import make_predictor, predict_image

    torch.manual_seed(0)
    config = CellModelConfig(arch=arch, base_channels=8, batch_norm=True)
    model = build_model(config=config).eval()
    image = np.random.default_rng(0).random((700, 530)).astype(np.float32)
    cpu = predict_image(make_predictor(model, device="cpu"), config, image, tile=400)
    gpu32 = predict_image(make_predictor(model, device="cuda", amp="off"), config, image, tile=400)
    amp = make_predictor(model, device="cuda", amp="auto")
    assert amp.amp_name in ("bf16", "fp16")
    gpu_amp = predict_image(amp, config, image, tile=400)
    np.testing.assert_allclose(gpu32, cpu, atol=2e-3)
    assert np.abs(gpu_amp - cpu).mean() < 2e-2
