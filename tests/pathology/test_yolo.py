"""YOLOv3 (medseg.pathology.yolo): k-means anchors, decoding back to tile pixels, slide-train
storing the anchors in the weights, and the backbone on OpenVINO."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from medseg_cli.main import cli

from medseg.pathology.detector import Detector, DetectorConfig, build_detector, yolov3_config
from medseg.pathology.yolo import (
    NUM_ANCHORS,
    STRIDES,
    anchors_from_records,
    default_anchors,
    kmeans_anchors,
    wh_iou,
)


def test_kmeans_recovers_known_box_clusters():
    rng = np.random.default_rng(1)
    truth = np.array([[20.0, 40.0], [60.0, 30.0], [100.0, 100.0]])
    wh = np.concatenate([c * rng.uniform(0.93, 1.07, (50, 2)) for c in truth])
    got = np.array(kmeans_anchors(wh, 3))
    assert got.shape == (3, 2)
    assert (np.diff(got.prod(1)) > 0).all()  # sorted by area
    assert np.abs(got / truth - 1).max() < 0.05, got
    assert np.diag(wh_iou(got, truth)).min() > 0.9
    with pytest.raises(ValueError):
        kmeans_anchors(wh[:2], 3)


def test_anchors_from_records_and_defaults():
    recs = [{"boxes": [[0, 0, 100 + i, 120 - i] for i in range(12)]}]
    anchors = anchors_from_records(recs, 0.5)
    assert len(anchors) == NUM_ANCHORS and all(45 <= w <= 56 and 50 <= h <= 60 for w, h in anchors)
    assert anchors_from_records([{"boxes": [[0, 0, 10, 10]]}], 0.5) == ()  # too few boxes
    cfg = DetectorConfig(arch="yolov3")
    default = default_anchors(cfg)
    areas = np.prod(default, 1)
    assert len(default) == NUM_ANCHORS and (np.diff(areas) > -1).all()  # by area (ties: one size)
    assert np.allclose(np.sqrt(areas), np.repeat(cfg.anchor_sizes, 3), rtol=1e-3)
    assert default_anchors(DetectorConfig(arch="yolov3", anchors=anchors)) == anchors
    # the anchors survive the weights' JSON metadata (lists) as tuples
    assert DetectorConfig.from_dict(json.loads(json.dumps({"anchors": anchors}))).anchors == anchors


def test_decoded_boxes_come_back_in_tile_pixels():
    """Heads that fire only for the first stride-32 anchor with zero offsets: every detection is that
    anchor, centred on its cell, and scaled from model pixels (input_scale 0.5) to tile pixels."""
    import torch

    cfg = yolov3_config(
        anchors=tuple((10.0 * (i + 1), 12.0 * (i + 1)) for i in range(NUM_ANCHORS)), detections_per_img=1000
    )
    model = build_detector(config=cfg).eval()
    per = 5 + 2
    with torch.no_grad():
        for head in model.heads:
            head.weight.zero_()
            head.bias.fill_(-20.0)
        bias = model.heads[2].bias.view(3, per)
        bias[0, :4] = 0.0
        bias[0, 4] = 10.0  # objectness
        bias[0, 5] = 10.0  # class 1 (C4d+)
        out = model([torch.rand(3, 512, 384)])[0]
    assert set(out) == {"boxes", "labels", "scores"} and (out["labels"] == 1).all()
    boxes = out["boxes"].numpy()
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    aw, ah = cfg.anchors[6]  # first anchor of the third scale, model pixels
    scale = cfg.input_scale
    inner = (boxes[:, 0] > 0) & (boxes[:, 1] > 0) & (boxes[:, 2] < 384) & (boxes[:, 3] < 512)
    assert inner.sum() >= 20
    assert np.allclose(w[inner], aw / scale, atol=1e-3) and np.allclose(h[inner], ah / scale, atol=1e-3)
    cx = (boxes[inner, 0] + boxes[inner, 2]) / 2 * scale / STRIDES[2] - 0.5
    assert np.allclose(cx, np.round(cx), atol=1e-3)  # cell centres
    assert boxes.max() <= 512 and boxes[:, 2].max() <= 384  # clipped to the tile, not the model image


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    from medseg.pathology.prepare import PrepareConfig, prepare_dataset
    from medseg.synthetic.slides import SlideSpec, write_slide

    d = tmp_path_factory.mktemp("yolo")
    path = d / "s.tiff"
    write_slide(
        path, SlideSpec(width=1024, height=768, seed=32, positive_fraction=0.5), geojson=d / "s.geojson"
    )
    assert prepare_dataset([path], d / "ds", PrepareConfig(tile=256, overlap=64)).exit_code == 0
    return d / "ds"


@pytest.mark.slow
def test_slide_train_stores_kmeans_anchors_in_the_weights(dataset, tmp_path):
    from medseg.engine.checkpoint import read_meta
    from medseg.pathology.detector import load_detector
    from medseg.pathology.train import split_records

    out = tmp_path / "run"
    res = CliRunner().invoke(
        cli,
        ["slide-train", str(dataset), "--out", str(out), "--arch", "yolov3", "--epochs", "1"]
        + ["--device", "cpu", "--val-fraction", "0.2", "--seed", "5", "--json", "--quiet"],
    )
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["extra"]["arch"] == "yolov3"
    records = json.loads((dataset / "annotations.json").read_text())["images"]
    train, _val, _how = split_records(records, 0.2, 5)
    expected = anchors_from_records(train, 0.5, seed=5)
    assert len(expected) == NUM_ANCHORS
    saved = read_meta(out / "best.safetensors").config
    assert saved["arch"] == "yolov3" and [tuple(a) for a in saved["anchors"]] == list(expected)
    det = load_detector(out / "best.safetensors", device="cpu", runtime="torch")
    assert det.config.anchors == expected
    assert np.allclose(det.model.anchors.view(-1, 2).numpy(), expected)


def test_backbone_runs_on_openvino_with_the_same_detections():
    pytest.importorskip("openvino")
    import torch

    torch.manual_seed(0)
    cfg = yolov3_config()
    model = build_detector(config=cfg)
    with torch.no_grad():
        for head in model.heads:  # enough detections to compare
            head.bias.view(3, -1)[:, 4:] = 1.0
    tiles = np.random.default_rng(0).integers(0, 255, (2, 320, 256, 3), dtype=np.uint8)
    ref = Detector(model, cfg, device="cpu", runtime="torch").predict(tiles, min_score=0.3)
    ov = Detector(model, cfg, device="cpu", runtime="openvino")
    assert ov.describe()["runtime_part"].startswith("backbone on OpenVINO")
    for (b0, l0, s0), (b1, l1, s1) in zip(ref, ov.predict(tiles, min_score=0.3)):
        assert len(b0) > 10 and b0.shape == b1.shape
        assert np.allclose(b0, b1, atol=0.05) and (l0 == l1).all() and np.allclose(s0, s1, atol=1e-4)


@pytest.mark.slow
def test_slide_score_arch_yolov3_uses_its_demo_weights(small_slide, tmp_path):
    """--arch yolov3 without --weights scores with the shipped YOLOv3 through the same tile engine,
    summary and GeoJSON as the R-CNNs, says they are demo weights, and finds the slide's PTCs
    (an unseen synthetic slide: the demo weights saw seeds 2000-2004)."""
    from medseg.engine.weights import demo_weights_path
    from medseg.pathology.evaluate import evaluate_results
    from medseg.pathology.yolo import DEMO_WEIGHTS

    assert demo_weights_path(DEMO_WEIGHTS).is_file()
    path, ann, _synth = small_slide
    out = tmp_path / "o"
    res = CliRunner().invoke(
        cli, ["slide-score", str(path), "--arch", "yolov3", "--out", str(out), "--device", "cpu", "--json"]
    )
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["summary"]["demo_weights"] is True and any("demo weights" in w for w in doc["warnings"])
    summary = json.loads((out / path.stem / "summary.json").read_text())
    assert summary["weights"].endswith("c4d_yolov3_demo.safetensors")
    assert json.loads((out / path.stem / "detections.geojson").read_text())["features"]
    overall = evaluate_results(out, [ann]).summary["overall"]
    assert overall["f1_mean"] > 0.75, overall


@pytest.mark.slow
def test_init_weights_keep_their_anchors(dataset, tmp_path):
    """Fine-tuning a YOLOv3 keeps the anchors its heads were trained for (no new k-means)."""
    from medseg.engine.checkpoint import read_meta
    from medseg.engine.weights import demo_weights_path
    from medseg.pathology.train import DetectorTrainConfig, split_records, train_detector
    from medseg.pathology.yolo import DEMO_WEIGHTS

    demo = demo_weights_path(DEMO_WEIGHTS)
    cfg = DetectorTrainConfig(
        epochs=1, device="cpu", val_fraction=0.2, detector=yolov3_config(), init_weights=str(demo)
    )
    train_detector(dataset, tmp_path / "ft", cfg)
    saved = read_meta(tmp_path / "ft" / "best.safetensors").config["anchors"]
    assert saved == read_meta(demo).config["anchors"]
    records = json.loads((dataset / "annotations.json").read_text())["images"]
    fresh = anchors_from_records(split_records(records, 0.2, 0)[0], 0.5)
    assert fresh and [tuple(a) for a in saved] != list(fresh)  # a new k-means would differ
