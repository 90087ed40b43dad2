"""The one inference predictor: known outputs, AMP off on CPU, channels_last == contiguous, batching."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from medseg.engine.batching import map_batched
from medseg.engine.predictor import Predictor


class PlusOne(nn.Module):
    def forward(self, x):
        return x + 1


def small_cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(2, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=2, dilation=2),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 3, 1),
    ).eval()


def test_known_output_plus_one():
    pred = Predictor(PlusOne(), device="cpu")
    x = np.arange(2 * 1 * 3 * 4, dtype=np.float32).reshape(2, 1, 3, 4)
    out = pred(x)
    assert isinstance(out, np.ndarray) and out.dtype == np.float32
    np.testing.assert_array_equal(out, x + 1)


def test_integer_input_becomes_float32():
    out = Predictor(PlusOne(), device="cpu")(np.full((1, 1, 2, 2), 7, np.int16))
    assert out.dtype == np.float32 and np.all(out == 8)


def test_amp_off_on_cpu_by_default_and_on_when_asked():
    assert Predictor(PlusOne(), device="cpu").amp_dtype is None
    assert Predictor(PlusOne(), device="cpu").amp_name == "fp32"
    on = Predictor(PlusOne(), device="cpu", amp="on")
    assert on.amp_dtype == torch.bfloat16 and on.amp_name == "bf16"


def test_channels_last_equals_contiguous_on_cpu():
    x = np.random.default_rng(0).normal(size=(3, 2, 37, 29)).astype(np.float32)
    a = Predictor(small_cnn(), device="cpu", channels_last=True)(x)
    b = Predictor(small_cnn(), device="cpu", channels_last=False)(x)
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)


def test_channels_last_is_applied_to_inputs():
    seen = {}

    class Spy(nn.Module):
        def forward(self, x):
            seen["cl"] = x.is_contiguous(memory_format=torch.channels_last)
            return x

    Predictor(Spy(), device="cpu", channels_last=True)(np.zeros((2, 3, 4, 5), np.float32))
    assert seen["cl"] is True
    Predictor(Spy(), device="cpu", channels_last=False)(np.zeros((2, 3, 4, 5), np.float32))
    assert seen["cl"] is False


def test_batching_equals_one_by_one():
    pred = Predictor(small_cnn(1), device="cpu")
    items = [np.random.default_rng(i).normal(size=(2, 16, 16)).astype(np.float32) for i in range(7)]
    batched = list(map_batched(pred, iter(items), batch_size=3))
    single = [pred(i[None])[0] for i in items]
    for a, b in zip(batched, single):
        np.testing.assert_allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("post", ["softmax", "sigmoid", "argmax", "none"])
def test_postprocess_modes(post):
    x = np.random.default_rng(2).normal(size=(2, 2, 8, 8)).astype(np.float32)
    pred = Predictor(small_cnn(2), device="cpu", postprocess=post)
    raw = Predictor(small_cnn(2), device="cpu")(x)
    out = pred(x)
    if post == "softmax":
        np.testing.assert_allclose(out.sum(1), 1.0, atol=1e-5)
        np.testing.assert_array_equal(out.argmax(1), raw.argmax(1))
    elif post == "sigmoid":
        np.testing.assert_allclose(out, 1 / (1 + np.exp(-raw)), atol=1e-5)
    elif post == "argmax":
        assert out.dtype == np.uint8 and out.shape == (2, 8, 8)
        np.testing.assert_array_equal(out, raw.argmax(1))
    else:
        assert isinstance(out, torch.Tensor)


def test_prepare_and_callable_postprocess_for_list_models():
    class ListModel(nn.Module):
        def forward(self, images):
            return [{"sum": im.sum()} for im in images]

    pred = Predictor(
        ListModel(),
        device="cpu",
        prepare=lambda x: list(x.permute(0, 3, 1, 2).float() / 255),
        postprocess=lambda outs: [float(o["sum"]) for o in outs],
    )
    tiles = np.full((2, 4, 4, 3), 255, np.uint8)
    assert pred(tiles) == [48.0, 48.0]


def test_bad_postprocess_and_device_are_refused():
    from medseg.errors import InputError

    with pytest.raises(ValueError):
        Predictor(PlusOne(), device="cpu", postprocess="median")
    with pytest.raises(InputError):
        Predictor(PlusOne(), device="gpu7")


def test_cudnn_benchmark_is_not_process_wide():
    before = torch.backends.cudnn.benchmark
    pred = Predictor(small_cnn(), device="cpu", cudnn_benchmark=True)
    pred(np.zeros((1, 2, 8, 8), np.float32))
    assert torch.backends.cudnn.benchmark == before


@pytest.mark.cuda
def test_cuda_amp_matches_cpu_fp32():
    x = np.random.default_rng(3).normal(size=(4, 2, 64, 64)).astype(np.float32)
    cpu = Predictor(small_cnn(3), device="cpu")(x)
    gpu = Predictor(small_cnn(3), device="cuda", cudnn_benchmark=True)(x)
    assert Predictor(small_cnn(3), device="cuda").amp_dtype is not None
    np.testing.assert_allclose(gpu, cpu, atol=5e-2, rtol=5e-2)
