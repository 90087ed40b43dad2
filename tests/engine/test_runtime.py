from __future__ import annotations

import pytest
import torch

from medseg.engine.runtime import autocast, resolve_amp_dtype, seed_everything, select_device
from medseg.errors import InputError


def test_select_device_cpu_and_auto():
    assert select_device("cpu").type == "cpu"
    assert select_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.parametrize("spec", ["gpu", "cuda:x", "tpu", ""])
def test_invalid_device_specs(spec):
    if spec == "":
        assert select_device(spec).type in ("cpu", "cuda")  # empty means auto
        return
    with pytest.raises(InputError, match="invalid device"):
        select_device(spec)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_cuda_without_gpu_is_a_clear_error():
    with pytest.raises(InputError, match="CUDA is not available"):
        select_device("cuda:0")


def test_amp_defaults_off_on_cpu_and_can_be_forced():
    cpu = torch.device("cpu")
    assert resolve_amp_dtype(cpu) is None and resolve_amp_dtype(cpu, "auto") is None
    assert resolve_amp_dtype(cpu, True) is torch.bfloat16
    assert resolve_amp_dtype(cpu, "fp16") is torch.float16
    assert resolve_amp_dtype(cpu, "off") is None
    with pytest.raises(InputError):
        resolve_amp_dtype(cpu, "fp8")
    with autocast(cpu, torch.bfloat16):
        y = torch.nn.Linear(4, 4)(torch.randn(2, 4))
    assert y.dtype == torch.bfloat16


@pytest.mark.cuda
def test_amp_on_cuda_prefers_bf16():
    dev = select_device("cuda")
    expected = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    assert resolve_amp_dtype(dev) is expected


def test_seeding_is_reproducible():
    seed_everything(7)
    a = torch.randn(5)
    seed_everything(7)
    assert torch.equal(a, torch.randn(5))
