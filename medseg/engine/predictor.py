"""One inference predictor for every pipeline: a model on a device behind a NumPy-in/NumPy-out call.

Every pipeline (CT slices, brain slices, cell tiles, slide tiles) runs its network through
:class:`Predictor`, so device placement, mixed precision, ``channels_last``, pinned memory and
``inference_mode`` are decided once, here, and tested once. Engines (tiling, batching) take the
predictor as a plain callable ``batch -> outputs`` and never see torch.

Why ``channels_last`` on CPU too: oneDNN's NHWC convolutions are about 1.5x faster than NCHW for
the CT net on a 2-core CPU (0.88 vs 1.35 s per 512^2 slice); outputs match to float tolerance.

Why a second runtime: on a CPU, OpenVINO runs the same networks 1.4-3x faster than PyTorch
(``runtime="auto"`` picks it there; see :mod:`medseg.engine.openvino_runtime`). The predictor keeps
one call for both, so engines and pipelines do not know which one ran.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

log = logging.getLogger("medseg.engine")

POSTPROCESS = ("float", "softmax", "sigmoid", "argmax", "none")


def _apply_post(y: Any, post: str | Callable[[Any], Any]) -> Any:
    """Turn raw model output into what the caller wants (NumPy on the CPU unless ``none``)."""
    import torch

    if callable(post):
        return post(y)
    if post == "none":
        return y
    y = y.float()
    if post == "softmax":
        y = torch.softmax(y, dim=1)
    elif post == "sigmoid":
        y = torch.sigmoid(y)
    elif post == "argmax":
        return y.argmax(1).to(torch.uint8).cpu().numpy()
    return y.cpu().numpy()


class Predictor:
    """A model owned on one device: ``predictor(batch)`` -> post-processed outputs.

    Parameters (keyword-only):
      device: ``"auto" | "cpu" | "cuda" | "cuda:N"`` (or a resolved ``torch.device``).
      amp: ``"auto"`` (bf16/fp16 on CUDA, off on CPU), ``"on"``, ``"off"``, ``"bf16"``, ``"fp16"``.
      channels_last: NHWC memory format for 4-D inputs, on CPU and CUDA alike.
      cudnn_benchmark: let cuDNN autotune convolution algorithms *during this predictor's calls*
        (useful when every batch has the same shape); restored afterwards, never process-wide.
      prepare: optional function applied to the input tensor on the device before the model
        (e.g. uint8 NHWC tiles -> float NCHW in [0, 1], or a tensor -> list for detectors).
      postprocess: ``"float"`` (float32 NumPy), ``"softmax"``, ``"sigmoid"``, ``"argmax"``
        (uint8 NumPy class map), ``"none"`` (raw model output) or a callable on the raw output.
      runtime: ``"auto"`` (OpenVINO on a CPU in fp32 when installed, else PyTorch), ``"torch"``,
        ``"openvino"``; None: the process default (``--runtime``, ``MEDSEG_RUNTIME``, else auto).
      example_shape: an input shape to convert and compile OpenVINO at construction (so start-up
        cost, a failed conversion and its fallback happen before any work); else at the first call.
      openvino_part: name of the submodule OpenVINO runs (e.g. a detector's ``"backbone"``) when the
        whole model does not convert; the rest stays on PyTorch. Needs ``example_shape`` (its input).

    The model is moved, put in eval mode and (with ``channels_last``) converted *in place*, like
    ``nn.Module.to``: a trainer that validates through a predictor puts the model back in train mode.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        device: str | torch.device = "auto",
        amp: str | bool | None = "auto",
        channels_last: bool = True,
        cudnn_benchmark: bool = False,
        prepare: Callable[[torch.Tensor], Any] | None = None,
        postprocess: str | Callable[[Any], Any] = "float",
        runtime: str | None = None,
        example_shape: tuple[int, ...] | None = None,
        openvino_part: str | None = None,
    ) -> None:
        import torch

        from medseg.engine.openvino_runtime import resolve_runtime
        from medseg.engine.runtime import resolve_amp_dtype, select_device

        if not callable(postprocess) and postprocess not in POSTPROCESS:
            raise ValueError(f"postprocess must be one of {', '.join(POSTPROCESS)} or a function")
        self.device = device if isinstance(device, torch.device) else select_device(str(device))
        self.amp_dtype = resolve_amp_dtype(self.device, amp)
        self.channels_last = bool(channels_last)
        self.cudnn_benchmark = bool(cudnn_benchmark)
        self.prepare = prepare
        self.postprocess = postprocess
        self.model = model.to(self.device).eval()
        self.runtime, self.runtime_reason = resolve_runtime(
            runtime, device_type=self.device.type, amp_dtype=self.amp_dtype
        )
        self._asked_openvino = self.runtime == "openvino" and self.runtime_reason == "asked for"
        self._want_channels_last = bool(channels_last)
        self.openvino_part = openvino_part
        self.startup: dict[str, Any] = {}
        self._ov: Any = None
        if self.runtime == "openvino":
            self.channels_last = False  # OpenVINO takes plain NCHW arrays
            if example_shape is not None:
                self._compile(tuple(example_shape))
            elif openvino_part is not None:
                raise ValueError("openvino_part needs example_shape (the part's input shape)")
        if self.runtime == "torch":
            self._torch_layout()

    def _torch_layout(self) -> None:
        import torch

        self.channels_last = self._want_channels_last
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)

    def _compile(self, example_shape: tuple[int, ...]) -> None:
        """Convert (or load from the cache) and compile once; ``auto`` falls back to PyTorch on failure."""
        from medseg.engine.openvino_runtime import OpenVINOModule, openvino_part_module
        from medseg.errors import ModelError, one_line

        target = self.model if self.openvino_part is None else getattr(self.model, self.openvino_part)
        name = type(target).__name__
        try:
            precision = "bf16" if self.amp_dtype is not None else "f32"  # resolve_runtime: only bf16
            compiled = OpenVINOModule(target, example_shape, precision=precision)
        except Exception as exc:  # noqa: BLE001 - any conversion failure: say why, then PyTorch
            reason = one_line(exc)[:200]
            if self._asked_openvino:
                raise ModelError(f"OpenVINO could not convert {name}: {reason}") from exc
            import warnings

            warnings.warn(
                f"OpenVINO could not convert {name} ({reason}): running it on PyTorch", stacklevel=3
            )
            self.runtime, self.runtime_reason = "torch", f"{name} does not convert to OpenVINO"
            self._torch_layout()
            return
        self.startup = compiled.startup
        log.info(
            "OpenVINO %s: %s %.2f s, compiled in %.2f s",
            name,
            "loaded from the cache" if compiled.startup["cached"] else "converted",
            compiled.startup["convert_s"],
            compiled.startup["compile_s"],
        )
        self._ov = (
            compiled
            if self.openvino_part is None
            else openvino_part_module(self.model, self.openvino_part, compiled)
        )

    @property
    def amp_name(self) -> str:
        """'bf16', 'fp16' or 'fp32': what the report and the JSON say about precision."""
        return {None: "fp32"}.get(
            self.amp_dtype,
            str(self.amp_dtype).replace("torch.", "").replace("bfloat", "bf").replace("float", "fp"),
        )

    def to_device(
        self, batch: np.ndarray | torch.Tensor, *, dtype: torch.dtype | None = None
    ) -> torch.Tensor:
        """NumPy/tensor -> tensor on the device (pinned + non-blocking on CUDA; NHWC for 4-D)."""
        import torch

        tensor = torch.from_numpy(np.ascontiguousarray(batch)) if isinstance(batch, np.ndarray) else batch
        if dtype is not None:
            tensor = tensor.to(dtype)
        if self.device.type == "cuda":
            tensor = (tensor if tensor.is_pinned() else tensor.pin_memory()).to(
                self.device, non_blocking=True
            )
        else:
            tensor = tensor.to(self.device)
        if self.channels_last and tensor.ndim == 4 and tensor.is_floating_point():
            tensor = tensor.contiguous(memory_format=torch.channels_last)
        return tensor

    def forward(self, x: Any) -> Any:
        """Run the model on an already-prepared device input, under inference mode and AMP."""
        import torch

        from medseg.engine.runtime import autocast

        if self.runtime == "openvino":
            if self._ov is None:
                self._compile(tuple(x.shape))
            if self._ov is not None:
                with torch.inference_mode():
                    return self._ov(x)
        with torch.inference_mode(), autocast(self.device, self.amp_dtype), self._cudnn():
            return self.model(x)

    def __call__(self, batch: np.ndarray | torch.Tensor) -> Any:
        """Batch (N, ...) -> outputs; float32 input unless ``prepare`` takes the raw dtype."""
        import torch

        with torch.inference_mode():
            x = self.to_device(batch, dtype=None if self.prepare is not None else torch.float32)
            if self.prepare is not None:
                x = self.prepare(x)
            return _apply_post(self.forward(x), self.postprocess)

    def _cudnn(self):
        import contextlib

        import torch

        if self.device.type != "cuda" or not self.cudnn_benchmark:
            return contextlib.nullcontext()
        return torch.backends.cudnn.flags(enabled=True, benchmark=True, deterministic=False)

    def describe(self) -> dict[str, Any]:
        """Device, runtime and precision in words, for summaries and reports."""
        out = {
            "device": str(self.device),
            "runtime": self.runtime,
            "amp": self.amp_name,
            "channels_last": self.channels_last,
        }
        if self.runtime == "openvino":
            from medseg.engine.openvino_runtime import openvino_version

            out["runtime_version"] = openvino_version()
            if self.startup.get("precision"):
                out["amp"] = self.startup["precision"]  # what the plugin took (bf16 needs bf16 units)
            if self.openvino_part is not None:
                out["runtime_part"] = f"{self.openvino_part} on OpenVINO, the rest on PyTorch"
        return out
