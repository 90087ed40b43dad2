"""Importing the authors' Caffe models: files written here by a small protobuf writer."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from medseg.ct.caffe import (
    CAFFE_MODEL_NAME,
    STORED_VALUE_OFFSET,
    CaffeKernelNet,
    build_caffe_kernel_net,
    import_caffe,
    infer_input_offset,
    load_caffe_kernel_net,
    read_caffemodel,
    read_mean_binaryproto,
)
from medseg.engine.checkpoint import read_meta
from medseg.errors import ModelError, OutputExistsError

SIZE = 32
CHANNELS = 8

# --- a minimal protobuf writer (test helper) -----------------------------------------------------


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _key(field: int, wire: int) -> bytes:
    return _varint(field << 3 | wire)


def _vint(field: int, n: int) -> bytes:
    return _key(field, 0) + _varint(n)


def _len(field: int, payload: bytes) -> bytes:
    return _key(field, 2) + _varint(len(payload)) + payload


def _str(field: int, text: str) -> bytes:
    return _len(field, text.encode())


def _packed_floats(field: int, arr: np.ndarray) -> bytes:
    return _len(field, np.asarray(arr, "<f4").tobytes())


def _unpacked_floats(field: int, arr: np.ndarray) -> bytes:
    return b"".join(_key(field, 5) + struct.pack("<f", v) for v in np.asarray(arr, np.float32).ravel())


def blob_with_shape(arr: np.ndarray) -> bytes:
    """BlobProto: shape 7 (BlobShape, packed dim 1) + packed float data 5."""
    dims = _len(1, b"".join(_varint(d) for d in arr.shape))
    return _len(7, dims) + _packed_floats(5, arr)


def blob_legacy(arr: np.ndarray, dims4: tuple[int, int, int, int]) -> bytes:
    """BlobProto: legacy num/channels/height/width 1-4 + unpacked float data 5."""
    head = b"".join(_vint(field, d) for field, d in zip((1, 2, 3, 4), dims4))
    return head + _unpacked_floats(5, arr)


def layer_new(name: str, kind: str, blobs: tuple[bytes, ...] = (), extra: bytes = b"") -> bytes:
    return _len(100, _str(1, name) + _str(2, kind) + b"".join(_len(7, b) for b in blobs) + extra)


def layer_v1(name: str, kind: int, blobs: tuple[bytes, ...] = (), extra: bytes = b"") -> bytes:
    return _len(2, _str(4, name) + _vint(5, kind) + b"".join(_len(6, b) for b in blobs) + extra)


def conv_param(num_output: int, *, pad: int = 1, kernel: int = 3, stride: int = 1) -> bytes:
    return _vint(1, num_output) + _vint(3, pad) + _vint(4, kernel) + _vint(6, stride)


V1_CONVOLUTION, V1_DATA, V1_EUCLIDEAN_LOSS, V1_RELU, V1_POOLING = 4, 5, 7, 18, 17


def random_convs(seed: int, *, layers: int = 6, channels: int = CHANNELS) -> list:
    """[(weight (out, in, 3, 3), bias (out,))] of a 1 -> channels -> ... -> 1 chain."""
    rng = np.random.default_rng(seed)
    widths = [1] + [channels] * (layers - 1) + [1]
    return [
        (
            (rng.standard_normal((o, i, 3, 3)) / np.sqrt(9 * i)).astype(np.float32),
            (rng.standard_normal(o) * 0.1).astype(np.float32),
        )
        for i, o in zip(widths, widths[1:])
    ]


def caffemodel_new(convs, *, conv_extra=True) -> bytes:
    """New-style ``layer`` entries as Caffe's snapshot of a train_val net writes them."""
    parts = [_str(1, "test_CT_Kernel_50to30"), layer_new("data", "Data"), layer_new("label", "Data")]
    for k, (w, b) in enumerate(convs, 1):
        extra = _len(106, conv_param(w.shape[0])) if conv_extra else b""
        parts.append(layer_new(f"conv{k}", "Convolution", (blob_with_shape(w), blob_with_shape(b)), extra))
        if k < len(convs):
            parts.append(layer_new(f"relu{k}", "ReLU"))
    parts.append(layer_new("loss", "EuclideanLoss"))
    return b"".join(parts)


def caffemodel_v1(convs) -> bytes:
    """Legacy ``layers`` entries (enum types), legacy blob dims, unpacked floats, bias as (1, 1, 1, out)."""
    parts = [layer_v1("data", V1_DATA)]
    for k, (w, b) in enumerate(convs, 1):
        blobs = (blob_legacy(w, w.shape), blob_legacy(b, (1, 1, 1, b.size)))
        parts.append(layer_v1(f"conv{k}", V1_CONVOLUTION, blobs, _len(10, conv_param(w.shape[0]))))
        if k < len(convs):
            parts.append(layer_v1(f"relu{k}", V1_RELU))
    parts.append(layer_v1("loss", V1_EUCLIDEAN_LOSS))
    return b"".join(parts)


def mean_with_shape(mean: np.ndarray) -> bytes:
    return blob_with_shape(mean.reshape(1, 1, *mean.shape))


def mean_legacy(mean: np.ndarray) -> bytes:
    """As the authors' converter_to_lmdb.py writes it: num=1, channels=1, height, width + data."""
    return blob_legacy(mean, (1, 1, *mean.shape))


def reference(
    x: torch.Tensor, convs, mean: np.ndarray, *, offset: float = 0.0, scale: float = 1.0
) -> torch.Tensor:
    """out = x + net((x + offset) * scale - mean) / scale, straight from the raw arrays."""
    z = (x + offset) * scale - torch.from_numpy(mean)
    for k, (w, b) in enumerate(convs):
        z = F.conv2d(z, torch.from_numpy(w), torch.from_numpy(b), padding=1)
        if k < len(convs) - 1:
            z = F.relu(z)
    return x + z / scale


@pytest.fixture
def files(tmp_path):
    def write(name: str, data: bytes) -> Path:
        path = tmp_path / name
        path.write_bytes(data)
        return path

    return write


# --- reading -------------------------------------------------------------------------------------


def test_read_caffemodel_lists_layers_in_order_with_blob_shapes(files):
    convs = random_convs(1)
    for data in (caffemodel_new(convs), caffemodel_v1(convs)):
        layers = read_caffemodel(files("m.caffemodel", data))
        names = [name for name, _, _ in layers]
        assert names[0] == "data" and names[-1] == "loss"
        conv_layers = [(n, blobs) for n, kind, blobs in layers if kind == "Convolution"]
        assert [n for n, _ in conv_layers] == [f"conv{k}" for k in range(1, 7)]
        assert [kind for n, kind, _ in layers if n.startswith("relu")] == ["ReLU"] * 5
        for (_, blobs), (w, b) in zip(conv_layers, convs):
            assert blobs[0].shape == w.shape and blobs[0].dtype == np.float32
            np.testing.assert_array_equal(blobs[0], w)
            np.testing.assert_array_equal(blobs[1].reshape(-1), b)


def test_read_mean_binaryproto_shape_legacy_and_double(files):
    mean = np.arange(SIZE * 24, dtype=np.float32).reshape(SIZE, 24)
    for data in (mean_with_shape(mean), mean_legacy(mean)):
        got = read_mean_binaryproto(files("mean.binaryproto", data))
        assert got.shape == (1, SIZE, 24) and got.dtype == np.float32
        np.testing.assert_array_equal(got[0], mean)
    doubles = _len(7, _len(1, _varint(SIZE) + _varint(24))) + _len(8, mean.astype("<f8").tobytes())
    np.testing.assert_array_equal(read_mean_binaryproto(files("d.binaryproto", doubles))[0], mean)


# --- importing -----------------------------------------------------------------------------------


@pytest.mark.parametrize("style", ["layer", "layers"])
def test_imported_model_matches_the_caffe_network(files, tmp_path, style):
    convs = random_convs(2 if style == "layer" else 3)
    mean = np.random.default_rng(4).standard_normal((SIZE, SIZE)).astype(np.float32)
    new = style == "layer"
    model = files("snapshot_iter_119400.caffemodel", caffemodel_new(convs) if new else caffemodel_v1(convs))
    mean_bytes = mean_with_shape(mean) if new else mean_legacy(mean)
    mean_file = files("train_image_mean_50to30.binaryproto", mean_bytes)

    out = import_caffe(
        model, mean_file, source="b50f", target="B30f", out=tmp_path / "w.safetensors", input_offset=0.0
    )
    net = load_caffe_kernel_net(out)
    assert isinstance(net, CaffeKernelNet) and not net.training
    x = torch.from_numpy(np.random.default_rng(5).standard_normal((2, 1, SIZE, SIZE)).astype(np.float32))
    with torch.no_grad():
        got, want = net(x), reference(x, convs, mean)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert (got - x).abs().max() > 1e-2  # the residual is not trivially zero

    meta = read_meta(out)
    assert meta.model == CAFFE_MODEL_NAME and meta.task == "B50f->B30f"
    cfg = meta.config
    assert (cfg["source_kernel"], cfg["target_kernel"]) == ("B50f", "B30f")
    assert cfg["origin"] == "Lee et al. 2019 Caffe model snapshot_iter_119400.caffemodel"
    assert (cfg["layers"], cfg["channels"], cfg["mean_shape"]) == (6, CHANNELS, [SIZE, SIZE])
    assert (cfg["input_offset"], cfg["input_scale"]) == (0.0, 1.0)
    assert cfg["caffe_layers"] == [f"conv{k}" for k in range(1, 7)]
    assert len(cfg["caffemodel_sha256"]) == 64 and len(cfg["mean_sha256"]) == 64
    assert meta.normalisation["input_offset_rule"] == "given by the user"
    assert "train_image_mean_50to30.binaryproto" in meta.normalisation["mean_image"]

    from safetensors import safe_open

    with safe_open(str(out), framework="pt") as handle:
        stored_mean = handle.get_tensor("mean_image")
        assert json.loads(handle.metadata()["medseg"])["model"] == CAFFE_MODEL_NAME
    assert stored_mean.shape == (1, 1, SIZE, SIZE)
    np.testing.assert_array_equal(stored_mean[0, 0].numpy(), mean)


def test_bias_free_convolutions_and_no_stored_conv_params(files, tmp_path):
    convs = [(w, np.zeros_like(b)) for w, b in random_convs(6, layers=3)]
    parts = []
    for k, (w, _) in enumerate(convs, 1):
        parts.append(layer_new(f"conv{k}", "Convolution", (blob_with_shape(w),)))  # bias_term false
        if k < len(convs):
            parts.append(layer_new(f"relu{k}", "ReLU"))
    mean = np.full((SIZE, SIZE), -3.0, np.float32)
    out = import_caffe(
        files("m.caffemodel", b"".join(parts)),
        files("mean.binaryproto", mean_legacy(mean)),
        source="B30f",
        target="B50f",
        out=tmp_path / "w.safetensors",
    )
    net = load_caffe_kernel_net(out)
    x = torch.randn(1, 1, SIZE, SIZE)
    with torch.no_grad():
        torch.testing.assert_close(net(x), reference(x, convs, mean), rtol=1e-5, atol=1e-5)


def test_input_offset_inferred_from_the_mean_image(files, tmp_path):
    convs = random_convs(7, layers=3)
    model = files("m.caffemodel", caffemodel_new(convs))
    stored = np.random.default_rng(8).uniform(0, 1200, (SIZE, SIZE)).astype(np.float32)  # HU + 1024
    out = import_caffe(
        model,
        files("mean.binaryproto", mean_legacy(stored)),
        source="B50f",
        target="B30f",
        out=tmp_path / "a.safetensors",
    )
    meta = read_meta(out)
    assert meta.config["input_offset"] == STORED_VALUE_OFFSET == 1024.0
    assert "HU + 1024" in meta.normalisation["input_offset_rule"]
    net = load_caffe_kernel_net(out)
    x_hu = torch.from_numpy(np.random.default_rng(9).normal(-500, 300, (1, 1, SIZE, SIZE)).astype(np.float32))
    with torch.no_grad():
        got, want = net(x_hu), reference(x_hu, convs, stored, offset=1024.0)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=2e-3)

    assert infer_input_offset(stored - 1024.0)[0] == 0.0  # a mean in HU
    assert infer_input_offset(np.array([[65000.0, 40.0]]))[0] == 0.0  # negative HU wrapped by uint16
    custom = import_caffe(
        model,
        files("mean.binaryproto", mean_legacy(stored)),
        source="B50f",
        target="B30f",
        out=tmp_path / "b.safetensors",
        input_offset=24.0,
        input_scale=0.5,
    )
    net = load_caffe_kernel_net(custom)
    with torch.no_grad():
        torch.testing.assert_close(
            net(x_hu), reference(x_hu, convs, stored, offset=24.0, scale=0.5), rtol=1e-5, atol=2e-3
        )


def test_builder_and_refusals_of_the_module():
    net = build_caffe_kernel_net(layers=6, channels=4, mean_shape=(SIZE, SIZE))
    convs = [m for m in net.body if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 6 and all(c.kernel_size == (3, 3) and c.padding == (1, 1) for c in convs)
    assert convs[0].in_channels == 1 and convs[-1].out_channels == 1
    assert "mean_image" in net.state_dict()
    with pytest.raises(ModelError, match="32x32 mean image"):
        net(torch.zeros(1, 1, 16, SIZE))


# --- bad inputs ----------------------------------------------------------------------------------


def _assert_model_error(path: Path, call, match: str | None = None) -> None:
    with pytest.raises(ModelError, match=match) as info:
        call()
    text = str(info.value)
    assert path.name in text and "\n" not in text and info.value.exit_code == 4


def test_files_that_are_not_caffe_models_raise_model_error(files, tmp_path):
    good_mean = files("mean.binaryproto", mean_legacy(np.zeros((SIZE, SIZE), np.float32)))
    full = caffemodel_new(random_convs(10))
    bad = {
        "random.caffemodel": np.random.default_rng(11).bytes(4000),
        "deploy.prototxt": b'layer {\n  name: "conv1"\n  type: "Convolution"\n  bottom: "data"\n}\n',
        "truncated.caffemodel": full[: len(full) // 2],
        "noconv.caffemodel": layer_new("data", "Data") + layer_new("loss", "EuclideanLoss"),
        "empty.caffemodel": b"",
        "mean_as_model.caffemodel": mean_legacy(np.ones((4, 4), np.float32)),
    }
    for name, data in bad.items():
        path = files(name, data)
        _assert_model_error(
            path,
            lambda p=path: import_caffe(
                p, good_mean, source="B50f", target="B30f", out=tmp_path / "o.safetensors"
            ),
        )
        if name != "noconv.caffemodel":  # a readable Caffe model, just not the kernel-conversion CNN
            _assert_model_error(path, lambda p=path: read_caffemodel(p))
    noconv = tmp_path / "noconv.caffemodel"
    _assert_model_error(
        noconv,
        lambda: import_caffe(noconv, good_mean, source="B50f", target="B30f", out=tmp_path / "o.safetensors"),
        "no convolution layers",
    )
    _assert_model_error(
        tmp_path / "deploy.prototxt", lambda: read_caffemodel(tmp_path / "deploy.prototxt"), "text file"
    )
    _assert_model_error(
        tmp_path / "truncated.caffemodel",
        lambda: read_caffemodel(tmp_path / "truncated.caffemodel"),
        "truncated",
    )
    missing = tmp_path / "missing.caffemodel"
    _assert_model_error(missing, lambda: read_caffemodel(missing), "not found")
    assert not (tmp_path / "o.safetensors").exists()


def test_networks_that_are_not_the_conv_chain_raise_model_error(files, tmp_path):
    mean = files("mean.binaryproto", mean_legacy(np.zeros((SIZE, SIZE), np.float32)))
    rng = np.random.default_rng(12)
    convs = random_convs(12, layers=3)
    three_in = [(rng.standard_normal((CHANNELS, 3, 3, 3)).astype(np.float32), convs[0][1])] + convs[1:]
    two_out = convs[:-1] + [
        (rng.standard_normal((2, CHANNELS, 3, 3)).astype(np.float32), np.zeros(2, np.float32))
    ]
    five = [(rng.standard_normal((*w.shape[:2], 5, 5)).astype(np.float32), b) for w, b in convs]
    no_relu = b"".join(
        layer_new(f"conv{k}", "Convolution", (blob_with_shape(w), blob_with_shape(b)))
        for k, (w, b) in enumerate(convs, 1)
    )
    pad0 = b"".join(
        layer_new(
            f"c{k}",
            "Convolution",
            (blob_with_shape(w), blob_with_shape(b)),
            _len(106, conv_param(w.shape[0], pad=0)),
        )
        + layer_new(f"r{k}", "ReLU")
        for k, (w, b) in enumerate(convs, 1)
    )[: -len(layer_new("r3", "ReLU"))]
    pooling = caffemodel_v1(convs) + layer_v1("pool", V1_POOLING)
    cases = {
        "in3.caffemodel": (caffemodel_new(three_in), "takes 3 channels"),
        "out2.caffemodel": (caffemodel_new(two_out), "gives 2"),
        "k5.caffemodel": (caffemodel_new(five), r"\(out, in, 3, 3\)"),
        "norelu.caffemodel": (no_relu, "0 ReLU layers"),
        "pad0.caffemodel": (pad0, "pad"),
        "pool.caffemodel": (pooling, "Pooling"),
    }
    for name, (data, match) in cases.items():
        path = files(name, data)
        _assert_model_error(
            path,
            lambda p=path: import_caffe(
                p, mean, source="B50f", target="B30f", out=tmp_path / "o.safetensors"
            ),
            match,
        )


def test_bad_mean_files_raise_model_error(files, tmp_path):
    model = files("m.caffemodel", caffemodel_new(random_convs(13, layers=3)))
    values = np.zeros(SIZE * SIZE, np.float32)
    cases = {
        "short.binaryproto": blob_legacy(values[:-5], (1, 1, SIZE, SIZE)),  # size does not match its dims
        "rgb.binaryproto": blob_legacy(np.zeros(3 * 16, np.float32), (1, 3, 4, 4)),  # the net takes 1 channel
        "text.binaryproto": b"this is not a mean image\n",
        "model_as_mean.binaryproto": caffemodel_new(random_convs(14, layers=2)),
    }
    for name, data in cases.items():
        path = files(name, data)
        _assert_model_error(
            path,
            lambda p=path: import_caffe(
                model, p, source="B50f", target="B30f", out=tmp_path / "o.safetensors"
            ),
        )


def test_existing_output_and_wrong_weights_are_refused(files, tmp_path, tiny_weights):
    model = files("m.caffemodel", caffemodel_new(random_convs(15, layers=2)))
    mean = files("mean.binaryproto", mean_legacy(np.zeros((SIZE, SIZE), np.float32)))
    out = tmp_path / "w.safetensors"
    import_caffe(model, mean, source="B50f", target="B30f", out=out)
    with pytest.raises(OutputExistsError):
        import_caffe(model, mean, source="B50f", target="B30f", out=out)
    import_caffe(model, mean, source="B50f", target="B30f", out=out, overwrite=True)
    _assert_model_error(
        tiny_weights, lambda: load_caffe_kernel_net(tiny_weights), "expected 'ct-kernel-cnn-caffe'"
    )


# --- CLI: import, then convert with it ----------------------------------------------------------


def test_cli_import_then_convert_matches_the_caffe_network(files, tmp_path):
    import json

    import SimpleITK as sitk
    from click.testing import CliRunner
    from medseg_cli.main import cli

    convs = random_convs(5, layers=3, channels=4)
    mean = (np.random.default_rng(6).random((64, 64)) * 50 + 1000).astype(np.float32)
    model = files("m.caffemodel", caffemodel_v1(convs))
    mean_file = files("mean.binaryproto", mean_legacy(mean))
    models = tmp_path / "models"
    r = CliRunner().invoke(
        cli,
        [
            "ct-import-caffe",
            str(model),
            "--mean",
            str(mean_file),
            "--from",
            "b50f",
            "--to",
            "B30f",
            "--out",
            str(models / "lee.safetensors"),
            "--json",
        ],
    )
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["normalisation"]["input_offset"] == 1024.0
    volume = np.random.default_rng(7).normal(-300, 200, (2, 64, 64)).astype(np.float32)
    sitk.WriteImage(sitk.GetImageFromArray(volume), str(tmp_path / "in.nii.gz"))
    r = CliRunner().invoke(
        cli,
        [
            "ct-convert",
            str(tmp_path / "in.nii.gz"),
            "--from",
            "B50f",
            "--to",
            "B30f",
            "--out",
            str(tmp_path / "out.nii.gz"),
            "--models-dir",
            str(models),
            "--device",
            "cpu",
            "--amp",
            "on",
            "--json",
        ],
    )
    assert r.exit_code == 0, r.output
    out = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "out.nii.gz")))
    expected = reference(torch.from_numpy(volume)[:, None], convs, mean, offset=1024.0)[:, 0].numpy()
    # written as whole HU; fp32 although --amp on (bf16 would be off by several HU at these values)
    np.testing.assert_allclose(out, np.rint(expected), atol=1.01)
    assert np.mean(np.abs(out - expected)) < 0.3


def test_cli_not_a_caffe_model_is_one_line_exit_4(files, tmp_path):
    from click.testing import CliRunner
    from medseg_cli.main import cli

    bad = files("notes.caffemodel", b"this is not a protobuf at all \xff\xfe")
    mean_file = files("mean.binaryproto", mean_legacy(np.zeros((8, 8), np.float32)))
    r = CliRunner().invoke(
        cli,
        [
            "ct-import-caffe",
            str(bad),
            "--mean",
            str(mean_file),
            "--from",
            "B50f",
            "--to",
            "B30f",
            "--out",
            str(tmp_path / "w.safetensors"),
        ],
    )
    assert r.exit_code == 4
    assert len(r.stderr.strip().splitlines()) == 1 and "notes.caffemodel" in r.stderr
    assert not (tmp_path / "w.safetensors").exists()
