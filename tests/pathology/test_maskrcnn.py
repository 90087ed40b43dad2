"""Mask R-CNN (--arch maskrcnn): polygon training data, enlarged masks, outline export, training."""

from __future__ import annotations

import json

import numpy as np
import pytest

from medseg.engine.weights import demo_weights_path
from medseg.errors import InputError
from medseg.pathology.labels import DEFAULT_MARGINS
from medseg.pathology.maskrcnn import DEMO_WEIGHTS as MASK_DEMO_NAME
from medseg.pathology.maskrcnn import (
    OUTLINE_VERTICES,
    enlarged_mask,
    instance_masks,
    mask_outline,
    polygon_mask,
    shrink_outline,
    split_detections,
)
from medseg.pathology.prepare import PrepareConfig, enlarge_boxes, prepare_dataset

MASK_DEMO = demo_weights_path(MASK_DEMO_NAME)


def _ellipse(cx, cy, rx, ry, n=24):
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.stack([cx + rx * np.cos(t), cy + ry * np.sin(t)], 1)


def _iou(a, b):
    return (a & b).sum() / max(1, (a | b).sum())


def test_enlarged_mask_box_is_the_enlarged_box_and_clipped():
    """The margin applies to masks as to boxes: the enlarged mask's box is enlarge_boxes' box."""
    polys = [_ellipse(100, 120, 15, 10), _ellipse(30, 490, 12, 12)]  # the second is cut by the tile edge
    labels = np.array([1, 2])
    masks = instance_masks(polys, labels, DEFAULT_MARGINS, (512, 512))
    boxes = np.array([[*p.min(0), *p.max(0)] for p in polys])
    expected = enlarge_boxes(boxes, labels, DEFAULT_MARGINS, 512, 512)
    for m, e in zip(masks, expected):
        ys, xs = np.nonzero(m)
        got = [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
        assert np.allclose(got, e, atol=1.5), (got, e)
    # a disc dilation, not a box: the corners of the enlarged box stay empty
    assert masks[0][70, 35] == 0 and masks[0][120, 100] == 1
    assert masks[1][511, :].any() and masks[1].shape == (512, 512)


def test_shrink_outline_undoes_the_enlargement():
    poly = _ellipse(200, 200, 16, 11)
    big = enlarged_mask(poly, 50, 400, 400)
    outline = mask_outline(np.pad(big[130:271, 130:271], 0), np.array([130, 130, 271, 271]) - 0.5)
    # mask_outline works on any mask grid: here the 141 x 141 crop of the enlarged mask
    ring = shrink_outline(outline, 50, step=1.0)
    assert ring is not None and np.allclose(ring[0], ring[-1])
    got = polygon_mask(ring, 0, 0, 400, 400)
    assert _iou(got, polygon_mask(poly, 0, 0, 400, 400)) > 0.75
    assert shrink_outline(_ellipse(50, 50, 8, 8), 50) is None  # nothing left: callers use the box


def test_mask_outline_maps_mask_cells_to_the_box():
    mask = np.zeros((28, 28))
    mask[7:21, 7:21] = 1  # the middle half of the box
    ring = mask_outline(mask, np.array([100, 200, 156, 256]))
    assert ring.shape == (OUTLINE_VERTICES, 2)
    assert 110 <= ring[:, 0].min() <= 116 and 140 <= ring[:, 0].max() <= 146
    empty = mask_outline(np.zeros((28, 28)), np.array([0, 0, 10, 20]))
    assert empty[:, 0].min() == 0 and empty[:, 1].max() == 20  # no mask: the box itself


def test_merge_and_nms_carry_outlines():
    from types import SimpleNamespace

    from medseg.pathology.score import class_nms, merge_tile_detections

    grid = SimpleNamespace(overlap=160, stride=864, n_cols=3, n_rows=3, scale=2.0)
    tile = SimpleNamespace(x=864, y=864, col=1, row=1)
    ring = _ellipse(400, 450, 60, 60, OUTLINE_VERTICES).ravel()
    det = np.hstack([[340, 390, 460, 510], ring])[None]
    b, lab, s = merge_tile_detections(grid, tile, det, np.array([1]), np.array([0.9]))
    boxes, outlines = split_detections(b)
    assert boxes[0].tolist() == [2408, 2508, 2648, 2748]  # (tile offset + box) * scale
    assert np.allclose(outlines[0].mean(0), [(864 + 400) * 2, (864 + 450) * 2], atol=1)
    two = np.vstack([b, b + 1])
    kept, _l, _s = class_nms(two, np.array([1, 1]), np.array([0.9, 0.8]), 0.5)
    assert kept.shape == (1, 4 + 2 * OUTLINE_VERTICES)
    empty, _l, _s = merge_tile_detections(grid, tile, det[:0], np.zeros(0, int), np.zeros(0))
    assert empty.shape == (0, 4 + 2 * OUTLINE_VERTICES)


def test_geojson_exports_shrunk_mask_outlines():
    from medseg.pathology.outputs import to_geojson
    from medseg.pathology.score import SlideResult

    ptc = _ellipse(1000, 800, 30, 20, 48)  # level-0 px at 0.25 um/px: scale 2 level-0 px per target px
    margin = DEFAULT_MARGINS["C4d+"]
    big = enlarged_mask(ptc / 2, margin, 1000, 1000)
    ys, xs = np.nonzero(big)
    box = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], float)
    outline = mask_outline(big[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1], box)
    det = np.hstack([box * 2, (outline * 2).ravel()])[None]
    summary = {"target_mpp": 0.5, "slide_mpp": 0.25, "margins": dict(DEFAULT_MARGINS)}
    gj = to_geojson(SlideResult(summary, det, np.array([1]), np.array([0.9])))
    feat = gj["features"][0]
    ring = np.array(feat["geometry"]["coordinates"][0])
    assert feat["properties"]["outline"] == "mask" and feat["geometry"]["type"] == "Polygon"
    assert feat["properties"]["detection_box"] == [round(float(v), 1) for v in box * 2]
    got = polygon_mask(ring, 0, 0, 2000, 2000)
    assert _iou(got, polygon_mask(ptc, 0, 0, 2000, 2000)) > 0.7  # the PTC itself, not the enlarged mask
    # Faster R-CNN detections keep exporting the shrunk box
    plain = to_geojson(SlideResult(summary, det[:, :4], np.array([1]), np.array([0.9])))
    assert plain["features"][0]["properties"]["outline"] == "box"
    assert len(plain["features"][0]["geometry"]["coordinates"][0]) == 5


def test_prepare_keeps_polygons(small_slide, tmp_path):
    path, ann, _synth = small_slide
    prepare_dataset([path], tmp_path / "ds", PrepareConfig(tile=512), annotations=ann)
    meta = json.loads((tmp_path / "ds" / "annotations.json").read_text())
    n = 0
    for rec in meta["images"]:
        assert len(rec["polygons"]) == len(rec["labels"]) == len(rec["boxes"])
        for poly, box, lab in zip(rec["polygons"], rec["boxes"], rec["labels"]):
            p = np.array(poly)
            m = DEFAULT_MARGINS["C4d+" if lab == 1 else "C4d-"]
            if 0 < box[0] and box[2] < 512 and 0 < box[1] and box[3] < 512:  # not clipped
                assert np.allclose([*p.min(0) - m, *p.max(0) + m], box, atol=0.2)
                n += 1
    assert n > 10


def test_prepare_mask_tiles_give_outlines(tmp_path):
    from PIL import Image

    from medseg.pathology.prepare import instances_from_label_mask

    mask = np.zeros((64, 64), np.uint8)
    mask[10:20, 10:30] = 1
    boxes, labels, outlines = instances_from_label_mask(mask)
    assert boxes.tolist() == [[10, 10, 30, 20]] and labels.tolist() == [1]
    assert _iou(polygon_mask(outlines[0], 0, 0, 64, 64), mask == 1) > 0.9
    src = tmp_path / "tiles"
    src.mkdir()
    Image.fromarray(np.full((64, 64, 3), 200, np.uint8)).save(src / "a.png")
    Image.fromarray(mask).save(src / "a_mask.png")
    prepare_dataset([], tmp_path / "ds", PrepareConfig(), masks=src)
    rec = json.loads((tmp_path / "ds" / "annotations.json").read_text())["images"][0]
    assert len(rec["polygons"]) == 1


@pytest.mark.slow
def test_train_maskrcnn_cli_from_light_weights(small_slide, demo_weights, tmp_path):
    """slide-train --arch maskrcnn end to end (one short epoch), started from the light demo detector."""
    from click.testing import CliRunner
    from medseg_cli.main import cli

    from medseg.engine.checkpoint import load_weights, read_meta

    path, ann, _synth = small_slide
    prepare_dataset([path], tmp_path / "ds", PrepareConfig(tile=256, overlap=0), annotations=ann)
    meta = json.loads((tmp_path / "ds" / "annotations.json").read_text())
    meta["images"] = meta["images"][:6]
    (tmp_path / "ds" / "annotations.json").write_text(json.dumps(meta))
    res = CliRunner().invoke(
        cli,
        ["slide-train", str(tmp_path / "ds"), "--out", str(tmp_path / "run"), "--arch", "maskrcnn",
         "--init-weights", str(demo_weights), "--epochs", "1", "--lr", "1e-9", "--val-fraction", "0",
         "--device", "cpu", "--json", "--quiet"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    weights = tmp_path / "run" / "best.safetensors"
    assert read_meta(weights).config["arch"] == "maskrcnn"
    state, _ = load_weights(weights)
    light, _ = load_weights(demo_weights)
    assert any(k.startswith("roi_heads.mask_") for k in state)
    key = "backbone.0.weight"  # the first conv: initialised from the light weights (lr ~ 0 keeps it)
    assert torch_close(state[key], light[key])


def torch_close(a, b) -> bool:
    return bool((a - b).abs().max() < 1e-4)


def test_shipped_maskrcnn_weights_outline_ptcs_on_an_unseen_slide(small_slide, tmp_path):
    """The demo Mask R-CNN (trained on seeds 2000-2004) on seed 11: F1 and outlines near the truth."""
    from medseg.pathology.detector import load_detector
    from medseg.pathology.evaluate import evaluate_slide
    from medseg.pathology.outputs import write_slide_outputs
    from medseg.pathology.prepare import read_geojson_ptcs
    from medseg.pathology.score import ScoreConfig, score_slide

    path, ann, _synth = small_slide
    det = load_detector(MASK_DEMO, device="cpu")
    assert det.config.arch == "maskrcnn"
    result = score_slide(path, det, ScoreConfig(device="cpu", workers=1))
    assert result.boxes.shape[1] == 4 + 2 * OUTLINE_VERTICES
    write_slide_outputs(result, tmp_path / "small")
    s = result.summary
    m = evaluate_slide(
        tmp_path / "small" / "detections.geojson", ann, margins=s["margins"], scale=1.0, summary=s
    )
    assert m["C4d+_f1"] > 0.8 and m["C4d-_f1"] > 0.8, m
    feats = json.loads((tmp_path / "small" / "detections.geojson").read_text())["features"]
    assert {f["properties"]["outline"] for f in feats} == {"mask"}
    rows, truth = read_geojson_ptcs(ann)
    centres = (rows[:, :2] + rows[:, 2:4]) / 2
    ious = []
    for f in feats:
        ring = np.array(f["geometry"]["coordinates"][0])
        j = int(np.hypot(*(centres - (ring.min(0) + ring.max(0)) / 2).T).argmin())
        a, b = polygon_mask(ring, 0, 0, 2048, 1536), polygon_mask(truth[j], 0, 0, 2048, 1536)
        ious.append(_iou(a, b))
    assert np.median(ious) > 0.6, np.median(ious)


def test_maskrcnn_refuses_a_dataset_without_polygons(small_slide, tmp_path):
    from medseg.pathology.detector import DetectorConfig
    from medseg.pathology.train import DetectorTrainConfig, train_detector

    path, ann, _synth = small_slide
    prepare_dataset([path], tmp_path / "ds", PrepareConfig(tile=512), annotations=ann)
    meta = json.loads((tmp_path / "ds" / "annotations.json").read_text())
    for rec in meta["images"]:
        rec.pop("polygons")
    (tmp_path / "ds" / "annotations.json").write_text(json.dumps(meta))
    cfg = DetectorTrainConfig(epochs=1, device="cpu", detector=DetectorConfig(arch="maskrcnn"))
    with pytest.raises(InputError, match="polygons"):
        train_detector(tmp_path / "ds", tmp_path / "run", cfg)
