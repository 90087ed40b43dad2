"""Shared test setup: the ``cuda`` marker skips without a GPU; everything else runs on CPU."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("MPLBACKEND", "Agg")
# pipeline tests run PyTorch (exact expected values, no conversions); tests/engine/test_openvino*.py
# choose OpenVINO explicitly, and a run with MEDSEG_RUNTIME=openvino exercises it everywhere
os.environ.setdefault("MEDSEG_RUNTIME", "torch")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:  # pragma: no cover - torch is a hard dependency
        has_cuda = False
    if has_cuda:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
