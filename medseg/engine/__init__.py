"""The shared engine every pipeline runs through.

- :class:`~medseg.engine.predictor.Predictor`: a model on a device (AMP, channels_last, pinned
  memory, inference mode, post-processing) behind a NumPy batch -> outputs call.
- :func:`~medseg.engine.trainer.fit`: one training loop (best/last weights, resumable state,
  history, time budget) driven by a pipeline's :class:`~medseg.engine.trainer.TrainTask`.
- batching (``iter_batches``, ``prefetch``, ``map_batched``), overlap-tile inference
  (``tiling``), device/AMP/seeding (``runtime``), checkpoints, demo weights, progress bars.

Submodules import torch lazily where they can, so importing :mod:`medseg.engine` stays cheap.
"""

from __future__ import annotations

from medseg.engine.batching import iter_batches, map_batched, prefetch
from medseg.engine.progress import progress_bar
from medseg.engine.runtime import autocast, resolve_amp_dtype, seed_everything, select_device

__all__ = [
    "autocast",
    "iter_batches",
    "map_batched",
    "prefetch",
    "progress_bar",
    "resolve_amp_dtype",
    "seed_everything",
    "select_device",
]
