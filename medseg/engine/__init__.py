"""Shared runtime pieces: device/AMP selection, seeding, checkpoints, batching, progress.

Submodules import torch lazily at call time where they can, so importing
:mod:`medseg.engine` itself stays cheap.
"""

from __future__ import annotations

from medseg.engine.batching import iter_batches, prefetch
from medseg.engine.progress import progress
from medseg.engine.runtime import autocast, resolve_amp_dtype, seed_everything, select_device

__all__ = [
    "autocast",
    "iter_batches",
    "prefetch",
    "progress",
    "resolve_amp_dtype",
    "seed_everything",
    "select_device",
]
