"""Training data preparation (mask enlargement) and the detector builders / weight loading."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from medseg.errors import ModelError
from medseg.pathology.detector import (
    DetectorConfig,
    build_light_detector,
    build_resnet50_fpn_detector,
    load_detector,
)
from medseg.pathology.labels import DEFAULT_MARGINS, class_of
from medseg.pathology.prepare import (
    PrepareConfig,
    boxes_from_label_mask,
    enlarge_boxes,
    prepare_dataset,
    read_geojson_boxes,
)


def test_enlargement_margins_per_class_and_clipping():
    boxes = np.array([[100, 100, 130, 130], [100, 100, 130, 130], [5, 480, 35, 510]], float)
    labels = np.array([1, 2, 1])
    assert DEFAULT_MARGINS == {"C4d+": 50, "C4d-": 40}  # the paper's margins, defined once
    out = enlarge_boxes(boxes, labels, DEFAULT_MARGINS, 512, 512)
    assert out[0].tolist() == [50, 50, 180, 180]  # C4d+: 50 px
    assert out[1].tolist() == [60, 60, 170, 170]  # C4d-: 40 px
    assert out[2].tolist() == [0, 430, 85, 512]  # clipped to the tile


def test_label_mask_instances_and_classes():
    mask = np.zeros((64, 64), np.uint8)
    mask[5:15, 5:20] = 1
    mask[30:40, 30:35] = 1
    mask[50:60, 2:8] = 2
    boxes, labels = boxes_from_label_mask(mask)
    assert sorted(labels.tolist()) == [1, 1, 2]
    assert [5, 5, 20, 15] in boxes.tolist()


def test_class_names_from_qupath():
    assert class_of("C4d+") == "C4d+" and class_of("C4d\u2212") == "C4d-" and class_of("Negative") == "C4d-"
    assert class_of("Tumor") is None and class_of(None) is None


def test_prepare_slides_writes_tiles_and_enlarged_boxes(small_slide, tmp_path):
    path, ann, synth = small_slide
    run = prepare_dataset(
        [path], tmp_path / "ds", PrepareConfig(tile=512, margins={"C4d+": 30, "C4d-": 20}), annotations=ann
    )
    assert run.exit_code == 0 and [i.name for i in run.items] == ["small"]
    meta = json.loads((tmp_path / "ds" / "annotations.json").read_text())
    assert meta["margins"] == {"C4d+": 30, "C4d-": 20} and run.summary["images"] == len(meta["images"]) > 4
    total = sum(run.summary["boxes"].values())
    assert 0.85 * len(synth.ptcs) <= total <= 1.2 * len(synth.ptcs)
    widths = [
        b[2] - b[0]
        for r in meta["images"]
        for b, lab in zip(r["boxes"], r["labels"])
        if lab == 1 and 0 < b[0] and b[2] < 512
    ]
    assert min(widths) >= 2 * 30 + 10  # margin on both sides + the PTC itself
    assert all(0 <= v <= 512 for r in meta["images"] for b in r["boxes"] for v in b)
    assert len(read_geojson_boxes(ann)) == len(synth.ptcs)


def test_prepare_masks_folder(tmp_path):
    from PIL import Image

    src = tmp_path / "tiles"
    src.mkdir()
    Image.fromarray(np.full((128, 128, 3), 200, np.uint8)).save(src / "a.png")
    mask = np.zeros((128, 128), np.uint8)
    mask[60:70, 60:70] = 2
    Image.fromarray(mask).save(src / "a_mask.png")
    run = prepare_dataset([], tmp_path / "ds", masks=src)
    rec = json.loads((tmp_path / "ds" / "annotations.json").read_text())["images"][0]
    assert run.summary["boxes"] == {"C4d+": 0, "C4d-": 1}
    assert rec["boxes"] == [[20.0, 20.0, 110.0, 110.0]] and rec["labels"] == [2]


def test_builders_are_keyword_only_and_never_download():
    with pytest.raises(TypeError):
        build_light_detector(DetectorConfig())  # positional on purpose
    with pytest.raises(ModelError):
        build_resnet50_fpn_detector(weights="DEFAULT")
    r50 = build_resnet50_fpn_detector()
    assert sum(p.numel() for p in r50.parameters()) > 40e6
    light = build_light_detector()
    assert sum(p.numel() for p in light.parameters()) < 1.5e6  # small enough to ship


def test_light_detector_forward_keeps_tile_coordinates():
    torch.manual_seed(0)
    model = build_light_detector().eval()
    with torch.inference_mode():
        out = model([torch.rand(3, 256, 320)])[0]
    assert out["boxes"].shape[1] == 4
    if len(out["boxes"]):
        assert out["boxes"][:, 2].max() <= 320 and out["boxes"][:, 3].max() <= 256


def test_wrong_weights_are_model_errors(tmp_path):
    from medseg.engine.checkpoint import CheckpointMeta, save_weights

    other = tmp_path / "other.safetensors"
    save_weights(other, {"w": torch.zeros(2)}, CheckpointMeta(model="ct-kernel-cnn", task="x", config={}))
    with pytest.raises(ModelError, match="expected"):
        load_detector(other)
    bad = tmp_path / "bad.safetensors"
    save_weights(
        bad,
        {"w": torch.zeros(2)},
        CheckpointMeta(model="c4d-faster-rcnn", task="x", config={"arch": "light"}),
    )
    with pytest.raises(ModelError, match="do not fit"):
        load_detector(bad)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not weights")
    with pytest.raises(ModelError):
        load_detector(junk)


def test_prepare_failed_slide_is_an_item_and_all_failed_writes_nothing(small_slide, tmp_path):
    """A slide without annotations is a failed item; when every slide fails nothing is published,
    so the corrected rerun needs no --overwrite; an existing dataset is refused (exit 3)."""
    from medseg.errors import OutputExistsError

    path, ann, _s = small_slide
    lonely = tmp_path / "lonely.tiff"
    lonely.write_bytes(path.read_bytes())
    out = tmp_path / "ds"
    run = prepare_dataset([lonely], out)
    assert run.exit_code == 5 and "no annotations" in run.items[0].reason and not out.exists()
    (tmp_path / "lonely.geojson").write_text(ann.read_text())
    run = prepare_dataset([lonely], out, PrepareConfig(tile=512))
    assert run.exit_code == 0 and (out / "annotations.json").is_file()
    with pytest.raises(OutputExistsError):
        prepare_dataset([lonely], out, PrepareConfig(tile=512))


def test_detector_runs_through_the_engine_predictor(demo_weights):
    """Detector.predict = engine Predictor (channels_last, fp32 on CPU): the same detections as
    the plain model on contiguous tensors."""
    from medseg.engine.predictor import Predictor
    from medseg.pathology.slide import open_slide

    from .conftest import SAMPLE

    with open_slide(SAMPLE / "sample_slide.tiff") as s:
        tiles = np.stack([s.read_rgb((1200, 900), 0, (384, 384)), s.read_rgb((2000, 1400), 0, (384, 384))])
    det = load_detector(demo_weights, device="cpu")
    assert isinstance(det.predictor, Predictor)
    assert det.describe() == {"device": "cpu", "amp": "fp32", "channels_last": True, "runtime": "torch"}
    got = det.predict(tiles, min_score=0.5)
    plain = load_detector(demo_weights, device="cpu").model.to(memory_format=torch.contiguous_format)
    with torch.inference_mode():
        ref = plain([torch.from_numpy(t).permute(2, 0, 1).float().div(255).contiguous() for t in tiles])
    assert sum(len(b) for b, _l, _s in got) > 0
    for (boxes, labels, _scores), r in zip(got, ref):
        keep = r["scores"] >= 0.5
        assert boxes.dtype == np.float32 and len(boxes) == int(keep.sum())
        np.testing.assert_allclose(boxes, r["boxes"][keep].numpy(), atol=0.05)
        assert labels.tolist() == r["labels"][keep].tolist()
