"""Checkpoints that describe themselves, loaded without unpickling.

Inference weights are safetensors files whose string metadata holds one JSON document
(``medseg`` key): model name and version, task, training data description, normalisation and
the model's config dataclass, so ``medseg`` can rebuild the model and refuse the wrong one.
Training state (optimizer, scheduler, epoch) for ``--resume`` is a ``torch.save`` of plain
tensors and containers, read back with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import datetime as _dt
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from medseg import __version__
from medseg.errors import ModelError
from medseg.io.atomic import atomic_path

META_KEY = "medseg"


@dataclass
class CheckpointMeta:
    """What a weights file says about itself."""

    model: str  # architecture name, e.g. "ct-kernel-cnn"
    task: str  # what it does, e.g. "B50f->B30f"
    config: dict[str, Any]  # the model's config dataclass as a dict (enough to rebuild it)
    training_data: str = ""  # description of the data it saw (synthetic? seed? exams?)
    normalisation: dict[str, Any] = field(default_factory=dict)
    version: str = "1"  # version of these weights
    medseg_version: str = __version__
    created: str = field(
        default_factory=lambda: _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    )
    notes: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CheckpointMeta:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        missing = {"model", "task", "config"} - known.keys()
        if missing:
            raise ValueError(f"checkpoint metadata lacks {sorted(missing)}")
        return cls(**known)


def save_weights(path: str | Path, state_dict: dict, meta: CheckpointMeta) -> Path:
    """Write ``state_dict`` + ``meta`` as safetensors, atomically."""
    from safetensors.torch import save_file

    path = Path(path)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={META_KEY: json.dumps(asdict(meta))})
    return path


def read_meta(path: str | Path) -> CheckpointMeta:
    """Read only the metadata of a weights file (cheap: no tensors are loaded)."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise ModelError("weights file not found", path=path)
    try:
        with safe_open(str(path), framework="pt") as handle:
            raw = (handle.metadata() or {}).get(META_KEY)
    except Exception as exc:  # safetensors raises several types for non-safetensors files
        raise ModelError(f"not a safetensors weights file ({exc.__class__.__name__})", path=path) from None
    if raw is None:
        raise ModelError("weights file has no medseg metadata (not produced by medseg?)", path=path)
    try:
        return CheckpointMeta.from_dict(json.loads(raw))
    except (ValueError, TypeError) as exc:
        raise ModelError(f"unreadable medseg metadata: {exc}", path=path) from None


def read_meta_for(path: str | Path, model: str, refusal: str) -> CheckpointMeta:
    """:func:`read_meta`, refused (ModelError, exit 4) when the file holds another model's weights.

    ``refusal`` is the message, with ``{model}`` (quoted) and ``{task}`` filled in from the file.
    """
    meta = read_meta(path)
    if meta.model != model:
        raise ModelError(refusal.format(model=repr(meta.model), task=meta.task), path=path)
    return meta


def load_weights(path: str | Path, *, expect_model: str | None = None) -> tuple[dict, CheckpointMeta]:
    """Load tensors and metadata; with ``expect_model``, refuse weights of another architecture."""
    from safetensors.torch import load_file

    meta = read_meta(path)
    if expect_model is not None and meta.model != expect_model:
        raise ModelError(f"weights are for model {meta.model!r}, expected {expect_model!r}", path=path)
    return load_file(str(path), device="cpu"), meta


def load_state_into(model: Any, state: dict, *, path: str | Path, message: str) -> Any:
    """``model.load_state_dict(state)``, or one-line ModelError ``message.format(error=<first line>)``
    naming ``path`` when the weights do not fit the model their own metadata described."""
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise ModelError(message.format(error=str(exc).splitlines()[0]), path=path) from None
    return model


def save_training_state(path: str | Path, state: dict[str, Any]) -> Path:
    """Save resumable training state (tensors, numbers, strings, lists, dicts only)."""
    import torch

    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return path


def load_training_state(path: str | Path) -> dict[str, Any]:
    """Load training state with ``weights_only=True``: no arbitrary code from the file runs."""
    import pickle

    import torch

    path = Path(path)
    if not path.is_file():
        raise ModelError("training state not found", path=path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError) as exc:
        # torch's own text advises weights_only=False (arbitrary code): never pass that on
        raise ModelError(
            f"not a readable training state ({exc.__class__.__name__}: damaged, or not written by a medseg "
            "training run); start without --resume or restore the run folder",
            path=path,
        ) from None
