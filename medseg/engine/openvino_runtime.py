"""OpenVINO behind the engine Predictor: the same PyTorch module, faster on a CPU.

Why: most workstations have no GPU, and OpenVINO's CPU plugin (fused layers, one blocked layout
through the whole net, no per-layer reorders) runs our nets 1.4-2.2x faster than PyTorch on an
AVX-512 CPU and 2.3-3.5x on an AVX2 one (docs/benchmarks.md), at fp32 and equal outputs.

What this module owns, once:
- which runtime a predictor uses (:func:`resolve_runtime`: ``auto`` = OpenVINO on a CPU when the
  package is installed and the precision is fp32 or bf16, PyTorch on CUDA);
- converting a module *in memory* (``openvino.convert_model`` with an example input; batch, height
  and width dynamic), compiling it once for the CPU plugin in fp32 (``INFERENCE_PRECISION_HINT=f32``:
  on CPUs with bf16 units the plugin would otherwise silently compute in bf16), or in bf16 only when
  ``--amp bf16`` asks for it (the startup record says which precision the plugin took);
- a disk cache of converted models keyed by a hash of the weights (every parameter and buffer, the
  module tree and its plain attributes), the input rank and channels and the OpenVINO version, in
  ``$MEDSEG_CACHE_DIR`` or the user's cache folder; each entry is a folder published by one rename
  (concurrent runs are safe) with the SHA-256 of its files, so a damaged entry is rebuilt, not trusted;
  OpenVINO's compiled-model cache (``CACHE_DIR``) lives in the entry's ``compiled`` folder, so a later
  run imports the compiled net instead of compiling it (0.107 -> 0.037 s for the cells U-Net).
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import json
import logging
import os
import shutil
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from medseg.errors import InputError

if TYPE_CHECKING:
    import torch

log = logging.getLogger("medseg.engine")

RUNTIMES = ("auto", "torch", "openvino")
INSTALL_HINT = "pip install openvino (or pip install 'medseg[openvino]')"
CACHE_KEEP = 32  # newest converted models kept in the cache; older ones are removed
_ENV = "MEDSEG_RUNTIME"
_default: contextvars.ContextVar[str | None] = contextvars.ContextVar("medseg_runtime", default=None)


def default_runtime() -> str:
    """The runtime a predictor uses when none is given: ``--runtime`` / ``MEDSEG_RUNTIME`` / auto."""
    value = _default.get() or os.environ.get(_ENV) or "auto"
    if value not in RUNTIMES:
        raise InputError(f"unknown runtime {value!r} in {_ENV}: use one of {', '.join(RUNTIMES)}")
    return value


def set_default_runtime(runtime: str) -> None:
    """Process-wide default (the CLI's ``--runtime``); also exported so Ray workers and children agree."""
    if runtime not in RUNTIMES:
        raise InputError(f"unknown runtime {runtime!r}: use one of {', '.join(RUNTIMES)}")
    os.environ[_ENV] = runtime


@contextlib.contextmanager
def runtime_scope(runtime: str) -> Iterator[None]:
    """Default runtime inside a block (training validates through PyTorch: its weights change)."""
    token = _default.set(runtime)
    try:
        yield
    finally:
        _default.reset(token)


def openvino_version() -> str | None:
    """The installed OpenVINO version, or None when it cannot be imported."""
    try:
        import openvino
    except ImportError:
        return None
    return str(openvino.__version__).split("-")[0]


def resolve_runtime(runtime: str | None, *, device_type: str, amp_dtype: Any) -> tuple[str, str]:
    """``(runtime, reason)``: the runtime a predictor will use, and why in words.

    ``openvino`` asked for without the package is an :class:`InputError` naming the install (exit 2);
    ``auto`` without it falls back to PyTorch with one warning.
    """
    runtime = runtime or default_runtime()
    if runtime not in RUNTIMES:
        raise InputError(f"unknown runtime {runtime!r}: use one of {', '.join(RUNTIMES)}")
    if runtime == "torch":
        return "torch", "asked for"
    bf16 = amp_dtype is not None and "bfloat16" in str(amp_dtype)
    if runtime == "openvino":
        if openvino_version() is None:
            raise InputError(f"--runtime openvino needs the OpenVINO package: {INSTALL_HINT}")
        if device_type != "cpu":
            raise InputError(
                f"--runtime openvino runs on the CPU only, not on {device_type}: use --device cpu"
            )
        if amp_dtype is not None and not bf16:
            raise InputError("--runtime openvino runs in fp32 or bf16: use --amp off, auto or bf16 with it")
        return "openvino", "asked for"
    if device_type != "cpu":
        return "torch", f"PyTorch on {device_type}"
    if amp_dtype is not None and not (bf16 and openvino_version() is not None):
        why = "bf16 asked for without OpenVINO" if bf16 else "fp16 asked for (OpenVINO runs fp32 or bf16)"
        return "torch", f"{why} on the CPU"
    if bf16:
        return "openvino", "CPU, bf16 asked for"
    if openvino_version() is None:
        warnings.warn(
            f"OpenVINO is not installed: running on PyTorch (slower on a CPU; {INSTALL_HINT})",
            stacklevel=3,
        )
        return "torch", "OpenVINO not installed"
    return "openvino", "CPU"


def cache_dir() -> Path:
    """``$MEDSEG_CACHE_DIR/openvino``, else ``$XDG_CACHE_HOME/medseg/openvino``, else ``~/.cache/...``."""
    root = os.environ.get("MEDSEG_CACHE_DIR")
    if root:
        return Path(root).expanduser() / "openvino"
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg).expanduser() / "medseg" / "openvino"


def _plain_attrs(module: Any) -> list[tuple[str, str]]:
    """A module's own plain attributes (ints, floats, strings, tuples): forward may depend on them."""
    out = []
    for name, value in sorted(vars(module).items()):
        if name.startswith("_") or name == "training":
            continue
        if isinstance(value, int | float | str | bool | tuple | type(None)):
            out.append((name, repr(value)))
    return out


def model_key(module: torch.nn.Module, example_shape: tuple[int, ...]) -> str:
    """Hash of what decides the converted graph: tensors, module tree, attributes, input shape, version."""
    h = hashlib.sha256()
    h.update(f"{type(module).__module__}.{type(module).__qualname__}\n{module!r}\n".encode())
    # the example's whole shape: a module may take another code path at another size when traced
    h.update(f"rank={len(example_shape)} example={tuple(example_shape)} ov={openvino_version()}\n".encode())
    for name, sub in module.named_modules():
        h.update(f"{name}:{_plain_attrs(sub)}\n".encode())
    tensors = list(module.named_parameters()) + list(module.named_buffers())
    for name, tensor in tensors:
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}\n".encode())
        h.update(t.view(-1).view(dtype=_byte_dtype()).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:32]


def _byte_dtype() -> Any:
    import torch

    return torch.uint8


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class CacheEntry:
    """One converted model on disk: ``<key>/model.xml``, ``model.bin``, ``manifest.json`` (hashes)."""

    def __init__(self, key: str, root: Path | None = None) -> None:
        self.root = root or cache_dir()
        self.path = self.root / key

    def load(self, core: Any) -> Any | None:
        """The stored model, or None when absent; a damaged entry is removed (and rebuilt by the caller)."""
        manifest = self.path / "manifest.json"
        if not manifest.exists():
            return None
        try:
            expected = json.loads(manifest.read_text())["sha256"]
            for name, digest in expected.items():
                if _sha256(self.path / name) != digest:
                    raise ValueError(f"{name} does not match its recorded hash")
            model = core.read_model(str(self.path / "model.xml"))
        except Exception as exc:  # noqa: BLE001 - any damage means: rebuild
            log.warning("OpenVINO cache entry %s is damaged (%s): rebuilding it", self.path, exc)
            self.remove()
            return None
        with contextlib.suppress(OSError):
            os.utime(manifest)  # most recently used: kept by the pruning
        return model

    def store(self, ov_model: Any) -> None:
        """Write to a temporary folder, then publish it with one rename (another run may win: fine)."""
        import openvino

        try:
            self.root.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".{self.path.name}.", dir=self.root))
        except OSError as exc:
            log.warning("OpenVINO cache %s is not writable (%s): converting every run", self.root, exc)
            return
        try:
            # compress_to_fp16=False: the default would halve the weights' precision on disk
            openvino.save_model(ov_model, str(tmp / "model.xml"), compress_to_fp16=False)
            digests = {n: _sha256(tmp / n) for n in ("model.xml", "model.bin")}
            (tmp / "manifest.json").write_text(json.dumps({"sha256": digests, "ov": openvino_version()}))
            os.replace(tmp, self.path)  # an existing non-empty entry makes this fail: theirs is kept
            tmp = None
        except OSError:
            pass
        finally:
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)
        _prune(self.root)

    def remove(self) -> None:
        trash = self.path.with_name(f".{self.path.name}.{os.getpid()}.damaged")
        try:
            os.replace(self.path, trash)
        except OSError:
            return
        shutil.rmtree(trash, ignore_errors=True)


def _prune(root: Path, keep: int = CACHE_KEEP) -> None:
    """Keep the ``keep`` most recently used entries (training runs would otherwise fill the folder)."""
    with contextlib.suppress(OSError):
        entries = [p for p in root.iterdir() if not p.name.startswith(".") and p.is_dir()]
        entries.sort(
            key=lambda p: (p / "manifest.json").stat().st_mtime if (p / "manifest.json").exists() else 0
        )
        for old in entries[:-keep] if len(entries) > keep else []:
            CacheEntry(old.name, root).remove()


_core_lock = threading.Lock()
_core: Any = None


def cpu_has_bf16() -> bool:
    """Whether OpenVINO's CPU plugin computes bf16 natively here (AVX512-BF16 or AMX): False without OpenVINO."""
    if openvino_version() is None:
        return False
    try:
        return "BF16" in _ov_core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    except Exception:  # noqa: BLE001 - a plugin that cannot say: assume not
        return False


def _ov_core() -> Any:
    global _core
    with _core_lock:
        if _core is None:
            import openvino

            _core = openvino.Core()
        return _core


def _dynamic_shape(example_shape: tuple[int, ...]) -> Any:
    """Batch and every spatial dimension dynamic; channels fixed (the weights decide them)."""
    import openvino

    return openvino.PartialShape([-1, int(example_shape[1]), *([-1] * (len(example_shape) - 2))])


class OpenVINOModule:
    """A PyTorch module compiled by OpenVINO: called with a CPU tensor, returns CPU tensors.

    The output keeps the module's structure: a tensor, a tuple of tensors or (for a torchvision
    FPN backbone) an ordered dict of named feature maps. ``startup`` records the start-up cost.
    """

    def __init__(
        self,
        module: torch.nn.Module,
        example_shape: tuple[int, ...],
        *,
        threads: int | None = None,
        hint: str = "LATENCY",
        use_cache: bool = True,
        precision: str = "f32",
    ) -> None:
        import torch

        core = _ov_core()
        key = model_key(module, example_shape)
        entry = CacheEntry(key) if use_cache else None
        t0 = time.perf_counter()
        ov_model = entry.load(core) if entry is not None else None
        cached = ov_model is not None
        if ov_model is None:
            import openvino

            gen = torch.Generator().manual_seed(0)
            example = torch.randn(*example_shape, generator=gen)
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # tracer warnings about Python ints: shapes stay dynamic
                ov_model = openvino.convert_model(
                    module, example_input=example, input=[_dynamic_shape(example_shape)]
                )
            if entry is not None:
                entry.store(ov_model)
                # compile what later runs will read, so the compiled-model cache below serves them too
                ov_model = entry.load(core) or ov_model
        t1 = time.perf_counter()
        config = {
            "INFERENCE_PRECISION_HINT": precision,
            "PERFORMANCE_HINT": hint,
            "INFERENCE_NUM_THREADS": int(threads or torch.get_num_threads()),
        }
        if entry is not None and entry.path.is_dir():
            # OpenVINO's own compiled-model cache, inside the entry (pruned with it): a later run imports
            # the compiled net instead of compiling it again; a damaged blob is recompiled by OpenVINO
            config["CACHE_DIR"] = str(entry.path / "compiled")
        self.compiled = core.compile_model(ov_model, "CPU", config)
        # what the plugin computes in: bf16 asked for on a CPU without bf16 units runs in f32
        actual = str(self.compiled.get_property("INFERENCE_PRECISION_HINT"))
        self.startup = {
            "precision": "bf16" if "bf" in actual.lower() else "fp32",
            "cached": cached,
            "convert_s": round(t1 - t0, 3),
            "compile_s": round(time.perf_counter() - t1, 3),
            "key": key,
            "example": tuple(example_shape),
        }
        self.names = [_output_name(out, i) for i, out in enumerate(self.compiled.outputs)]
        self.dict_output = _returns_feature_dict(module)
        self._request = self.compiled.create_infer_request()
        self._lock = threading.Lock()

    def __call__(self, x: torch.Tensor) -> Any:
        import torch

        arr = np.ascontiguousarray(x.detach().to(torch.float32).cpu().numpy())
        with self._lock:  # one infer request: calls from several threads take turns
            self._request.infer({0: arr}, share_inputs=True)
            outs = [
                torch.from_numpy(self._request.get_output_tensor(i).data.copy())
                for i in range(len(self.names))
            ]
        if self.dict_output:
            from collections import OrderedDict

            return OrderedDict(zip(self.names, outs))
        return outs[0] if len(outs) == 1 else tuple(outs)


def _output_name(output: Any, index: int) -> str:
    names = sorted(output.get_names())
    return names[0] if names else str(index)


def _returns_feature_dict(module: Any) -> bool:
    """torchvision's FPN backbones return an ordered dict of named maps ('0'..'3', 'pool'); the
    converted model keeps those names as its output names, so the dict is rebuilt from them."""
    return hasattr(module, "fpn")


def openvino_part_module(model: torch.nn.Module, part: str, compiled: OpenVINOModule) -> torch.nn.Module:
    """A shallow copy of ``model`` whose submodule ``part`` is the compiled OpenVINO model.

    The caller's model is left as it is (its parameters are shared, not copied): only the copy's
    module table differs. Used for torchvision detectors, whose RPN and box heads (data-dependent
    proposals, NMS) stay on PyTorch while the backbone, where the time goes, runs on OpenVINO.
    """
    import copy

    from torch import nn

    class OpenVINOPart(nn.Module):
        def __init__(self, original: nn.Module) -> None:
            super().__init__()
            self.out_channels = getattr(original, "out_channels", None)
            self._run = compiled

        def forward(self, x: torch.Tensor) -> Any:
            return self._run(x)

    clone = copy.copy(model)
    clone._modules = dict(model._modules)
    clone._modules[part] = OpenVINOPart(model._modules[part])
    return clone
