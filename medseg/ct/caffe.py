"""The authors' own weights: import Lee et al.'s (2019) Caffe models as a medseg CT kernel converter.

Lee et al. published their trained networks (github.com/leegaeun/CT_Kernel_Conversion,
``weight/<dir>/snapshot_iter_119400.caffemodel`` with ``train_image_mean_<dir>.binaryproto``).
This module reads those files without Caffe or a compiled ``caffe.proto`` (a small protobuf
wire-format reader below), checks that the network is the paper's chain of 3x3 convolutions
with ReLU between them, and writes the weights as a medseg safetensors file that
:func:`load_caffe_kernel_net` turns back into a torch module (:class:`CaffeKernelNet`).

What the authors' network computes (their ``train_val.prototxt``/``deploy.prototxt``, NVCaffe
0.15 + DIGITS): the Data layer's ``transform_param { mean_file }`` subtracts the per-pixel
training mean image (no ``scale``); conv1..conv5 (3x3, pad 1, stride 1, 64 filters) are each
followed by an in-place ReLU; conv6 (3x3, 64 -> 1) has none; the EuclideanLoss compares conv6 to
the label, which ``converter_to_lmdb.py`` builds as ``target - input``. So the converted slice is

    out = in + net(in - mean_image)

with ``in``, ``mean_image`` and ``out`` all in the units of the images the authors trained on.

Input units (an assumption, documented and overridable). ``converter_to_lmdb.py`` feeds the
arrays of ``.mha`` volumes unchanged (plus an all-zero ``uint16`` "image_bias") and saves the
mean image with ``.astype('uint16')``. An unsigned mean implies non-negative training images,
i.e. stored CT numbers (HU + 1024 for Siemens' RescaleIntercept of -1024), not HU: the mean of
a chest CT in HU is negative (air) at the image border. (Not confirmed against the unit of the
``.mha`` files or the conversion cell of ``generator.ipynb``, which were not readable here.) The residual
``target - input`` does not depend on that offset; only ``in - mean_image`` does. medseg works
in HU, so :class:`CaffeKernelNet` takes HU and computes

    out_hu = x_hu + net((x_hu + input_offset) * input_scale - mean_image) / input_scale

which is exactly the authors' formula in the units of the mean image. ``input_scale`` is 1 (their
Data layer has no scale). ``input_offset`` is inferred from the mean image unless given
(:func:`infer_input_offset`): 1024 when the mean image is non-negative (stored CT numbers), 0 when
it has negative values or values above 32767 (negative HU wrapped by the uint16 cast: then the
network itself saw HU). Both values and the rule that chose them are saved in the weights'
metadata. The mean image fixes the matrix size (512x512 for the authors' models); other sizes
are refused with a :class:`~medseg.errors.ModelError`.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn

from medseg.errors import ModelError

CAFFE_MODEL_NAME = "ct-kernel-cnn-caffe"
STORED_VALUE_OFFSET = 1024.0  # stored CT number = HU + 1024 (RescaleIntercept -1024)

# V1LayerParameter.LayerType (legacy ``layers`` field) -> the type string of the new ``layer`` field.
V1_LAYER_TYPES = {
    0: "None",
    1: "Accuracy",
    2: "BNLL",
    3: "Concat",
    4: "Convolution",
    5: "Data",
    6: "Dropout",
    7: "EuclideanLoss",
    8: "Flatten",
    9: "HDF5Data",
    10: "HDF5Output",
    11: "Im2col",
    12: "ImageData",
    13: "InfogainLoss",
    14: "InnerProduct",
    15: "LRN",
    16: "MultinomialLogisticLoss",
    17: "Pooling",
    18: "ReLU",
    19: "Sigmoid",
    20: "Softmax",
    21: "SoftmaxWithLoss",
    22: "Split",
    23: "TanH",
    24: "WindowData",
    25: "Eltwise",
    26: "Power",
    27: "SigmoidCrossEntropyLoss",
    28: "HingeLoss",
    29: "MemoryData",
    30: "ArgMax",
    31: "Threshold",
    32: "DummyData",
    33: "Slice",
    34: "MVN",
    35: "AbsVal",
    36: "Silence",
    37: "ContrastiveLoss",
    38: "Exp",
    39: "Deconvolution",
}
# Layers without weights that do not change what the deployed network computes.
_PASSIVE = {"Input", "Dropout", "Split", "Silence", "Accuracy"}


# --- protobuf wire format ------------------------------------------------------------------------


class _ProtoError(Exception):
    """Malformed or unexpected protobuf data (turned into a ModelError naming the file)."""


def _varint(buf: bytes, pos: int, end: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= end:
            raise _ProtoError("truncated (varint runs past the end)")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift >= 70:
            raise _ProtoError("varint longer than 10 bytes")


def _fields(buf: bytes, start: int, end: int) -> dict[int, list[tuple[int, Any]]]:
    """One message's fields: number -> [(wire type, value)] in file order. Values: int (varint),
    bytes (fixed 32/64 bit) or a (start, end) span of ``buf`` (length-delimited)."""
    out: dict[int, list[tuple[int, Any]]] = {}
    pos = start
    while pos < end:
        key, pos = _varint(buf, pos, end)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise _ProtoError("field number 0")
        if wire == 0:
            value, pos = _varint(buf, pos, end)
        elif wire in (1, 5):
            size = 8 if wire == 1 else 4
            if pos + size > end:
                raise _ProtoError("truncated (fixed-size value runs past the end)")
            value, pos = buf[pos : pos + size], pos + size
        elif wire == 2:
            size, pos = _varint(buf, pos, end)
            if pos + size > end:
                raise _ProtoError(f"truncated (field {number} needs {size} bytes, {end - pos} left)")
            value, pos = (pos, pos + size), pos + size
        else:
            raise _ProtoError(f"wire type {wire} (field {number}) is not used by Caffe files")
        out.setdefault(number, []).append((wire, value))
    return out


def _expect(entries: list[tuple[int, Any]], wires: tuple[int, ...], what: str) -> None:
    for wire, _ in entries:
        if wire not in wires:
            raise _ProtoError(f"{what} has wire type {wire}")


def _int(msg: dict, number: int, what: str, default: int | None = None) -> int | None:
    entries = msg.get(number, [])
    _expect(entries, (0,), what)
    return entries[-1][1] if entries else default  # proto2: the last value of a scalar wins


def _ints(buf: bytes, msg: dict, number: int, what: str) -> list[int]:
    """A repeated integer field, packed or not."""
    values: list[int] = []
    for wire, value in msg.get(number, []):
        if wire == 0:
            values.append(value)
        elif wire == 2:
            pos, end = value
            while pos < end:
                item, pos = _varint(buf, pos, end)
                values.append(item)
        else:
            raise _ProtoError(f"{what} has wire type {wire}")
    return values


def _reals(buf: bytes, msg: dict, number: int, dtype: str, what: str) -> np.ndarray:
    """A repeated float (``<f4``, wire 5) or double (``<f8``, wire 1) field, packed or not."""
    size, fixed_wire = np.dtype(dtype).itemsize, (5 if dtype == "<f4" else 1)
    chunks = []
    for wire, value in msg.get(number, []):
        if wire == fixed_wire:
            chunks.append(value)
        elif wire == 2:
            if (value[1] - value[0]) % size:
                raise _ProtoError(f"{what}: packed length is not a multiple of {size}")
            chunks.append(buf[value[0] : value[1]])
        else:
            raise _ProtoError(f"{what} has wire type {wire}")
    return np.frombuffer(b"".join(chunks), dtype=dtype)


def _text(buf: bytes, msg: dict, number: int, what: str) -> str:
    entries = msg.get(number, [])
    _expect(entries, (2,), what)
    return bytes(buf[slice(*entries[-1][1])]).decode("utf-8", "replace") if entries else ""


def _sub(buf: bytes, msg: dict, number: int, what: str) -> list[dict]:
    entries = msg.get(number, [])
    _expect(entries, (2,), what)
    return [_fields(buf, *span) for _, span in entries]


# --- Caffe messages ------------------------------------------------------------------------------


def _blob(buf: bytes, msg: dict) -> np.ndarray:
    """BlobProto -> float32 array with its shape (``shape`` field, else legacy num/channels/h/w)."""
    shapes = _sub(buf, msg, 7, "BlobProto.shape")
    if shapes:
        dims = _ints(buf, shapes[-1], 1, "BlobShape.dim")
    elif any(n in msg for n in (1, 2, 3, 4)):
        dims = [_int(msg, n, "BlobProto legacy dims", 0) for n in (1, 2, 3, 4)]
    else:
        dims = []
    data = _reals(buf, msg, 5, "<f4", "BlobProto.data")
    if not data.size:
        data = _reals(buf, msg, 8, "<f8", "BlobProto.double_data")
    count = int(np.prod(dims)) if dims else data.size
    if data.size != count:
        raise _ProtoError(f"a blob of shape {tuple(dims)} holds {data.size} values, not {count}")
    return data.astype(np.float32).reshape(dims if dims else (count,))


class CaffeLayer(NamedTuple):
    name: str
    type: str
    blobs: list[np.ndarray]


@dataclass
class _LayerInfo:
    name: str
    type: str
    blobs: list[np.ndarray]
    conv: dict | None = None  # ConvolutionParameter, when the file stores it
    negative_slope: float = 0.0  # ReLUParameter


def _conv_param(buf: bytes, msg: dict) -> dict:
    what = "ConvolutionParameter"
    pad, kernel, stride = _ints(buf, msg, 3, what), _ints(buf, msg, 4, what), _ints(buf, msg, 6, what)
    pad_hw = [_int(msg, 9, what), _int(msg, 10, what)]
    stride_hw = [_int(msg, 13, what), _int(msg, 14, what)]
    return {
        "bias_term": bool(_int(msg, 2, what, 1)),
        "pad": pad_hw if pad_hw != [None, None] else (pad or [0]),  # Caffe's default pad is 0
        "kernel": kernel,
        "stride": stride_hw if stride_hw != [None, None] else (stride or [1]),
        "dilation": _ints(buf, msg, 18, what) or [1],
        "group": _int(msg, 5, what, 1),
    }


def _layer(buf: bytes, msg: dict, *, legacy: bool) -> _LayerInfo:
    if legacy:  # V1LayerParameter: name 4, type 5 (enum), blobs 6, convolution_param 10, relu_param 30
        kind = _int(msg, 5, "V1LayerParameter.type", 0)
        info = _LayerInfo(
            _text(buf, msg, 4, "V1LayerParameter.name"),
            V1_LAYER_TYPES.get(kind, f"V1Type{kind}"),
            [_blob(buf, b) for b in _sub(buf, msg, 6, "V1LayerParameter.blobs")],
        )
        conv, relu = _sub(buf, msg, 10, "convolution_param"), _sub(buf, msg, 30, "relu_param")
    else:  # LayerParameter: name 1, type 2, blobs 7, convolution_param 106, relu_param 123
        info = _LayerInfo(
            _text(buf, msg, 1, "LayerParameter.name"),
            _text(buf, msg, 2, "LayerParameter.type"),
            [_blob(buf, b) for b in _sub(buf, msg, 7, "LayerParameter.blobs")],
        )
        conv, relu = _sub(buf, msg, 106, "convolution_param"), _sub(buf, msg, 123, "relu_param")
    if conv:
        info.conv = _conv_param(buf, conv[-1])
    if relu:
        slope = _reals(buf, relu[-1], 1, "<f4", "ReLUParameter.negative_slope")
        info.negative_slope = float(slope[-1]) if slope.size else 0.0
    return info


def _read_bytes(path: Path, what: str) -> bytes:
    if not path.exists():
        raise ModelError(f"{what} not found", path=path)
    if not path.is_file():
        raise ModelError(f"{what} is not a file", path=path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ModelError(f"cannot read {what}: {exc.strerror or exc}", path=path) from None
    if not data:
        raise ModelError(f"{what} is empty", path=path)
    return data


def _looks_like_text(data: bytes) -> bool:
    head = data[:4096]
    return all(32 <= b < 127 or b in (9, 10, 13) for b in head)


def _read_net(path: Path) -> tuple[str, list[_LayerInfo]]:
    data = _read_bytes(path, "Caffe model file")
    try:
        net = _fields(data, 0, len(data))
        name = _text(data, net, 1, "NetParameter.name")
        layers = [_layer(data, m, legacy=False) for m in _sub(data, net, 100, "NetParameter.layer")]
        layers += [_layer(data, m, legacy=True) for m in _sub(data, net, 2, "NetParameter.layers")]
    except _ProtoError as exc:
        if _looks_like_text(data):
            raise ModelError(
                "is a text file (a .prototxt network definition?), not a binary .caffemodel with weights",
                path=path,
            ) from None
        raise ModelError(f"not a Caffe model: {exc}", path=path) from None
    if not layers:
        hint = " (a text file?)" if _looks_like_text(data) else ""
        raise ModelError(f"not a Caffe model: no layers found{hint}", path=path)
    if 100 in net and 2 in net:
        raise ModelError("not a Caffe model: mixes new-style 'layer' and legacy 'layers' fields", path=path)
    return name, layers


def read_caffemodel(path: str | Path) -> list[CaffeLayer]:
    """The layers of a ``.caffemodel`` (NetParameter) in file order: (name, type, [blobs]).

    Types are the strings of the new ``layer`` field ("Convolution", "ReLU", ...); legacy
    ``layers`` entries have their enum mapped to the same names. Blobs are float32 arrays with
    their stored shapes (convolution weights (out, in, kh, kw), biases (out,) or (1, 1, 1, out)).
    Raises :class:`ModelError` naming the file when it is not a readable Caffe model.
    """
    _, layers = _read_net(Path(path))
    return [CaffeLayer(layer.name, layer.type, layer.blobs) for layer in layers]


def read_mean_binaryproto(path: str | Path) -> np.ndarray:
    """A Caffe mean file (one BlobProto) as a float32 array (C, H, W).

    Accepts the ``shape`` field or the legacy num/channels/height/width (num must be 1), float or
    double data. Raises :class:`ModelError` naming the file otherwise.
    """
    path = Path(path)
    data = _read_bytes(path, "mean file")
    try:
        mean = _blob(data, _fields(data, 0, len(data)))
    except _ProtoError as exc:
        kind = "a text file" if _looks_like_text(data) else f"malformed ({exc})"
        raise ModelError(f"not a Caffe mean .binaryproto: {kind}", path=path) from None
    if mean.ndim == 4 and mean.shape[0] == 1:
        mean = mean[0]
    elif mean.ndim == 2:
        mean = mean[None]
    if mean.ndim != 3 or 0 in mean.shape:
        raise ModelError(
            f"mean image has shape {tuple(mean.shape)}; expected (1, C, H, W), (C, H, W) or (H, W)", path=path
        )
    if not np.isfinite(mean).all():
        raise ModelError("mean image has non-finite values", path=path)
    return np.ascontiguousarray(mean, dtype=np.float32)


def infer_input_offset(mean: np.ndarray) -> tuple[float, str]:
    """(offset added to HU to get the units of ``mean``, the reason). See the module docstring."""
    low, high = float(np.min(mean)), float(np.max(mean))
    if low < 0:
        return 0.0, f"mean image has negative values (min {low:.1f}): input in HU"
    if high > 32767:
        return 0.0, (
            f"mean image has values above 32767 (max {high:.0f}: negative HU wrapped by "
            "the authors' uint16 cast): input in HU"
        )
    return STORED_VALUE_OFFSET, (
        f"mean image is non-negative (min {low:.1f}, max {high:.1f}): input in stored CT numbers, HU + 1024"
    )


# --- the network ---------------------------------------------------------------------------------


@dataclass
class CaffeKernelNetConfig:
    """Everything needed to rebuild an imported converter; saved inside its weights file."""

    source_kernel: str = "B50f"
    target_kernel: str = "B30f"
    layers: int = 6  # convolutions
    channels: int = 64  # filters of every hidden convolution
    mean_shape: list[int] = field(default_factory=lambda: [512, 512])  # (H, W) of the mean image
    input_offset: float = 0.0  # added to HU before the network (1024: stored CT numbers)
    input_scale: float = 1.0
    origin: str = ""
    caffe_layers: list[str] = field(default_factory=list)  # names of the imported convolutions
    caffemodel_sha256: str = ""
    mean_sha256: str = ""

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> CaffeKernelNetConfig:
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


class CaffeKernelNet(nn.Module):
    """The authors' residual CNN, HU in and HU out: ``x + net((x + offset) * scale - mean) / scale``."""

    def __init__(
        self,
        *,
        layers: int = 6,
        channels: int = 64,
        mean_shape: tuple[int, int] = (512, 512),
        input_offset: float = 0.0,
        input_scale: float = 1.0,
    ) -> None:
        super().__init__()
        if layers < 2 or channels < 1:
            raise ValueError("need at least 2 convolutions and 1 channel")
        if not (np.isfinite(input_scale) and input_scale > 0 and np.isfinite(input_offset)):
            raise ValueError("input_scale must be finite and > 0, input_offset finite")
        body: list[nn.Module] = [nn.Conv2d(1, channels, 3, padding=1), nn.ReLU(inplace=True)]
        for _ in range(layers - 2):
            body += [nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(inplace=True)]
        body.append(nn.Conv2d(channels, 1, 3, padding=1))
        self.body = nn.Sequential(*body)
        self.register_buffer("mean_image", torch.zeros(1, 1, *mean_shape))
        self.input_offset, self.input_scale = float(input_offset), float(input_scale)

    def residual(self, x_hu: torch.Tensor) -> torch.Tensor:
        """The predicted (target - input), in HU."""
        if tuple(x_hu.shape[-2:]) != tuple(self.mean_image.shape[-2:]):
            h, w = self.mean_image.shape[-2:]
            raise ModelError(
                f"this imported Caffe model subtracts a {h}x{w} mean image; "
                f"the input slices are {x_hu.shape[-2]}x{x_hu.shape[-1]}"
            )
        z = (x_hu + self.input_offset) * self.input_scale - self.mean_image
        return self.body(z) / self.input_scale

    def forward(self, x_hu: torch.Tensor) -> torch.Tensor:
        return x_hu + self.residual(x_hu).to(x_hu.dtype)


def build_caffe_kernel_net(
    *,
    layers: int,
    channels: int,
    mean_shape: tuple[int, int] = (512, 512),
    input_offset: float = 0.0,
    input_scale: float = 1.0,
) -> CaffeKernelNet:
    return CaffeKernelNet(
        layers=layers,
        channels=channels,
        mean_shape=mean_shape,
        input_offset=input_offset,
        input_scale=input_scale,
    )


def _conv_chain(path: Path, layers: list[_LayerInfo]) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """The convolutions (name, weight, bias) if the net is conv(3x3) -> ReLU -> ... -> conv(3x3)."""

    def fail(problem: str) -> ModelError:
        return ModelError(f"not the kernel-conversion CNN: {problem}", path=path)

    convs: list[tuple[str, np.ndarray, np.ndarray]] = []
    relu_after_last = 0
    for layer in layers:
        if layer.type == "Convolution":
            if convs and relu_after_last != 1:
                raise fail(
                    f"{relu_after_last} ReLU layers between {convs[-1][0]!r} and {layer.name!r}, expected 1"
                )
            if not layer.blobs:
                raise fail(f"convolution {layer.name!r} has no weights")
            weight = layer.blobs[0]
            if weight.ndim != 4 or weight.shape[2:] != (3, 3):
                raise fail(
                    f"convolution {layer.name!r} has weights of shape {weight.shape}, "
                    "expected (out, in, 3, 3)"
                )
            if len(layer.blobs) > 2:
                raise fail(f"convolution {layer.name!r} has {len(layer.blobs)} blobs")
            if len(layer.blobs) == 2:
                bias = layer.blobs[1].reshape(-1)
            else:  # bias_term: false
                bias = np.zeros(weight.shape[0], np.float32)
            if bias.size != weight.shape[0]:
                raise fail(f"convolution {layer.name!r} has {bias.size} biases for {weight.shape[0]} filters")
            p = layer.conv
            if p is not None and (
                set(p["pad"]) != {1}
                or set(p["stride"]) != {1}
                or set(p["dilation"]) != {1}
                or p["group"] != 1
            ):
                raise fail(
                    f"convolution {layer.name!r} has pad {p['pad']}, stride {p['stride']}, "
                    f"dilation {p['dilation']}, group {p['group']}; "
                    "expected pad 1, stride 1, dilation 1, group 1"
                )
            convs.append((layer.name, weight, bias))
            relu_after_last = 0
        elif layer.type == "ReLU":
            if not convs:
                raise fail(f"ReLU {layer.name!r} before the first convolution")
            if layer.negative_slope != 0.0:
                raise fail(f"ReLU {layer.name!r} is leaky (negative_slope {layer.negative_slope})")
            relu_after_last += 1
        elif layer.blobs:
            raise fail(
                f"layer {layer.name!r} of type {layer.type} has weights; "
                "only 3x3 convolutions and ReLU can be imported"
            )
        elif not (layer.type in _PASSIVE or layer.type.endswith(("Data", "Loss"))):
            raise fail(f"unsupported layer {layer.name!r} of type {layer.type}")
    if not convs:
        raise fail("no convolution layers")
    if relu_after_last:
        raise fail(f"ReLU after the last convolution {convs[-1][0]!r}")
    if len(convs) < 2:
        raise fail("only one convolution")
    if convs[0][1].shape[1] != 1 or convs[-1][1].shape[0] != 1:
        raise fail(
            f"first convolution takes {convs[0][1].shape[1]} channels and the last gives "
            f"{convs[-1][1].shape[0]}; expected 1 and 1"
        )
    channels = convs[0][1].shape[0]
    for (name_a, w_a, _), (name_b, w_b, _) in zip(convs, convs[1:]):
        if w_b.shape[1] != w_a.shape[0]:
            raise fail(f"{name_a!r} gives {w_a.shape[0]} channels but {name_b!r} takes {w_b.shape[1]}")
    if any(w.shape[0] != channels for _, w, _ in convs[:-1]):
        raise fail("hidden convolutions differ in width")
    if not all(np.isfinite(w).all() and np.isfinite(b).all() for _, w, b in convs):
        raise fail("non-finite weights")
    return convs


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def import_caffe(
    model_path: str | Path,
    mean_path: str | Path,
    *,
    source: str,
    target: str,
    out: str | Path,
    input_offset: float | None = None,
    input_scale: float = 1.0,
    overwrite: bool = False,
) -> Path:
    """Convert the authors' ``.caffemodel`` + mean ``.binaryproto`` into medseg weights at ``out``.

    ``input_offset=None`` infers the units from the mean image (:func:`infer_input_offset`).
    Raises :class:`ModelError` (exit 4) for files that are not the kernel-conversion CNN or a
    mean image that does not fit it, :class:`~medseg.errors.InputError` for unknown kernels and
    :class:`~medseg.errors.OutputExistsError` when ``out`` exists and not ``overwrite``.
    """
    from medseg.ct.models import canonical_kernel
    from medseg.engine.checkpoint import CheckpointMeta, save_weights
    from medseg.errors import InputError
    from medseg.io.atomic import check_apart, check_output

    model_path, mean_path, out = Path(model_path), Path(mean_path), Path(out)
    check_apart(out, [model_path, mean_path], what="the imported weights")
    source, target = canonical_kernel(source), canonical_kernel(target)
    if source == target:
        raise InputError(f"--from and --to are both {source}: nothing to convert")
    if not (np.isfinite(input_scale) and input_scale > 0):
        raise InputError(f"input scale must be > 0, not {input_scale}")
    check_output(out, overwrite=overwrite)
    _, layers = _read_net(model_path)
    convs = _conv_chain(model_path, layers)
    mean = read_mean_binaryproto(mean_path)
    if mean.shape[0] != convs[0][1].shape[1]:
        raise ModelError(
            f"mean image has {mean.shape[0]} channels; the network takes {convs[0][1].shape[1]}",
            path=mean_path,
        )
    if input_offset is None:
        input_offset, offset_rule = infer_input_offset(mean)
    else:
        offset_rule = "given by the user"
    if not np.isfinite(input_offset):
        raise InputError(f"input offset must be finite, not {input_offset}")

    channels = int(convs[0][1].shape[0])
    cfg = CaffeKernelNetConfig(
        source_kernel=source,
        target_kernel=target,
        layers=len(convs),
        channels=channels,
        mean_shape=[int(mean.shape[1]), int(mean.shape[2])],
        input_offset=float(input_offset),
        input_scale=float(input_scale),
        origin=f"Lee et al. 2019 Caffe model {model_path.name}",
        caffe_layers=[name for name, _, _ in convs],
        caffemodel_sha256=_sha256(model_path),
        mean_sha256=_sha256(mean_path),
    )
    net = build_caffe_kernel_net(
        layers=cfg.layers,
        channels=channels,
        mean_shape=tuple(cfg.mean_shape),
        input_offset=cfg.input_offset,
        input_scale=cfg.input_scale,
    )
    convs_torch = [m for m in net.body if isinstance(m, nn.Conv2d)]
    with torch.no_grad():
        for module, (_, weight, bias) in zip(convs_torch, convs):
            module.weight.copy_(torch.from_numpy(weight))
            module.bias.copy_(torch.from_numpy(bias))
        net.mean_image.copy_(torch.from_numpy(mean)[None])
    meta = CheckpointMeta(
        model=CAFFE_MODEL_NAME,
        task=f"{source}->{target}",
        config=cfg.to_dict(),
        training_data=(
            "the authors' training data (Lee et al., Korean J Radiol 2019; chest CT reconstructed "
            "with B10f/B30f/B50f/B70f); weights imported unchanged, not trained by medseg"
        ),
        normalisation={
            "formula": (
                "out = x + net((x + input_offset) * input_scale - mean_image) / input_scale (x, out in HU)"
            ),
            "input_offset": cfg.input_offset,
            "input_scale": cfg.input_scale,
            "input_offset_rule": offset_rule,
            "mean_image": f"per-pixel, tensor 'mean_image' (1, 1, {cfg.mean_shape[0]}, {cfg.mean_shape[1]}) "
            f"from {mean_path.name}",
        },
        notes=(
            f"imported from {model_path.name} + {mean_path.name} "
            f"({len(convs)} convolutions, {channels} channels)"
        ),
    )
    return save_weights(out, net.state_dict(), meta)


def load_caffe_kernel_net(path: str | Path) -> CaffeKernelNet:
    """Rebuild an imported converter (in eval mode) from its safetensors weights; ModelError otherwise."""
    from medseg.engine.checkpoint import load_weights

    state, meta = load_weights(path, expect_model=CAFFE_MODEL_NAME)
    try:
        cfg = CaffeKernelNetConfig.from_dict(meta.config)
        net = build_caffe_kernel_net(
            layers=int(cfg.layers),
            channels=int(cfg.channels),
            mean_shape=(int(cfg.mean_shape[0]), int(cfg.mean_shape[1])),
            input_offset=float(cfg.input_offset),
            input_scale=float(cfg.input_scale),
        )
        net.load_state_dict(state)
    except (TypeError, ValueError, IndexError, RuntimeError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
        raise ModelError(f"weights do not match their config ({first})", path=path) from None
    return net.eval()


__all__ = [
    "CAFFE_MODEL_NAME",
    "CaffeKernelNet",
    "CaffeKernelNetConfig",
    "CaffeLayer",
    "build_caffe_kernel_net",
    "import_caffe",
    "infer_input_offset",
    "load_caffe_kernel_net",
    "read_caffemodel",
    "read_mean_binaryproto",
]
