"""CUDA path: AMP + channels_last overlap-tile inference agrees with CPU fp32."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.mark.cuda
@pytest.mark.parametrize("arch", ["unet2015", "basicunet"])
def test_cuda_amp_matches_cpu(arch):
    import torch

    from medseg.cells.model import CellModelConfig, build_model
    from medseg.cells.predict import predict_image
    from medseg.engine.runtime import resolve_amp_dtype

    torch.manual_seed(0)
    config = CellModelConfig(arch=arch, base_channels=8, batch_norm=True)
    model = build_model(config=config).eval()
    image = np.random.default_rng(0).random((700, 530)).astype(np.float32)
    cpu = predict_image(model, config, image, device=torch.device("cpu"), tile=400)
    cuda = torch.device("cuda")
    gpu32 = predict_image(model, config, image, device=cuda, tile=400, amp_dtype=None)
    gpu_amp = predict_image(model, config, image, device=cuda, tile=400, amp_dtype=resolve_amp_dtype(cuda))
    np.testing.assert_allclose(gpu32, cpu, atol=2e-3)
    assert np.abs(gpu_amp - cpu).mean() < 2e-2
