"""Shared test setup: the ``cuda`` marker skips without a GPU; everything else runs on CPU."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

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


@pytest.fixture(scope="session")
def repo_script():
    """Import a script of the repository by its path (``scripts/x.py``): scripts are not a package."""
    loaded: dict = {}

    def load(rel: str):
        if rel not in loaded:
            spec = importlib.util.spec_from_file_location(Path(rel).stem, ROOT / rel)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            loaded[rel] = module
        return loaded[rel]

    return load
