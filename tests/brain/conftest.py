"""Shared fixtures: small synthetic cases written as BraTS case folders."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def brain_cases(tmp_path_factory) -> list[Path]:
    """Two small synthetic cases (seeds the demo weights never saw)."""
    from medseg.synthetic.brain import make_brain_case, write_brain_case

    root = tmp_path_factory.mktemp("brain_cases")
    return [write_brain_case(make_brain_case(seed), root, name=f"SYN_{seed}") for seed in (5001, 5002)]


@pytest.fixture(autouse=True)
def _one_thread():
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
