"""Where kernel-conversion weights are found, and loading them as a predictor.

Search order: an explicit ``--weights`` file; ``--models-dir`` folders; folders in the
``MEDSEG_CT_MODELS`` environment variable (os.pathsep-separated); the demo weights in the
source tree's ``sample_data/ct/models`` (trained on synthetic phantoms: not for clinical use).
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medseg.ct import KERNELS
from medseg.engine.checkpoint import CheckpointMeta, load_weights, read_meta, sample_data_path
from medseg.errors import InputError, ModelError

log = logging.getLogger("medseg.ct")

DEMO_MODELS = sample_data_path("ct", "models")


def canonical_kernel(name: str, *, strict: bool = True) -> str | None:
    """'b50f' -> 'B50f'; DICOM tags such as 'B50f\\3' or 'Br50f' map by their number."""
    text = str(name).strip()
    for k in KERNELS:
        if text.lower() == k.lower():
            return k
    match = re.match(r"^[A-Za-z]{1,2}(\d{2})", text)
    if match:
        for k in KERNELS:
            if k[1:3] == match.group(1):
                return k
    if strict:
        raise InputError(f"unknown kernel {name!r}; valid kernels: {', '.join(KERNELS)}")
    return None


@dataclass
class ModelEntry:
    path: Path
    source: str
    target: str
    meta: CheckpointMeta


def search_dirs(models_dirs: list[str | Path] | tuple = ()) -> list[Path]:
    dirs = [Path(d) for d in models_dirs]
    dirs += [Path(p) for p in os.environ.get("MEDSEG_CT_MODELS", "").split(os.pathsep) if p]
    dirs.append(DEMO_MODELS)
    return dirs


def list_models(models_dirs: list[str | Path] | tuple = ()) -> list[ModelEntry]:
    """Every readable kernel-conversion weights file in the search folders (first found wins)."""
    from medseg.ct.model import MODEL_NAME

    entries: dict[tuple[str, str], ModelEntry] = {}
    for folder in search_dirs(models_dirs):
        if not folder.is_dir():
            continue
        for file in sorted(folder.glob("*.safetensors")):
            try:
                meta = read_meta(file)
            except ModelError as exc:
                log.warning("ignoring %s", exc)
                continue
            if meta.model != MODEL_NAME:
                continue
            key = (meta.config.get("source_kernel", ""), meta.config.get("target_kernel", ""))
            entries.setdefault(key, ModelEntry(file, key[0], key[1], meta))
    return list(entries.values())


def find_model(source: str, target: str, *, weights: str | Path | None = None,
               models_dirs: list[str | Path] | tuple = ()) -> ModelEntry:
    from medseg.ct.model import MODEL_NAME

    source, target = canonical_kernel(source), canonical_kernel(target)
    if source == target:
        raise InputError(f"--from and --to are both {source}: nothing to convert")
    if weights is not None:
        meta = read_meta(weights)
        if meta.model != MODEL_NAME:
            raise ModelError(f"weights are for model {meta.model!r}, not a CT kernel converter", path=weights)
        have = (meta.config.get("source_kernel"), meta.config.get("target_kernel"))
        if have != (source, target):
            raise ModelError(f"weights convert {have[0]}->{have[1]}, not {source}->{target}", path=weights)
        return ModelEntry(Path(weights), source, target, meta)
    for entry in list_models(models_dirs):
        if (entry.source, entry.target) == (source, target):
            return entry
    available = ", ".join(f"{e.source}->{e.target}" for e in list_models(models_dirs)) or "none"
    raise ModelError(f"no weights for {source}->{target} (available: {available}); train with "
                     f"'medseg ct-train' or pass --weights / --models-dir")


class SlicePredictor:
    """Callable (B, H, W) float32 HU -> (B, H, W) float32 HU running the converter on ``device``."""

    def __init__(self, net, device, amp_dtype) -> None:
        import torch

        self.device, self.amp_dtype = device, amp_dtype
        self.net = net.to(device).eval()
        if device.type == "cuda":
            self.net = self.net.to(memory_format=torch.channels_last)
            torch.backends.cudnn.benchmark = True  # slices of one series share a shape: autotune once

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        import torch

        from medseg.engine.batching import to_device
        from medseg.engine.runtime import autocast

        x = to_device(batch[:, None].astype(np.float32, copy=False), self.device)
        if self.device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), autocast(self.device, self.amp_dtype):
            y = self.net(x)
        return y.float()[:, 0].cpu().numpy()


def load_predictor(entry: ModelEntry, *, device: str = "auto", amp: str | bool | None = "auto") -> SlicePredictor:
    from medseg.ct.model import MODEL_NAME, KernelNetConfig, build_kernel_net
    from medseg.engine.runtime import resolve_amp_dtype, select_device

    state, meta = load_weights(entry.path, expect_model=MODEL_NAME)
    net = build_kernel_net(config=KernelNetConfig.from_dict(meta.config))
    try:
        net.load_state_dict(state)
    except RuntimeError as exc:
        raise ModelError(f"weights do not match the model config ({str(exc).splitlines()[0]})", path=entry.path) from None
    dev = select_device(device)
    return SlicePredictor(net, dev, resolve_amp_dtype(dev, amp))
