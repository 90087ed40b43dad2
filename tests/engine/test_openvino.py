"""OpenVINO behind the Predictor: every pipeline's net equal to PyTorch, the cache, the selection logic.

Real-data tolerances (Philips CT slab, a BraTS case, DSB images, the sample slide) are measured by
``benchmarks/*.py --runtimes``; here small inputs of another size than the conversion's check that
the converted graphs stay dynamic and numerically equal.
"""

from __future__ import annotations

import sys
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from medseg.engine import openvino_runtime as ovr
from medseg.engine.predictor import Predictor
from medseg.errors import InputError

HAS_OV = ovr.openvino_version() is not None
needs_ov = pytest.mark.skipif(not HAS_OV, reason="OpenVINO is not installed (pip install openvino)")


@pytest.fixture(scope="session")
def shared_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("ovcache")


@pytest.fixture(autouse=True)
def _cache_dir(shared_cache, monkeypatch):
    monkeypatch.setenv("MEDSEG_CACHE_DIR", str(shared_cache))


def small_cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(2, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 3, 1)).eval()


# --- selection logic (no OpenVINO needed) ---------------------------------------------------------


def test_auto_selects_openvino_on_cpu_torch_on_cuda_and_with_amp(monkeypatch):
    monkeypatch.setattr(ovr, "openvino_version", lambda: "2026.4.1")
    assert ovr.resolve_runtime("auto", device_type="cpu", amp_dtype=None)[0] == "openvino"
    assert ovr.resolve_runtime("auto", device_type="cuda", amp_dtype=None)[0] == "torch"
    assert ovr.resolve_runtime("auto", device_type="cuda", amp_dtype=torch.bfloat16)[0] == "torch"
    # bf16 on a CPU: OpenVINO (bf16 units where the CPU has them); fp16: PyTorch, OpenVINO refuses it
    assert ovr.resolve_runtime("auto", device_type="cpu", amp_dtype=torch.bfloat16)[0] == "openvino"
    assert ovr.resolve_runtime("openvino", device_type="cpu", amp_dtype=torch.bfloat16)[0] == "openvino"
    assert ovr.resolve_runtime("auto", device_type="cpu", amp_dtype=torch.float16)[0] == "torch"
    with pytest.raises(InputError, match="fp32 or bf16"):
        ovr.resolve_runtime("openvino", device_type="cpu", amp_dtype=torch.float16)
    assert ovr.resolve_runtime("torch", device_type="cpu", amp_dtype=torch.bfloat16)[0] == "torch"
    assert ovr.resolve_runtime("torch", device_type="cpu", amp_dtype=None)[0] == "torch"
    with pytest.raises(InputError, match="CPU only"):
        ovr.resolve_runtime("openvino", device_type="cuda", amp_dtype=None)


def test_default_comes_from_env_and_training_scope(monkeypatch):
    monkeypatch.setattr(ovr, "openvino_version", lambda: "2026.4.1")
    monkeypatch.setenv("MEDSEG_RUNTIME", "auto")
    assert ovr.resolve_runtime(None, device_type="cpu", amp_dtype=None)[0] == "openvino"
    with ovr.runtime_scope("torch"):  # what engine.trainer.fit does
        assert ovr.resolve_runtime(None, device_type="cpu", amp_dtype=None)[0] == "torch"
    monkeypatch.setenv("MEDSEG_RUNTIME", "nonsense")
    with pytest.raises(InputError, match="MEDSEG_RUNTIME"):
        ovr.default_runtime()


def test_without_openvino_auto_warns_once_and_openvino_names_the_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino -> ImportError
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        p = Predictor(small_cnn(), device="cpu", runtime="auto")
    assert p.runtime == "torch" and p.describe()["runtime"] == "torch"
    assert len(seen) == 1 and "pip install openvino" in str(seen[0].message)
    with pytest.raises(InputError, match=r"pip install openvino"):
        Predictor(small_cnn(), device="cpu", runtime="openvino")


def test_cli_runtime_openvino_without_the_package_is_one_line(monkeypatch, tmp_path):
    import SimpleITK as sitk
    from click.testing import CliRunner
    from medseg_cli.main import cli

    image = sitk.GetImageFromArray(np.full((2, 32, 32), -500, np.int16))
    image.SetSpacing((0.7, 0.7, 1.0))
    sitk.WriteImage(image, str(tmp_path / "in.nii.gz"))
    monkeypatch.setitem(sys.modules, "openvino", None)
    args = ["ct-convert", tmp_path / "in.nii.gz", "--from", "B50f", "--to", "B30f"]
    args += ["--out", tmp_path / "out.nii.gz", "--device", "cpu", "--runtime", "openvino", "-q"]
    r = CliRunner().invoke(cli, [str(a) for a in args])
    assert r.exit_code == 2, r.output
    errors = [ln for ln in r.output.splitlines() if ln.startswith("medseg: error:")]
    assert len(errors) == 1 and "pip install openvino" in errors[0], r.output
    assert "Traceback" not in r.output and not (tmp_path / "out.nii.gz").exists()


@pytest.mark.cuda
def test_gpu_keeps_pytorch_under_auto(monkeypatch):
    monkeypatch.setenv("MEDSEG_RUNTIME", "auto")
    p = Predictor(small_cnn(), device="cuda")
    assert p.runtime == "torch" and p.describe()["runtime"] == "torch"


# --- the cache ------------------------------------------------------------------------------------


@needs_ov
def test_cache_is_reused_and_a_damaged_entry_is_rebuilt(tmp_path, monkeypatch):
    import openvino

    monkeypatch.setenv("MEDSEG_CACHE_DIR", str(tmp_path))
    x = np.random.default_rng(0).normal(size=(3, 2, 21, 17)).astype(np.float32)
    ref = Predictor(small_cnn(), device="cpu", runtime="torch")(x)
    first = Predictor(small_cnn(), device="cpu", runtime="openvino", example_shape=(1, 2, 16, 16))
    assert first.startup["cached"] is False
    np.testing.assert_allclose(first(x), ref, atol=1e-5)
    entry = tmp_path / "openvino" / first.startup["key"]
    assert sorted(p.name for p in entry.iterdir()) == ["compiled", "manifest.json", "model.bin", "model.xml"]

    def no_conversion(*_a, **_k):
        raise AssertionError("converted again although the cache holds the model")

    with monkeypatch.context() as m:
        m.setattr(openvino, "convert_model", no_conversion)
        second = Predictor(small_cnn(), device="cpu", runtime="openvino", example_shape=(1, 2, 16, 16))
    assert second.startup["cached"] is True
    np.testing.assert_allclose(second(x), ref, atol=1e-5)

    data = bytearray((entry / "model.bin").read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte in the weights: still loadable, but wrong
    (entry / "model.bin").write_bytes(bytes(data))
    third = Predictor(small_cnn(), device="cpu", runtime="openvino", example_shape=(1, 2, 16, 16))
    assert third.startup["cached"] is False  # rebuilt, not trusted
    np.testing.assert_allclose(third(x), ref, atol=1e-5)
    (entry / "model.xml").write_text("<net")  # and a truncated graph
    assert (
        Predictor(small_cnn(), device="cpu", runtime="openvino", example_shape=(1, 2, 16, 16)).startup[
            "cached"
        ]
        is False
    )
    assert not [p for p in (tmp_path / "openvino").iterdir() if p.name.startswith(".")]  # no temporaries


@needs_ov
def test_bf16_runs_in_bf16_where_the_cpu_has_it_and_stays_close(tmp_path, monkeypatch):
    """--amp bf16 on a CPU: the plugin's own precision is reported (fp32 where there are no bf16 units)."""
    monkeypatch.setenv("MEDSEG_CACHE_DIR", str(tmp_path))
    x = np.random.default_rng(1).normal(size=(2, 2, 24, 20)).astype(np.float32)
    ref = Predictor(small_cnn(), device="cpu", runtime="openvino", example_shape=(1, 2, 16, 16))
    half = Predictor(small_cnn(), device="cpu", amp="bf16", runtime="auto", example_shape=(1, 2, 16, 16))
    assert half.runtime == "openvino" and ref.describe()["amp"] == "fp32"
    want = "bf16" if ovr.cpu_has_bf16() else "fp32"
    assert half.startup["precision"] == want and half.describe()["amp"] == want
    a, b = ref(x), half(x)
    scale = float(np.abs(a).max())
    assert np.abs(a - b).max() <= 0.02 * scale  # bf16 keeps ~3 significant digits
    if want == "bf16":
        assert not np.array_equal(a, b)  # it really computed in the other precision


@needs_ov
def test_compiled_net_is_cached_in_its_entry_and_a_damaged_blob_is_recompiled(tmp_path, monkeypatch):
    """OpenVINO's compiled-model cache lives in the entry's ``compiled`` folder: the first run writes one
    blob (compiled from the model as later runs read it), later runs import it (no second blob), and a
    damaged blob is compiled again with equal outputs."""
    monkeypatch.setenv("MEDSEG_CACHE_DIR", str(tmp_path))
    x = np.random.default_rng(1).normal(size=(2, 2, 19, 23)).astype(np.float32)
    ref = Predictor(small_cnn(), device="cpu", runtime="torch")(x)
    first = Predictor(small_cnn(), device="cpu", runtime="openvino", example_shape=(1, 2, 16, 16))
    blobs = sorted((tmp_path / "openvino" / first.startup["key"] / "compiled").glob("*.blob"))
    assert len(blobs) == 1
    second = Predictor(small_cnn(), device="cpu", runtime="openvino", example_shape=(1, 2, 16, 16))
    assert second.startup["cached"] is True
    assert sorted(blobs[0].parent.glob("*.blob")) == blobs  # imported, not compiled into a new blob
    np.testing.assert_allclose(second(x), ref, atol=1e-5)
    blobs[0].write_bytes(blobs[0].read_bytes()[: blobs[0].stat().st_size // 2])  # a run cut short
    third = Predictor(small_cnn(), device="cpu", runtime="openvino", example_shape=(1, 2, 16, 16))
    np.testing.assert_allclose(third(x), ref, atol=1e-5)
    blobs[0].write_bytes(b"not a compiled model")
    np.testing.assert_allclose(
        Predictor(small_cnn(), device="cpu", runtime="openvino", example_shape=(1, 2, 16, 16))(x),
        ref,
        atol=1e-5,
    )


@needs_ov
def test_other_weights_get_another_entry():
    a = ovr.model_key(small_cnn(0), (1, 2, 16, 16))
    assert a == ovr.model_key(small_cnn(0), (1, 2, 16, 16))
    assert a != ovr.model_key(small_cnn(1), (1, 2, 16, 16))
    assert a != ovr.model_key(small_cnn(0), (1, 2, 16, 16, 1))


@needs_ov
def test_conversion_failure_auto_falls_back_openvino_refuses():
    from medseg.errors import ModelError

    class Unsupported(nn.Module):
        def forward(self, x):
            raise RuntimeError("no tracing here")

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        p = Predictor(Unsupported(), device="cpu", runtime="auto", example_shape=(1, 1, 4, 4))
    assert p.runtime == "torch" and any("could not convert Unsupported" in str(w.message) for w in seen)
    with pytest.raises(ModelError, match="could not convert"):
        Predictor(Unsupported(), device="cpu", runtime="openvino", example_shape=(1, 1, 4, 4))


# --- every pipeline's network through both runtimes -----------------------------------------------


@needs_ov
def test_ct_net_equal_within_0_05_hu():
    from medseg.ct.models import find_model, load_net, slice_predictor

    net = load_net(find_model("B50f", "B30f"))
    x = np.random.default_rng(0).normal(-500, 400, size=(2, 1, 96, 80)).astype(np.float32)
    ref = slice_predictor(net, device="cpu", runtime="torch")(x)
    ov = slice_predictor(net, device="cpu", runtime="openvino")
    assert ov.describe()["runtime"] == "openvino" and ov.describe()["runtime_version"]
    out = ov(x)
    assert out.shape == ref.shape == (2, 96, 80)
    assert np.abs(out - ref).max() < 0.05


@needs_ov
@pytest.mark.parametrize("name", ["brain_twopath_demo", "brain_input_cascade_demo"])
def test_brain_nets_equal_labels(name):
    from medseg.brain.segment import load_brain_model, make_predictor
    from medseg.engine.weights import demo_weights_path

    model, _, _ = load_brain_model(demo_weights_path("brain", f"{name}.safetensors"))
    # 130 x 140: another size than the conversion's 160^2, output above the row-split threshold
    x = np.random.default_rng(0).normal(size=(1, 4, 130, 140)).astype(np.float32)
    ref = make_predictor(model, device="cpu", postprocess="float", runtime="torch")(x)
    out = make_predictor(model, device="cpu", postprocess="float", runtime="openvino")(x)
    assert out.shape == ref.shape
    assert np.abs(out - ref).max() < 1e-3
    assert (out.argmax(1) == ref.argmax(1)).mean() >= 0.999


@needs_ov
def test_cells_unet2015_equal_probabilities():
    from medseg.cells.model import load_model, valid_tile
    from medseg.cells.predict import make_predictor, predict_image
    from medseg.engine.weights import demo_weights_path

    model, config, _ = load_model(demo_weights_path("cells", "demo_unet2015.safetensors"))
    image = np.random.default_rng(0).normal(size=(150, 170)).astype(np.float32)
    ref = predict_image(make_predictor(model, device="cpu", runtime="torch"), config, image, tile=240)
    ov = make_predictor(model, device="cpu", runtime="openvino", config=config)
    assert ov.runtime == "openvino" and valid_tile(config, 240) not in ov.startup["example"]
    out = predict_image(ov, config, image, tile=240)
    assert np.abs(out - ref).max() < 1e-4


@needs_ov
@pytest.mark.parametrize("weights", ["c4d_light_demo", "c4d_maskrcnn_demo"])
def test_slide_detector_backbone_on_openvino_same_detections(weights):
    from medseg.engine.weights import demo_weights_path
    from medseg.pathology.detector import load_detector
    from medseg.synthetic.slides import SlideSpec, SyntheticSlide

    path = demo_weights_path("pathology", f"{weights}.safetensors")
    slide = SyntheticSlide(SlideSpec(width=2048, height=1024, seed=3))
    tiles = np.stack([slide.render(x0, 256, 384, 320) for x0 in (256, 1024)])
    ref = load_detector(path, device="cpu", runtime="torch").predict(tiles, min_score=0.3)
    det = load_detector(path, device="cpu", runtime="openvino")
    assert det.describe()["runtime"] == "openvino" and "backbone" in det.describe()["runtime_part"]
    out = det.predict(tiles, min_score=0.3)
    assert sum(len(b) for b, _, _ in ref) > 0
    for (b0, l0, s0), (b1, l1, s1) in zip(ref, out):
        assert len(b0) == len(b1)
        np.testing.assert_allclose(b1, b0, atol=0.05)
        np.testing.assert_array_equal(l1, l0)
        np.testing.assert_allclose(s1, s0, atol=1e-3)


@needs_ov
@pytest.mark.slow
@pytest.mark.parametrize("arch", ["basicunet", "unet_se", "fcn8s", "deeplabv3", "pspnet", "hed"])
def test_other_cells_architectures_convert_and_agree(arch):
    from medseg.cells.archs import ArchConfig
    from medseg.cells.model import CellModelConfig, build_model, model_margin, valid_tile

    config = (
        CellModelConfig(arch=arch, base_channels=8) if arch == "basicunet" else ArchConfig(arch=arch, width=8)
    )
    torch.manual_seed(0)
    model = build_model(config=config).eval()
    edge = valid_tile(config, 2 * model_margin(config) + 56)  # another size than the conversion's
    x = np.random.default_rng(1).normal(size=(1, 1, edge, edge)).astype(np.float32)
    from medseg.cells.predict import make_predictor

    ref = make_predictor(model, device="cpu", runtime="torch", postprocess="float")(x)
    ov = make_predictor(model, device="cpu", runtime="openvino", postprocess="float", config=config)
    assert ov.runtime == "openvino" and ov.startup["example"][-1] != edge
    np.testing.assert_allclose(ov(x), ref, atol=2e-3)


@needs_ov
@pytest.mark.slow
@pytest.mark.parametrize("arch", ["local-cascade", "mf-cascade"])
def test_other_brain_cascades_convert_and_agree(arch):
    from medseg.brain.models import BrainNetConfig, build_model
    from medseg.brain.segment import make_predictor

    torch.manual_seed(0)
    model = build_model(config=BrainNetConfig(arch=arch, local_channels=8, global_channels=16)).eval()
    x = np.random.default_rng(0).normal(size=(1, 4, 130, 140)).astype(np.float32)
    ref = make_predictor(model, device="cpu", postprocess="float", runtime="torch")(x)
    out = make_predictor(model, device="cpu", postprocess="float", runtime="openvino")(x)
    assert np.abs(out - ref).max() < 1e-3 and (out.argmax(1) == ref.argmax(1)).mean() >= 0.999


@needs_ov
def test_fpn_like_backbone_returns_its_named_maps():
    from collections import OrderedDict

    class TinyFPN(nn.Module):  # a torchvision FPN backbone's contract: .fpn, an ordered dict of maps
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Conv2d(3, 4, 3, padding=1)
            self.fpn = nn.Conv2d(4, 4, 1)
            self.out_channels = 4

        def forward(self, x):
            y = self.fpn(self.body(x))
            return OrderedDict([("0", y), ("pool", nn.functional.max_pool2d(y, 2))])

    torch.manual_seed(0)
    module = TinyFPN().eval()
    x = torch.rand(2, 3, 40, 36)
    with torch.no_grad():
        ref = module(x)
    out = ovr.OpenVINOModule(module, (1, 3, 32, 32))(x)
    assert isinstance(out, OrderedDict) and list(out) == ["0", "pool"]
    for k in ref:
        np.testing.assert_allclose(out[k].numpy(), ref[k].numpy(), atol=1e-5)
