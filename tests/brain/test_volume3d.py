"""The 3-D region net and the ensemble: SegResNet equal to MONAI's, sliding windows, regions, loading."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from medseg_cli.main import cli

from medseg.brain.inference import load_brain_nets, mean_regions
from medseg.brain.models import REGION_ORDER, softmax_regions
from medseg.brain.segment import region_masks
from medseg.brain.spacing import training_zoom
from medseg.brain.volume3d import (
    Volume3DConfig,
    build_segresnet,
    predict_regions_volume,
    regions_to_labels,
    sliding_window,
)
from medseg.engine.checkpoint import CheckpointMeta, read_meta, save_weights
from medseg.engine.weights import demo_weights_path
from medseg.errors import ModelError

SHIPPED_SR = demo_weights_path("brain", "brain_segresnet_brats2018.safetensors")
SHIPPED_CASCADE = demo_weights_path("brain", "brain_input_cascade_brats2018.safetensors")


def test_plain_torch_segresnet_equals_monai_with_the_same_weights():
    from monai.networks.nets import SegResNet

    cfg = Volume3DConfig()
    ref = SegResNet(spatial_dims=3, init_filters=8, in_channels=4, out_channels=3).eval()
    ours = build_segresnet(config=cfg).eval()
    ours.load_state_dict(ref.state_dict())  # strict: the same parameter names
    x = torch.randn(1, 4, 24, 32, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(ours(x), ref(x), atol=1e-5)


@pytest.mark.parametrize("roi,overlap", [((16, 16, 16), 0.25), ((12, 20, 19), 0.1), ((8, 8, 8), 0.5)])
def test_sliding_window_equals_monai(roi, overlap):
    from monai.inferers import sliding_window_inference

    vol = np.random.default_rng(1).normal(size=(2, 25, 31, 19)).astype(np.float32)

    def net(x):  # position-dependent inside the window, so the blending is what is compared
        t = torch.as_tensor(x)
        return torch.nn.functional.avg_pool3d(t, 3, 1, 1) * 3 + t.sum(1, keepdim=True) ** 2

    ours = sliding_window(net, vol, roi, overlap)
    ref = sliding_window_inference(torch.from_numpy(vol[None]), roi, 1, net, overlap=overlap, mode="gaussian")
    assert np.allclose(ours, ref[0].numpy(), atol=1e-4)


def test_sliding_window_with_x_plus_one_returns_x_plus_one():
    vol = np.random.default_rng(2).normal(size=(3, 20, 17, 23)).astype(np.float32)
    out = sliding_window(lambda x: x + 1, vol, (8, 8, 8), 0.25)
    assert np.allclose(out, vol + 1, atol=1e-5)


def test_regions_nest_like_brats():
    labels = np.array([0, 1, 2, 3, 4], np.uint8)  # healthy, necrosis, edema, non-enhancing, enhancing
    onehot = np.eye(5, dtype=np.float32)[labels].T  # (5, n) class probabilities
    regions = softmax_regions(onehot)
    assert regions.shape == (3, 5) and REGION_ORDER == ("TC", "WT", "ET")
    back = regions_to_labels(regions)
    for name in ("WT", "TC", "ET"):
        assert np.array_equal(region_masks(back)[name], region_masks(labels)[name]), name
    # core or enhancing outside the whole tumour is not labelled: the regions nest
    assert regions_to_labels(np.array([[0.9], [0.2], [0.9]], np.float32)).tolist() == [0]
    assert regions_to_labels(np.array([[0.2], [0.9], [0.9]], np.float32)).tolist() == [4]


def test_volume_zoom_tolerance():
    assert training_zoom((1.0, 1.0, 1.0), (1.0, 1.0, 1.0)) is None
    assert training_zoom((1.1, 0.9, 1.0), (1.0, 1.0, 1.0)) is None
    assert training_zoom((5.0, 1.0, 1.0), (1.0, 1.0, 1.0)) == (5.0, 1.0, 1.0)
    assert training_zoom((5.0, 1.0, 1.0), None) is None


def _identity_regions(x):
    return torch.as_tensor(x)[:, :3] * 2.0  # logits from the first three channels


def test_region_probabilities_inside_the_brain_box_only():
    rng = np.random.default_rng(3)
    norm = np.zeros((4, 30, 40, 36), np.float32)
    mask = np.zeros((30, 40, 36), bool)
    mask[5:25, 8:30, 6:20] = True
    norm[:, mask] = rng.normal(size=(4, int(mask.sum())))
    cfg = Volume3DConfig(roi=16, overlap=0.25)
    probs = predict_regions_volume(_identity_regions, norm, mask, config=cfg)
    assert probs.shape == (3, *mask.shape) and probs.dtype == np.float32
    box = (slice(None), slice(5, 25), slice(8, 30), slice(6, 20))
    assert np.allclose(probs[box], 1 / (1 + np.exp(-2 * norm[:3][box])), atol=1e-5)
    outside = np.ones(probs.shape[1:], bool)
    outside[box[1:]] = False
    assert not probs[:, outside].any()
    # a case at 2 mm for a net trained at 1 mm: resampled there and back, still on the case's grid
    zoomed = predict_regions_volume(_identity_regions, norm, mask, config=cfg, zoom=(2.0, 2.0, 2.0))
    assert zoomed.shape == probs.shape and 0 <= zoomed.min() and zoomed.max() <= 1
    assert not zoomed[:, outside].any()
    assert np.abs(zoomed[box] - probs[box]).mean() < 0.1  # smooth enough to survive the round trip


def test_shipped_segresnet_records_its_data_split_and_terms():
    meta = read_meta(SHIPPED_SR)
    cascade = read_meta(SHIPPED_CASCADE)
    assert meta.model == "brain-segresnet" and meta.config["net"]["arch"] == "segresnet"
    assert meta.config["split"] == cascade.config["split"]  # the same 9 training / 3 validation cases
    assert meta.config["validation_cases"] == cascade.config["validation_cases"]
    assert meta.config["preprocess"] == cascade.config["preprocess"]  # so the two can be averaged
    assert meta.config["train_spacing_mm"] == [1.0, 1.0, 1.0]
    assert meta.metrics["train_cpu_seconds"] > 0
    for phrase in ("BraTS 2018", "Menze", "Bakas", "not for clinical use"):
        assert phrase in meta.training_data + meta.notes, phrase


def _tiny_segresnet(path, *, prep: dict, roi: int = 16):
    cfg = Volume3DConfig(roi=roi, overlap=0.25)
    torch.manual_seed(0)
    model = build_segresnet(config=cfg)
    meta = CheckpointMeta(
        model="brain-segresnet",
        task="brain-tumour-segmentation",
        config={"net": dataclasses.asdict(cfg), "preprocess": prep, "train_spacing_mm": [1.0, 1.0, 1.0]},
        training_data="synthetic test weights (random)",
    )
    return save_weights(path, model.state_dict(), meta)


def test_ensemble_refuses_nets_with_other_preprocessing(tmp_path):
    prep = dict(read_meta(SHIPPED_CASCADE).config["preprocess"], n4=False)
    other = _tiny_segresnet(tmp_path / "sr.safetensors", prep=prep)
    with pytest.raises(ModelError, match="other preprocessing"):
        load_brain_nets([SHIPPED_CASCADE, other], device="cpu")


def test_mean_regions_is_the_mean_of_each_net(tmp_path):
    prep = read_meta(SHIPPED_CASCADE).config["preprocess"]
    sr = _tiny_segresnet(tmp_path / "sr.safetensors", prep=prep)
    nets, _ = load_brain_nets([SHIPPED_CASCADE, sr], device="cpu")
    assert [n.is_volume for n in nets] == [False, True]
    rng = np.random.default_rng(4)
    mask = np.zeros((6, 40, 40), bool)
    mask[:, 8:32, 10:30] = True
    norm = np.where(mask, rng.normal(size=(4, 6, 40, 40)), 0).astype(np.float32)
    spacing = (1.0, 1.0, 1.0)
    each = [n.regions(norm, mask, spacing) for n in nets]
    assert np.allclose(mean_regions(nets, norm, mask, spacing), (each[0] + each[1]) / 2, atol=1e-6)


def test_brain_segment_averages_repeated_weights(brain_cases, tmp_path):
    """--weights twice: both nets run, the JSON names both; a tiny 3-D net on a small synthetic case."""
    twopath = demo_weights_path("brain", "brain_twopath_demo.safetensors")
    sr = _tiny_segresnet(tmp_path / "sr.safetensors", prep=read_meta(twopath).config["preprocess"])
    out = tmp_path / "seg.nii.gz"
    args = ["brain-segment", str(brain_cases[0]), "--out", str(out), "--weights", str(twopath)]
    res = CliRunner().invoke(cli, [*args, "--weights", str(sr), "--no-n4", "--device", "cpu", "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["summary"]["arch"] == "twopath+segresnet" and len(doc["summary"]["weights"]) == 2
    assert doc["summary"]["ensemble"] and out.is_file()
    assert doc["items"][0]["metrics"]["resampled_to_training_spacing"]  # the synthetic case is not at 1 mm


def test_tta_averages_a_slice_net_with_its_rotated_view_and_leaves_3d_nets_alone(tmp_path):
    """The rotated view is flipped back onto the case's grid before averaging (an asymmetric mask
    would expose a missing flip); the 3-D net runs once whatever ``tta`` says."""
    prep = read_meta(SHIPPED_CASCADE).config["preprocess"]
    sr = _tiny_segresnet(tmp_path / "sr.safetensors", prep=prep)
    (casc, vol), _ = load_brain_nets([SHIPPED_CASCADE, sr], device="cpu")
    rng = np.random.default_rng(5)
    mask = np.zeros((4, 40, 44), bool)
    mask[:, 6:30, 9:37] = True  # not centred: rotating moves it
    norm = np.where(mask, rng.normal(size=(4, 4, 40, 44)), 0).astype(np.float32)
    spacing = (1.0, 1.0, 1.0)
    plain = casc.regions(norm, mask, spacing)
    rot = casc.regions(
        np.ascontiguousarray(norm[..., ::-1, ::-1]), np.ascontiguousarray(mask[:, ::-1, ::-1]), spacing
    )
    tta = casc.regions(norm, mask, spacing, tta=True)
    assert np.allclose(tta, (plain + rot[..., ::-1, ::-1]) / 2, atol=1e-6)
    assert np.abs(rot[..., ::-1, ::-1] - plain).max() > 1e-6  # the views differ: the mean is a real check
    assert np.all(tta[:, ~mask] == 0)  # nothing outside the brain
    soft = casc.class_probabilities(norm, mask, spacing, tta=True)
    assert soft.shape == (5, *mask.shape) and np.allclose(soft[:, mask].sum(0), 1, atol=1e-5)
    assert np.array_equal(vol.regions(norm, mask, spacing, tta=True), vol.regions(norm, mask, spacing))
    with pytest.raises(ModelError, match="no per-class softmax"):
        vol.class_probabilities(norm, mask, spacing)


def test_brain_amp_auto_is_bf16_only_on_openvino_with_bf16_units(monkeypatch):
    from medseg.brain.inference import brain_amp
    from medseg.engine import openvino_runtime as ovr

    monkeypatch.setenv("MEDSEG_RUNTIME", "auto")
    for has in (True, False):
        monkeypatch.setattr(ovr, "cpu_has_bf16", lambda has=has: has)
        assert brain_amp("auto", "cpu") == ("bf16" if has else "auto")
    monkeypatch.setattr(ovr, "cpu_has_bf16", lambda: True)
    assert brain_amp("off", "cpu") == "off" and brain_amp("fp16", "cpu") == "fp16"  # as asked
    assert brain_amp("auto", "cuda") == "auto"
    monkeypatch.setenv("MEDSEG_RUNTIME", "torch")  # PyTorch's CPU autocast is slower than fp32
    assert brain_amp("auto", "cpu") == "auto"
