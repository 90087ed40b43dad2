"""The one-stage detectors (--arch yolov3 / cornernet) behind the shared detector interface:
they train, predict in the R-CNNs' output format, round-trip through weights, and the CLI lists
them and refuses what does not fit in words. CornerNet tests skip while its module is absent."""

from __future__ import annotations

import importlib.util
import json
from dataclasses import asdict

import numpy as np
import pytest
from click.testing import CliRunner
from medseg_cli.main import cli

from medseg.pathology.detector import ARCHS, MODEL_NAME, Detector, build_detector, config_for, load_detector

NEW_ARCHS = ("yolov3", "cornernet")
STEPS = 20


def _skip_missing(arch: str) -> None:
    if arch == "cornernet" and importlib.util.find_spec("medseg.pathology.cornernet") is None:
        pytest.skip("medseg.pathology.cornernet is not in this tree yet")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """One small synthetic slide cut into 256 px training tiles (slide-prepare)."""
    from medseg.pathology.prepare import PrepareConfig, prepare_dataset
    from medseg.synthetic.slides import SlideSpec, write_slide

    d = tmp_path_factory.mktemp("archs")
    path = d / "s.tiff"
    write_slide(
        path, SlideSpec(width=1024, height=768, seed=31, positive_fraction=0.5), geojson=d / "s.geojson"
    )
    assert prepare_dataset([path], d / "ds", PrepareConfig(tile=256)).exit_code == 0
    return d / "ds"


def _tiles(ds, n: int = 4):
    """The first ``n`` tiles holding PTCs: uint8 (n, H, W, 3), boxes and labels (tile pixels)."""
    from PIL import Image

    recs = [r for r in json.loads((ds / "annotations.json").read_text())["images"] if r["boxes"]][:n]
    imgs = np.stack([np.asarray(Image.open(ds / r["file"]).convert("RGB")) for r in recs])
    return (
        imgs,
        [np.array(r["boxes"], float).reshape(-1, 4) for r in recs],
        [np.array(r["labels"]) for r in recs],
    )


@pytest.fixture(scope="module", params=NEW_ARCHS)
def trained(request, dataset):
    """(arch, config, model, losses): STEPS AdamW steps on four tiles (no augmentation)."""
    import torch

    arch = request.param
    _skip_missing(arch)
    torch.manual_seed(0)
    torch.set_num_threads(1)
    cfg = config_for(arch)
    imgs, boxes, labels = _tiles(dataset)
    if arch == "yolov3":
        from medseg.pathology.yolo import anchors_from_records

        recs = json.loads((dataset / "annotations.json").read_text())["images"]
        cfg.anchors = anchors_from_records(recs, cfg.input_scale)
    model = build_detector(config=cfg).train()
    images = [torch.from_numpy(im).permute(2, 0, 1).float() / 255 for im in imgs]
    targets = [
        {"boxes": torch.tensor(b, dtype=torch.float32), "labels": torch.tensor(lab, dtype=torch.int64)}
        for b, lab in zip(boxes, labels)
    ]
    opt = torch.optim.AdamW(model.parameters(), lr=5e-3)
    losses = []
    for _ in range(STEPS):
        parts = model(images, targets)
        assert parts and all(k.startswith("loss") for k in parts)
        loss = sum(parts.values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return arch, cfg, model.eval(), losses


def test_loss_falls(trained):
    arch, _cfg, _model, losses = trained
    assert np.isfinite(losses).all(), arch
    assert np.mean(losses[-3:]) < 0.7 * np.mean(losses[:3]), (arch, losses)


def test_predicts_the_shared_format_in_tile_pixels(trained, dataset):
    """Detector.predict gives per tile (boxes (N, 4) in tile pixels, labels 1/2, scores), as the R-CNNs."""
    import torch
    from torchvision.ops import box_iou

    arch, cfg, model, _ = trained
    imgs, truth, _labels = _tiles(dataset)
    det = Detector(model, cfg, device="cpu", amp="off", runtime="torch", channels_last=False)
    preds = det.predict(imgs, min_score=0.0)
    assert len(preds) == len(imgs)
    found = 0
    for (boxes, labels, scores), gt in zip(preds, truth):
        assert boxes.dtype == np.float32 and boxes.ndim == 2 and boxes.shape[1] == 4
        assert labels.shape == scores.shape == (len(boxes),) and scores.dtype == np.float32
        assert np.issubdtype(labels.dtype, np.integer) and set(labels.tolist()) <= {1, 2}
        assert ((scores >= 0) & (scores <= 1)).all()
        if len(boxes):  # inside the tile; the best detection sits on a truth box (tile, not model pixels)
            assert (boxes[:, 2:] >= boxes[:, :2]).all() and boxes.min() >= 0 and boxes.max() <= imgs.shape[1]
            iou = box_iou(torch.from_numpy(boxes[scores.argmax()][None]), torch.from_numpy(gt).float())
            found += float(iou.max()) > 0.3
    assert found >= 2, (arch, found)


def test_weights_round_trip_through_load_detector(trained, dataset, tmp_path):
    from medseg.engine.checkpoint import CheckpointMeta, read_meta, save_weights

    arch, cfg, model, _ = trained
    path = save_weights(
        tmp_path / "w.safetensors", model.state_dict(), CheckpointMeta(MODEL_NAME, "t", asdict(cfg))
    )
    loaded = load_detector(path, device="cpu", amp="off", runtime="torch")
    assert loaded.config == cfg and read_meta(path).config["arch"] == arch
    imgs, _b, _l = _tiles(dataset, 2)
    ref = Detector(model, cfg, device="cpu", amp="off", runtime="torch").predict(imgs, min_score=0.05)
    for (b0, l0, s0), (b1, l1, s1) in zip(ref, loaded.predict(imgs, min_score=0.05)):
        assert np.allclose(b0, b1, atol=1e-3) and (l0 == l1).all() and np.allclose(s0, s1, atol=1e-5)


def test_cli_lists_the_archs_with_examples():
    from medseg_cli.pathology import DETECTOR_ARCHS

    assert list(ARCHS) == DETECTOR_ARCHS
    for cmd in ("slide-train", "slide-score"):
        res = CliRunner().invoke(cli, [cmd, "--help"])
        assert res.exit_code == 0
        text = " ".join(res.output.split())
        assert all(a in text for a in NEW_ARCHS) and "--arch yolov3" in text, cmd


def test_cli_refuses_weights_of_another_arch_in_words(dataset, demo_weights, small_slide, tmp_path):
    res = CliRunner().invoke(
        cli,
        ["slide-train", str(dataset), "--out", str(tmp_path / "r"), "--arch", "yolov3"]
        + ["--init-weights", str(demo_weights), "--quiet"],
    )
    assert res.exit_code == 2 and "holds a light detector" in res.stderr and "--arch yolov3" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and not (tmp_path / "r" / "best.safetensors").exists()
    path, _ann, _s = small_slide
    res = CliRunner().invoke(
        cli,
        [
            "slide-score",
            str(path),
            "--out",
            str(tmp_path / "o"),
            "--arch",
            "yolov3",
            "--weights",
            str(demo_weights),
        ],
    )
    assert res.exit_code == 2 and "hold a light detector, not yolov3" in res.stderr
    assert not (tmp_path / "o").exists()


def test_cli_arch_without_demo_weights_is_refused(small_slide, tmp_path):
    from medseg.engine.weights import demo_weights_path
    from medseg.pathology.detector import DEMO_BY_ARCH

    assert "resnet50-fpn" not in DEMO_BY_ARCH  # trained on a GPU by users: nothing ships
    path, _ann, _s = small_slide
    res = CliRunner().invoke(
        cli, ["slide-score", str(path), "--out", str(tmp_path / "o"), "--arch", "resnet50-fpn"]
    )
    assert res.exit_code == 2 and "no demo weights ship for --arch resnet50-fpn" in res.stderr
    if not demo_weights_path(DEMO_BY_ARCH["cornernet"]).is_file():
        res = CliRunner().invoke(
            cli, ["slide-score", str(path), "--out", str(tmp_path / "o"), "--arch", "cornernet"]
        )
        assert res.exit_code == 2 and "slide-train --arch cornernet" in res.stderr


@pytest.mark.parametrize("arch", ["light", "maskrcnn", "yolov3", "cornernet"])
def test_shipped_demo_weights_load_as_their_arch(arch):
    """Every shipped detector rebuilds from its metadata and loads strictly (a change of an
    architecture's layers without new demo weights fails here), and says it is not clinical."""
    from medseg.engine.checkpoint import read_meta
    from medseg.engine.weights import demo_weights_path
    from medseg.pathology.detector import DEMO_BY_ARCH

    _skip_missing(arch)
    path = demo_weights_path(DEMO_BY_ARCH[arch])
    det = load_detector(path, device="cpu", amp="off", runtime="torch")
    assert det.config.arch == arch
    assert "not for clinical use" in read_meta(path).training_data + read_meta(path).notes
