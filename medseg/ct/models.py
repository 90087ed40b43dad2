"""Where kernel-conversion weights are found, and loading them into the engine's Predictor.

Search order: an explicit ``--weights`` file; ``--models-dir`` folders; folders in the
``MEDSEG_CT_MODELS`` environment variable (os.pathsep-separated); the demo weights shipped in
the package (``medseg/weights/ct``, trained on synthetic phantoms: not for clinical use).
A ``ct-train`` run folder is a models folder too: its ``best.safetensors`` is listed (its
``last.safetensors`` only when there is no best).
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from medseg.ct import KERNELS
from medseg.engine.checkpoint import CheckpointMeta, load_weights, read_meta
from medseg.engine.weights import demo_weights_path, is_demo, resolve_weights
from medseg.errors import InputError, ModelError

if TYPE_CHECKING:
    import numpy as np
    import torch

    from medseg.engine.predictor import Predictor

log = logging.getLogger("medseg.ct")

DEMO_MODELS = demo_weights_path("ct")
DEMO_FOLDER = "ct"  # relative to the demo weights root, for resolve_weights
DEMO_NOTE = "demo weights: trained on synthetic phantoms only, not for clinical use"
# file names of a ct-train run folder (medseg.engine.trainer), best preferred over last
RUN_BEST, RUN_LAST = "best.safetensors", "last.safetensors"


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
        raise InputError(f"unknown kernel '{name}'; valid kernels: {', '.join(KERNELS)}")
    return None


def demo_file_name(source: str, target: str) -> str:
    return f"{source}_to_{target}.safetensors"


@dataclass
class ModelEntry:
    path: Path
    source: str
    target: str
    meta: CheckpointMeta

    @property
    def demo(self) -> bool:
        return is_demo(self.path)


def search_dirs(models_dirs: list[str | Path] | tuple = (), *, demo: bool = True) -> list[Path]:
    """--models-dir folders, then $MEDSEG_CT_MODELS folders, then (``demo``) the shipped demo folder."""
    dirs = [Path(d) for d in models_dirs]
    dirs += [Path(p) for p in os.environ.get("MEDSEG_CT_MODELS", "").split(os.pathsep) if p]
    if demo:
        dirs.append(DEMO_MODELS)
    return dirs


def _weights_files(folder: Path) -> list[Path]:
    files = sorted(folder.glob("*.safetensors"))
    if (folder / RUN_BEST).is_file():  # one training run is one model: its best weights
        files = [f for f in files if f.name != RUN_LAST]
    return files


def list_models(models_dirs: list[str | Path] | tuple = (), *, demo: bool = True) -> list[ModelEntry]:
    """Every readable kernel-conversion weights file in the search folders (first found per direction wins)."""
    entries: dict[tuple[str, str], ModelEntry] = {}
    for folder in search_dirs(models_dirs, demo=demo):
        if not folder.is_dir():
            continue
        for file in _weights_files(folder):
            try:
                meta = read_meta(file)
            except ModelError as exc:
                log.warning("ignoring %s", exc)
                continue
            if meta.model not in converter_models():
                continue
            key = (meta.config.get("source_kernel", ""), meta.config.get("target_kernel", ""))
            entries.setdefault(key, ModelEntry(file, key[0], key[1], meta))
    return list(entries.values())


def _check_entry(path: Path, source: str, target: str) -> ModelEntry:
    meta = read_meta(path)
    if meta.model not in converter_models():
        raise ModelError(f"weights are for model '{meta.model}', not a CT kernel converter", path=path)
    have = (meta.config.get("source_kernel"), meta.config.get("target_kernel"))
    if have != (source, target):
        raise ModelError(f"weights convert {have[0]}->{have[1]}, not {source}->{target}", path=path)
    return ModelEntry(path, source, target, meta)


def find_model(
    source: str, target: str, *, weights: str | Path | None = None, models_dirs: list[str | Path] | tuple = ()
) -> ModelEntry:
    """The weights for ``source -> target``: --weights, else the search folders, else the demo weights."""
    source, target = canonical_kernel(source), canonical_kernel(target)
    if source == target:
        raise InputError(f"--from and --to are both {source}: nothing to convert")
    if weights is not None:
        path, _demo = resolve_weights(weights, demo=f"{DEMO_FOLDER}/{demo_file_name(source, target)}")
        return _check_entry(path, source, target)
    for entry in list_models(models_dirs, demo=False):
        if (entry.source, entry.target) == (source, target):
            return entry
    if (DEMO_MODELS / demo_file_name(source, target)).is_file():
        path, _demo = resolve_weights(None, demo=f"{DEMO_FOLDER}/{demo_file_name(source, target)}")
        return _check_entry(path, source, target)
    available = ", ".join(f"{e.source}->{e.target}" for e in list_models(models_dirs)) or "none"
    raise ModelError(
        f"no weights for {source}->{target} (available: {available}); train with "
        f"'medseg ct-train' or pass --weights / --models-dir"
    )


def converter_models() -> tuple[str, ...]:
    """Model names a weights file may carry to be a kernel converter: medseg's own net and an
    imported Caffe model of Lee et al. (``medseg ct-import-caffe``)."""
    from medseg.ct.caffe import CAFFE_MODEL_NAME
    from medseg.ct.model import MODEL_NAME

    return (MODEL_NAME, CAFFE_MODEL_NAME)


def load_net(entry: ModelEntry) -> torch.nn.Module:
    """The converter of ``entry`` with its weights, on the CPU."""
    from medseg.ct.caffe import CAFFE_MODEL_NAME, load_caffe_kernel_net
    from medseg.ct.model import MODEL_NAME, KernelNetConfig, build_kernel_net

    if entry.meta.model == CAFFE_MODEL_NAME:
        return load_caffe_kernel_net(entry.path)
    state, meta = load_weights(entry.path, expect_model=MODEL_NAME)
    net = build_kernel_net(config=KernelNetConfig.from_dict(meta.config))
    try:
        net.load_state_dict(state)
    except RuntimeError as exc:
        raise ModelError(
            f"weights do not match the model config ({str(exc).splitlines()[0]})", path=entry.path
        ) from None
    return net


def _hu_slices(y: torch.Tensor) -> np.ndarray:
    """Model output (B, 1, H, W) -> float32 NumPy (B, H, W), without a copy on the CPU in fp32."""
    import torch

    return y[:, 0].to(torch.float32).cpu().numpy()


def slice_predictor(
    net: torch.nn.Module, *, device: str = "auto", amp: str | bool | None = "auto"
) -> Predictor:
    """The engine Predictor for a converter: (B, 1, H, W) float32 HU in -> (B, H, W) float32 HU out.

    channels_last on CPU and CUDA; on CUDA cuDNN autotunes once per slice shape (every slice of
    a series has the same shape), as an option of this predictor, not process-wide.
    """
    from medseg.engine.predictor import Predictor
    from medseg.engine.runtime import select_device

    dev = select_device(device)
    return Predictor(
        net,
        device=dev,
        amp=amp,
        channels_last=True,
        cudnn_benchmark=dev.type == "cuda",
        postprocess=_hu_slices,
    )


def load_predictor(entry: ModelEntry, *, device: str = "auto", amp: str | bool | None = "auto") -> Predictor:
    """Imported Caffe models work on raw CT numbers (no scaling): they always run in float32."""
    from medseg.ct.caffe import CAFFE_MODEL_NAME

    if entry.meta.model == CAFFE_MODEL_NAME:
        amp = "off"
    return slice_predictor(load_net(entry), device=device, amp=amp)


def models_text(doc: dict) -> str:
    """What ct-models prints for people."""
    rows = doc.get("models", [])
    if not rows:
        return "no models found (train with 'medseg ct-train' or pass --models-dir)"
    return "\n".join(
        f"{r['from']} -> {r['to']}  {r['path']}{'  (demo)' if r.get('demo') else ''}\n"
        f"    trained on: {r['training_data'] or 'not recorded'}"
        for r in rows
    )
