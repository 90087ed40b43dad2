"""Havaei architectures: the paper's shapes, receptive fields, maxout and cascade freezing."""

from __future__ import annotations

import pytest
import torch

from medseg.brain.models import (
    ARCHS,
    BrainNetConfig,
    InputCascadeCNN,
    LocalCascadeCNN,
    MaxoutConv,
    MFCascadeCNN,
    TwoPathCNN,
    build_model,
    output_layer,
)


def test_twopath_paper_shapes():
    net = TwoPathCNN()  # paper widths: 64 local, 160 global
    x = torch.randn(2, 4, 33, 33)
    h1 = net.local_hidden(x)
    assert h1.shape == (2, 64, 24, 24)
    local = net.pool2(net.local2(h1))
    assert local.shape == (2, 64, 21, 21)
    glob = net.global1(x)
    assert glob.shape == (2, 160, 21, 21)
    assert net.features(x).shape == (2, 224, 21, 21)
    assert net(x).shape == (2, 5, 1, 1)
    assert net.output.kernel_size == (21, 21)


@pytest.mark.parametrize(
    "arch,patch,first_out", [("input-cascade", 65, 33), ("local-cascade", 56, 24), ("mf-cascade", 53, 21)]
)
def test_cascade_shapes(arch, patch, first_out):
    model = build_model(config=BrainNetConfig(arch=arch))
    assert model.patch_size == patch
    x = torch.randn(1, 4, patch, patch)
    probs = model.first_probs(x)
    assert probs.shape == (1, 5, first_out, first_out)
    torch.testing.assert_close(probs.sum(1), torch.ones(1, first_out, first_out))
    inner = model._inner(x)
    assert inner.shape == (1, 4, 33, 33)
    # where the first stage's maps enter the second stage
    if arch == "input-cascade":
        assert model.second.local1.conv.in_channels == 9
    elif arch == "local-cascade":
        assert model.second.local_hidden(inner).shape[-2:] == (24, 24)
        assert model.second.local2.conv.in_channels == 64 + 5
    else:
        assert model.second.features(inner).shape == (1, 224, 21, 21)
        assert model.second.output.in_channels == 224 + 5
    assert model(x).shape == (1, 5, 1, 1)


@pytest.mark.parametrize("arch", ARCHS)
def test_receptive_field_and_fully_convolutional_output(arch):
    torch.manual_seed(0)
    model = build_model(
        config=BrainNetConfig(arch=arch, local_channels=4, global_channels=6, dropout=0.0)
    ).eval()
    p = model.patch_size if hasattr(model, "patch_size") else 33
    x = torch.randn(1, 4, p + 10, p + 7, requires_grad=True)
    out = model(x)
    assert out.shape == (1, 5, 11, 8)  # valid convs, stride-1 pools: size S - P + 1
    out[0, :, 5, 4].sum().backward()
    support = (x.grad[0].abs().sum(0) > 0).nonzero()
    rows = support[:, 0].max() - support[:, 0].min() + 1
    cols = support[:, 1].max() - support[:, 1].min() + 1
    assert (int(rows), int(cols)) == (p, p)
    assert int(support[:, 0].min()) == 5 and int(support[:, 1].min()) == 4


def test_maxout_takes_max_of_k_maps():
    layer = MaxoutConv(2, 3, 3, k=2)
    x = torch.randn(1, 2, 7, 7)
    z = layer.conv(x)
    expected = torch.maximum(z[:, 0::2], z[:, 1::2])
    torch.testing.assert_close(layer(x), expected)


def test_cascade_freeze_keeps_first_stage_in_eval_mode():
    model = build_model(config=BrainNetConfig(arch="input-cascade", local_channels=4, global_channels=6))
    assert isinstance(model, InputCascadeCNN)
    model.freeze_first()
    model.train()
    assert not model.first.training and model.second.training
    assert all(not p.requires_grad for p in model.first.parameters())
    assert output_layer(model) is model.second.output
    assert isinstance(build_model(config=BrainNetConfig(arch="local-cascade")), LocalCascadeCNN)
    assert isinstance(build_model(config=BrainNetConfig(arch="mf-cascade")), MFCascadeCNN)


def test_unknown_arch_and_keyword_only_builder():
    with pytest.raises(ValueError):
        build_model(config=BrainNetConfig(arch="unet"))
    with pytest.raises(TypeError):
        build_model(BrainNetConfig())  # type: ignore[misc]


def test_row_split_output_layer_equals_direct_convolution():
    """The CPU inference path of the 21x21 output layer (row-split) gives the direct convolution."""
    from medseg.brain.models import ROWSPLIT_MIN_PIXELS, OutputConv

    torch.manual_seed(0)
    layer = OutputConv(12, 5, 21).eval()
    x = torch.randn(2, 12, 90, 84).contiguous(memory_format=torch.channels_last)
    assert (90 - 20) * (84 - 20) >= ROWSPLIT_MIN_PIXELS  # large enough to take the row-split path
    direct = torch.nn.functional.conv2d(x, layer.weight, layer.bias)
    with torch.inference_mode():
        fast = layer(x)
    assert fast.shape == direct.shape == (2, 5, 70, 64)
    torch.testing.assert_close(fast, direct, atol=1e-5, rtol=1e-5)
    # a wrong shift (e.g. rows summed without their offset) would be far off
    assert (fast - direct).abs().max() < 1e-3 * direct.abs().max()
    with torch.no_grad():  # small maps (patches) and autograd use the direct convolution
        torch.testing.assert_close(layer(x[..., :30, :30]), direct[..., :10, :10], atol=1e-5, rtol=1e-5)
    y = layer(x[:1, :, :25, :25].clone().requires_grad_())
    y.sum().backward()
    assert layer.weight.grad is not None
