"""Device, mixed precision and seeding: one place so every pipeline behaves alike."""

from __future__ import annotations

import contextlib
import os
import random
import re
from typing import TYPE_CHECKING

import numpy as np

from medseg.errors import InputError

if TYPE_CHECKING:
    import torch

_DEVICE_RE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def select_device(spec: str = "auto") -> torch.device:
    """Turn ``auto|cpu|cuda|cuda:N`` into a ``torch.device``.

    ``auto`` picks CUDA when present, else CPU. Asking for CUDA on a machine without it is a
    user error (one line), not a silent fallback: a timing or a clinical run must say what ran.
    """
    import torch

    spec = (spec or "auto").strip().lower()
    if not _DEVICE_RE.match(spec):
        raise InputError(f"invalid device {spec!r}: use auto, cpu, cuda or cuda:N")
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise InputError(f"device {spec!r} requested but CUDA is not available on this machine")
    index = int(spec.split(":")[1]) if ":" in spec else 0
    if index >= torch.cuda.device_count():
        raise InputError(
            f"device {spec!r} requested but only {torch.cuda.device_count()} CUDA device(s) exist"
        )
    return torch.device("cuda", index)


def resolve_amp_dtype(device: torch.device, amp: bool | str | None = None) -> torch.dtype | None:
    """Choose the autocast dtype, or None for full fp32.

    Default (``amp=None``): bf16 on CUDA where supported, else fp16; off on CPU (CPU autocast is
    slower than fp32 for convolutions on most machines). ``amp=True`` forces it on (bf16 on CPU),
    ``amp=False`` off, or pass ``"bf16"``/``"fp16"``.
    """
    import torch

    if amp is False or amp == "off":
        return None
    if isinstance(amp, str) and amp not in ("auto", "on"):
        if amp not in ("bf16", "fp16"):
            raise InputError(f"invalid AMP mode {amp!r}: use auto, on, off, bf16 or fp16")
        return torch.bfloat16 if amp == "bf16" else torch.float16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if amp is True or amp == "on":
        return torch.bfloat16
    return None


def autocast(device: torch.device, dtype: torch.dtype | None):
    """Autocast context for ``dtype`` on ``device``; a no-op context when ``dtype`` is None."""
    import torch

    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def seed_everything(seed: int, *, deterministic: bool = True) -> np.random.Generator:
    """Seed Python, NumPy and torch; return a NumPy Generator for code that wants its own stream."""
    import torch

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    return np.random.default_rng(seed)
