"""CornerNet (--arch cornernet): corner pooling, targets, decoding, training and the OpenVINO backbone."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medseg.pathology.cornernet import (
    STRIDE,
    CornerNet,
    _shift_max,
    build_cornernet,
    corner_pool,
    corner_targets,
    focal_heatmap_loss,
)
from medseg.pathology.detector import DetectorConfig

TILE = 256
# (cx, cy, radius, class): a brown (C4d+) and a purple (C4d-) ring, boxes = ring + 12 px
RINGS = [(80, 90, 30, 1), (175, 170, 38, 2)]
MARGIN = 12


def _config() -> DetectorConfig:
    return DetectorConfig(arch="cornernet")


def _synthetic_tile(seed: int = 0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """A light tile with two stained rings and their boxes (tile pixels)."""
    rng = np.random.default_rng(seed)
    img = np.full((TILE, TILE, 3), (0.93, 0.9, 0.92), np.float32) + rng.normal(0, 0.02, (TILE, TILE, 3))
    yy, xx = np.mgrid[:TILE, :TILE]
    colours = {1: (0.5, 0.3, 0.12), 2: (0.58, 0.5, 0.75)}
    boxes = []
    for cx, cy, r, c in RINGS:
        d = np.hypot(xx - cx, yy - cy)
        img[(d > r - 7) & (d < r)] = colours[c]
        boxes.append([cx - r - MARGIN, cy - r - MARGIN, cx + r + MARGIN, cy + r + MARGIN])
    image = torch.from_numpy(np.clip(img, 0, 1).transpose(2, 0, 1).copy()).float()
    target = {
        "boxes": torch.tensor(boxes, dtype=torch.float32),
        "labels": torch.tensor([c for *_, c in RINGS], dtype=torch.int64),
    }
    return image, target


def _overfit(steps: int = 60):
    """A CornerNet overfitted on one synthetic tile (60 Adam steps, about 5 s on one CPU thread)."""
    torch.manual_seed(0)
    model = build_cornernet(config=_config()).train()
    image, target = _synthetic_tile()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for step in range(steps):
        flip = step % 2 == 1  # horizontal flips: two views of the same tile
        img = image.flip(-1) if flip else image
        t = dict(target)
        if flip:
            t["boxes"] = target["boxes"][:, [2, 1, 0, 3]] * torch.tensor([-1, 1, -1, 1]) + torch.tensor(
                [TILE, 0, TILE, 0]
            )
        loss = model([img], [t])
        total = sum(loss.values())
        opt.zero_grad()
        total.backward()
        opt.step()
        losses.append({k: float(v.detach()) for k, v in loss.items()} | {"total": float(total.detach())})
    return model.eval(), image, target, losses


@pytest.fixture(scope="module")
def trained():
    return _overfit()


def test_corner_pool_matches_brute_force(monkeypatch):
    x = torch.randn(2, 3, 5, 7)
    h_tl, v_tl = corner_pool(x, "tl")
    h_br, v_br = corner_pool(x, "br")
    for i in range(5):
        for j in range(7):
            assert torch.equal(h_tl[..., i, j], x[..., i, j:].amax(-1))
            assert torch.equal(v_tl[..., i, j], x[..., i:, j].amax(-1))
            assert torch.equal(h_br[..., i, j], x[..., i, : j + 1].amax(-1))
            assert torch.equal(v_br[..., i, j], x[..., : i + 1, j].amax(-1))
    with pytest.raises(ValueError, match="corner"):
        corner_pool(x, "tr")
    # the traceable version (what OpenVINO runs) takes the same maxima, here reaching 2**3 = 8 cells
    assert torch.equal(_shift_max(x, -1, True, steps=3), h_tl) and torch.equal(
        _shift_max(x, -2, False, 3), v_br
    )
    eager = [corner_pool(x, c) for c in ("tl", "br")]
    monkeypatch.setattr(torch.jit, "is_tracing", lambda: True)  # the branch OpenVINO's tracing takes
    for c, (h, v) in zip(("tl", "br"), eager):
        traced_h, traced_v = corner_pool(x, c)
        assert torch.equal(traced_h, h) and torch.equal(traced_v, v)


def test_heatmap_target_peaks_at_the_corners():
    boxes = torch.tensor([[18.0, 30.0, 90.0, 101.0], [40.0, 8.0, 70.0, 50.0]])
    labels = torch.tensor([2, 1])
    t = corner_targets(boxes, labels, 2, (32, 32))
    for k, cols in (("tl", [0, 1]), ("br", [2, 3])):
        heat = t[f"{k}_heat"]
        for box, label, index, offset in zip(boxes, labels, t[f"{k}_index"], t[f"{k}_offset"]):
            x, y = (box[cols] / STRIDE).tolist()
            assert heat[label - 1, int(y), int(x)] == 1.0  # the peak sits on the corner's cell
            assert int(index) == int(y) * 32 + int(x)
            assert torch.allclose(offset, torch.tensor([x % 1, y % 1]))
            assert 0 < heat[label - 1, int(y) - 1, int(x)] < 1  # a Gaussian around the peak
            assert heat[2 - label, int(y), int(x)] < 1  # the other class has no corner there
        assert heat.eq(1).sum() == 2 and heat.max() == 1 and heat.min() == 0
    assert t["tl_heat"][0].eq(1).sum() == 1 and t["tl_heat"][0, 2, 10] == 1.0  # class 1 = channel 0


def test_focal_loss_rewards_the_right_heatmap():
    target = corner_targets(torch.tensor([[8.0, 8.0, 40.0, 40.0]]), torch.tensor([1]), 1, (16, 16))["tl_heat"]
    good = torch.logit(target.clamp(0.01, 0.99))
    bad = torch.logit(torch.full_like(target, 0.5))
    assert focal_heatmap_loss(good, target)[0] < focal_heatmap_loss(bad, target)[0]
    assert focal_heatmap_loss(good, target)[1] == 1


def test_decoding_pairs_corners_by_class_geometry_and_embedding():
    """Two hand-made boxes decode back exactly; the 'ghost' pair (top-left of one, bottom-right of
    the other) is rejected."""
    model = build_cornernet(config=_config()).eval()
    k = model.num_fg
    tl = torch.full((1, k + 5, 16, 16), -20.0)
    br = torch.full((1, k + 5, 16, 16), -20.0)
    tl[0, k + 1 : k + 3] = br[0, k + 1 : k + 3] = 0.5  # half-cell offsets
    corners = [((2, 3), (8, 9), 0, 0.0), ((6, 7), (13, 14), 1, 3.0)]  # (x, y) cells, class, embedding
    for (x1, y1), (x2, y2), c, e in corners:
        tl[0, c, y1, x1] = br[0, c, y2, x2] = 4.0
        tl[0, k, y1, x1] = br[0, k, y2, x2] = e
        size = torch.log(torch.tensor([x2 - x1, y2 - y1], dtype=torch.float32))
        tl[0, k + 3 :, y1, x1] = br[0, k + 3 :, y2, x2] = size
    out = model.decode(tl, br, [(64, 64)], [(64, 64)])[0]
    assert len(out["boxes"]) == 2
    expected = torch.tensor([[2.5, 3.5, 8.5, 9.5], [6.5, 7.5, 13.5, 14.5]]) * STRIDE
    order = out["labels"].argsort()
    assert torch.allclose(out["boxes"][order], expected)
    assert out["labels"][order].tolist() == [1, 2]
    assert torch.allclose(out["scores"], torch.sigmoid(torch.tensor(4.0)).expand(2))
    # the same image at half the size (input_scale): boxes come back in tile pixels
    half = model.decode(tl, br, [(128, 128)], [(64, 64)])[0]
    assert torch.allclose(half["boxes"][half["labels"].argsort()], expected * 2)


def _corners(x, y, w, h, emb, cls=(0, 0)):
    t = torch.tensor
    return {"x": t(x), "y": t(y), "w": t(w), "h": t(h), "emb": t(emb), "cls": t(cls), "score": t([0.9, 0.7])}


def test_pairs_need_close_embeddings_and_agreeing_geometry():
    """Box A = (0, 0, 40, 40), box B = (30, 30, 70, 70): the ghost pair A top-left + B bottom-right
    (0, 0, 70, 70) is rejected by the embeddings alone and by the predicted sizes alone."""
    tl = _corners([0.0, 30.0], [0.0, 30.0], [40.0, 40.0], [40.0, 40.0], [0.0, 2.0])
    br = _corners([40.0, 70.0], [40.0, 70.0], [40.0, 40.0], [40.0, 40.0], [0.0, 2.0])
    valid, score = CornerNet.pair_corners(tl, br)
    assert valid.tolist() == [[True, False], [False, True]]
    assert torch.allclose(score, torch.tensor([[0.9, 0.8], [0.8, 0.7]]))
    tl["emb"] = br["emb"] = torch.zeros(2)  # embeddings say nothing: geometry alone
    assert CornerNet.pair_corners(tl, br)[0].tolist() == [[True, False], [False, True]]
    tl["w"] = tl["h"] = br["w"] = br["h"] = torch.tensor([70.0, 70.0])  # sizes fit the ghost...
    tl["emb"] = br["emb"] = torch.tensor([0.0, 2.0])  # ...embeddings alone reject it
    assert CornerNet.pair_corners(tl, br)[0][0, 1].item() is False
    tl["cls"] = torch.tensor([0, 1])  # another class never pairs
    assert not CornerNet.pair_corners(tl, br)[0][1, 1]


def test_training_loss_falls(trained):
    _model, _image, _target, losses = trained
    first = np.mean([step["total"] for step in losses[:3]])
    last = np.mean([step["total"] for step in losses[-3:]])
    assert last < 0.3 * first, (first, last)
    assert losses[-1]["loss_heatmap"] < 0.3 * losses[0]["loss_heatmap"]


def test_overfitted_tile_is_detected(trained):
    from torchvision.ops import box_iou

    model, image, target, _ = trained
    with torch.no_grad():
        out = model([image])[0]
    keep = out["scores"] >= 0.3
    boxes, labels = out["boxes"][keep], out["labels"][keep]
    iou = box_iou(target["boxes"], boxes)
    for j, label in enumerate(target["labels"]):
        same = labels == label
        assert same.any() and iou[j][same].max() > 0.5, (target["boxes"][j], boxes[same])
    assert len(boxes) <= 4  # no flood of ghost boxes


def test_eval_output_format_and_boxes_inside_the_tile():
    torch.manual_seed(1)
    model = build_cornernet(config=_config()).eval()
    images = [torch.rand(3, 200, 150), torch.rand(3, 97, 131)]  # odd sizes: padding and the way back
    with torch.no_grad():
        out = model(images)
    assert len(out) == 2
    for res, img in zip(out, images):
        assert set(res) == {"boxes", "labels", "scores"}
        n = len(res["boxes"])
        assert n > 0 and n <= model.detections_per_img
        assert res["boxes"].shape == (n, 4) and res["boxes"].dtype == torch.float32
        assert res["labels"].shape == (n,) and res["labels"].dtype == torch.int64
        assert res["scores"].shape == (n,) and res["scores"].dtype == torch.float32
        h, w = img.shape[-2:]
        b = res["boxes"]
        assert (b[:, 0] >= 0).all() and (b[:, 1] >= 0).all() and (b[:, 2] <= w).all() and (b[:, 3] <= h).all()
        assert (b[:, 2] >= b[:, 0]).all() and (b[:, 3] >= b[:, 1]).all()
        assert set(res["labels"].tolist()) <= {1, 2}
        assert ((res["scores"] > 0) & (res["scores"] <= 1)).all()


def test_empty_targets_train():
    """Tiles without PTCs give heatmap loss only (all negatives) and gradients, no error."""
    torch.manual_seed(2)
    model = build_cornernet(config=_config()).train()
    image, target = _synthetic_tile()
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}
    losses = model([image[:, :128, :128]], [empty])
    assert losses["loss_heatmap"] > 0 and torch.isfinite(losses["loss_heatmap"])
    assert losses["loss_pull"] == losses["loss_push"] == losses["loss_offset"] == losses["loss_size"] == 0
    sum(losses.values()).backward()
    assert model.backbone.tl_head.out.weight.grad.abs().sum() > 0
    mixed = model([image, image[:, :128, :128]], [target, empty])  # a batch of both kinds
    assert (
        all(torch.isfinite(v) for v in mixed.values()) and mixed["loss_offset"] > 0 and mixed["loss_size"] > 0
    )
    with pytest.raises(ValueError, match="targets"):
        model([image])


def test_backbone_runs_on_openvino_like_pytorch(trained, monkeypatch, tmp_path):
    pytest.importorskip("openvino")
    from medseg.pathology.detector import Detector

    monkeypatch.setenv("MEDSEG_CACHE_DIR", str(tmp_path))
    model, image, target, _ = trained
    tiles = (image.permute(1, 2, 0).numpy()[None] * 255).round().astype(np.uint8)
    tiles = np.concatenate([tiles, tiles[:, :, ::-1]])  # and its mirror image (trained too)
    config = _config()
    ov = Detector(model, config, device="cpu", runtime="openvino")
    assert ov.describe()["runtime"] == "openvino" and "backbone" in ov.describe()["runtime_part"]
    with torch.no_grad():
        batch = torch.randn(2, 3, 96, 160)  # another size than the conversion example: shapes are dynamic
        assert torch.allclose(ov.predictor._ov.backbone(batch), model.backbone(batch), atol=1e-3)
    pt = Detector(model, config, device="cpu", runtime="torch", channels_last=False)
    for (b1, l1, s1), (b2, l2, s2) in zip(ov.predict(tiles, min_score=0.3), pt.predict(tiles, min_score=0.3)):
        assert len(b1) == len(b2) >= 2, (s1, s2)
        assert np.allclose(b1, b2, atol=0.5) and np.array_equal(l1, l2) and np.allclose(s1, s2, atol=1e-3)


@pytest.mark.cuda
def test_cuda_amp_trains_and_matches_cpu_detections(trained):
    """On a GPU under autocast: losses are finite, and the overfitted tile gives the CPU's boxes."""
    from medseg.pathology.detector import Detector

    model, image, target, _ = trained
    tiles = (image.permute(1, 2, 0).numpy()[None] * 255).round().astype(np.uint8)
    cpu = Detector(model, _config(), device="cpu", runtime="torch").predict(tiles, min_score=0.3)[0]
    import copy

    gpu_det = Detector(copy.deepcopy(model), _config(), device="cuda", amp="auto")  # moved in place
    gpu = gpu_det.predict(tiles, min_score=0.3)[0]
    assert len(gpu[0]) == len(cpu[0]) and np.allclose(gpu[0], cpu[0], atol=3)
    train = build_cornernet(config=_config()).cuda().train()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        losses = train([image.cuda()], [{k: v.cuda() for k, v in target.items()}])
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
