from __future__ import annotations

import torch
from torch import nn

from medseg.ct.model import KernelNetConfig, build_kernel_net


def test_architecture_matches_the_paper():
    net = build_kernel_net(config=KernelNetConfig())
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 6
    assert all(c.kernel_size == (3, 3) and c.padding == (1, 1) for c in convs)
    assert [c.out_channels for c in convs] == [64] * 5 + [1]
    assert convs[0].in_channels == 1
    assert not any(isinstance(m, (nn.BatchNorm2d, nn.MaxPool2d)) for m in net.modules())
    relus = [m for m in net.body if isinstance(m, nn.ReLU)]
    assert len(relus) == 5 and isinstance(net.body[-1], nn.Conv2d)  # no activation after the last conv


def test_residual_learning_output_is_input_plus_residual():
    net = build_kernel_net(config=KernelNetConfig(channels=8))
    x = torch.randn(2, 1, 37, 41) * 400 - 500  # any matrix size, raw HU
    with torch.no_grad():
        assert torch.allclose(net(x), x + net.residual(x))
        net.body[-1].weight.zero_()
        net.body[-1].bias.zero_()
        assert torch.equal(net(x), x)  # zero residual = identity, exactly


def test_flops_per_pixel_is_about_0_3_mflop():
    net = build_kernel_net(config=KernelNetConfig())
    macs = sum(m.weight.numel() for m in net.modules() if isinstance(m, nn.Conv2d))
    assert 0.28e6 < 2 * macs < 0.31e6


def test_slice_predictor_runs_channels_last_and_matches_the_plain_model():
    """The engine Predictor (channels_last on CPU) gives the model's own numbers, slice for slice."""
    import numpy as np

    from medseg.ct.models import slice_predictor

    torch.manual_seed(0)
    net = build_kernel_net(config=KernelNetConfig(channels=8, depth=3))
    x = (torch.randn(3, 1, 33, 40) * 400 - 500).numpy()
    with torch.no_grad():
        expected = net(torch.from_numpy(x))[:, 0].numpy()
    predictor = slice_predictor(net, device="cpu")
    assert predictor.describe() == {"device": "cpu", "amp": "fp32", "channels_last": True, "runtime": "torch"}
    assert net.body[0].weight.is_contiguous(memory_format=torch.channels_last)
    got = predictor(x)
    assert got.shape == (3, 33, 40) and got.dtype == np.float32
    assert np.abs(got - expected).max() <= 1e-5 * np.abs(expected).max()
