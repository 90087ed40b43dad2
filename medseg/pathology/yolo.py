"""YOLOv3 PTC detector (Redmon & Farhadi 2018), sized like the light Faster R-CNN.

A one-stage detector: no proposals and no RoI heads, so on a CPU almost all of its time is the
convolutional part (``model.backbone``: a Darknet-style body and an FPN-like neck), which the
Predictor hands to OpenVINO whole. It follows torchvision's detection API exactly like the R-CNNs
(``model(images, targets)`` -> dict of losses in train mode, list of ``boxes``/``labels``/``scores``
dicts in tile pixels in eval mode), so the trainer, Predictor, tile engine, batch scoring, GeoJSON
export and Ray runner use it unchanged.

- Backbone: conv-BN-LeakyReLU and Darknet residual blocks (1x1 squeeze, 3x3 expand), strides 4-32
  with ``DetectorConfig.channels`` (c0..c3); the neck goes top-down (1x1, upsample, concatenate)
  and gives maps at strides 8, 16 and 32.
- Anchors: 9 (w, h) in model pixels, 3 per scale (smallest at stride 8), from k-means with the
  IoU distance on the training boxes (:func:`kmeans_anchors`; ``slide-train`` computes them and
  stores them in ``DetectorConfig.anchors``); without them, ``anchor_sizes`` x ``aspect_ratios``.
- Targets: each box is assigned to its best-shape anchor (the paper) and to every other anchor
  whose shape IoU exceeds 0.5 (the enlarged PTC boxes are all of one size, so one anchor per box
  would leave two of the three scales untrained); the cell holding the box centre predicts it.
- Losses: objectness and classes are logistic (BCE) as in the paper; the box loss is GIoU on the
  decoded boxes (scale-free, so the three scales need no weighting); predictions overlapping a
  truth box by IoU > 0.5 that are not assigned to it are ignored in the objectness loss (the
  paper's rule). Sums are divided by the number of positives.
- Inference: score = objectness x class probability per class, NMS per class
  (``torchvision.ops.batched_nms``), boxes back to tile pixels by the shared fixed-scale transform.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np

log = logging.getLogger("medseg.pathology")

ARCH = "yolov3"
# small demo YOLOv3 trained on synthetic slides (scripts/compare_pathology_detectors.py); not for
# clinical use. Resolve with medseg.engine.weights.demo_weights_path.
DEMO_WEIGHTS = "pathology/c4d_yolov3_demo.safetensors"
STRIDES = (8, 16, 32)
ANCHORS_PER_SCALE = 3
NUM_ANCHORS = ANCHORS_PER_SCALE * len(STRIDES)
CHANNELS = (16, 32, 64, 128)  # default widths: about the light Faster R-CNN's parameter count
IGNORE_IOU = 0.5
POSITIVE_SHAPE_IOU = 0.5
SCORE_THRESH = 0.05
NMS_IOU = 0.5
PRE_NMS_TOP_N = 2000
BOX_LOSS_WEIGHT = 5.0
_MAX_LOG_WH = math.log(1000.0 / 16)  # as torchvision's bbox_xform_clip: exp() cannot overflow


# -- anchors --------------------------------------------------------------------------------------
def wh_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of (N, 2) and (K, 2) box shapes (w, h) placed at one corner: (N, K)."""
    a, b = np.asarray(a, float).reshape(-1, 2), np.asarray(b, float).reshape(-1, 2)
    inter = np.minimum(a[:, None, 0], b[None, :, 0]) * np.minimum(a[:, None, 1], b[None, :, 1])
    return inter / (a.prod(1)[:, None] + b.prod(1)[None, :] - inter)


def kmeans_anchors(
    wh: np.ndarray, k: int = NUM_ANCHORS, *, iters: int = 300, seed: int = 0
) -> tuple[tuple[float, float], ...]:
    """``k`` anchor shapes from box shapes (N, 2) by k-means with the distance 1 - IoU (the YOLOv2/v3
    recipe: Euclidean k-means would favour large boxes). Starts from shapes at evenly spaced area
    quantiles (deterministic), then alternates assignment and mean; an empty cluster takes the
    worst-fitting box. Returns ``k`` (w, h) sorted by area; ValueError for fewer than ``k`` boxes."""
    wh = np.asarray(wh, float).reshape(-1, 2)
    wh = wh[(wh > 0).all(1)]
    if len(wh) < k:
        raise ValueError(f"{len(wh)} box(es) for {k} anchors")
    rng = np.random.default_rng(seed)
    order = np.argsort(wh.prod(1), kind="stable")
    centres = wh[order[np.linspace(0, len(wh) - 1, k).round().astype(int)]].copy()
    centres += rng.uniform(-1e-3, 1e-3, centres.shape)  # equal starting shapes would never split
    assign = np.full(len(wh), -1)
    for _ in range(iters):
        iou = wh_iou(wh, centres)
        new = iou.argmax(1)
        for j in range(k):
            members = wh[new == j]
            if len(members):
                centres[j] = members.mean(0)
            else:  # the box the current anchors fit worst starts a new cluster
                worst = int(iou.max(1).argmin())
                centres[j], new[worst] = wh[worst], j
        if (new == assign).all():
            break
        assign = new
    centres = centres[np.argsort(centres.prod(1), kind="stable")]
    return tuple((round(float(w), 2), round(float(h), 2)) for w, h in centres)


def default_anchors(config) -> tuple[tuple[float, float], ...]:
    """Anchors of a config: its k-means ones, else ``anchor_sizes`` x ``aspect_ratios`` as
    torchvision's AnchorGenerator makes them (h/w = ratio), 9 sorted by area."""
    if config.anchors:
        return tuple((float(w), float(h)) for w, h in config.anchors)
    sizes = tuple(config.anchor_sizes) or (40, 56, 80)
    ratios = tuple(config.aspect_ratios) or (0.6, 1.0, 1.6)
    shapes = [(s / math.sqrt(r), s * math.sqrt(r)) for s in sizes for r in ratios]
    shapes = sorted(shapes, key=lambda a: a[0] * a[1])
    if len(shapes) != NUM_ANCHORS:  # take 9 spread over the sorted list
        idx = np.linspace(0, len(shapes) - 1, NUM_ANCHORS).round().astype(int)
        shapes = [shapes[i] for i in idx]
    return tuple((round(w, 2), round(h, 2)) for w, h in shapes)


def anchors_from_records(
    records: list[dict], scale: float, *, seed: int = 0
) -> tuple[tuple[float, float], ...]:
    """k-means anchors (model pixels) from a slide-prepare dataset's training boxes (the enlarged,
    clipped PTC boxes in tile pixels, times ``scale``); () when there are fewer boxes than anchors."""
    boxes = [np.asarray(r.get("boxes") or [], float).reshape(-1, 4) for r in records]
    b = np.concatenate(boxes) if boxes else np.zeros((0, 4))
    wh = (b[:, 2:] - b[:, :2]) * scale
    wh = wh[(wh > 2 * scale).all(1)]  # what the trainer keeps (> 2 tile px)
    try:
        return kmeans_anchors(wh, seed=seed)
    except ValueError:
        return ()


# -- network --------------------------------------------------------------------------------------
def _conv(cin: int, cout: int, k: int, stride: int = 1):
    from torch import nn

    return nn.Sequential(
        nn.Conv2d(cin, cout, k, stride, k // 2, bias=False),
        nn.BatchNorm2d(cout),
        nn.LeakyReLU(0.1, inplace=True),
    )


def _residual_cls():
    from torch import nn

    class Residual(nn.Module):
        """Darknet residual block: x + 3x3(1x1(x)), the 1x1 halving the channels."""

        def __init__(self, c: int) -> None:
            super().__init__()
            self.body = nn.Sequential(_conv(c, max(1, c // 2), 1), _conv(max(1, c // 2), c, 3))

        def forward(self, x):
            return x + self.body(x)

    return Residual


def _backbone_cls():
    import torch
    from torch import nn

    Residual = _residual_cls()

    class DarknetNeck(nn.Module):
        """Darknet-style body (strides 2-32) + top-down neck: (p8, p16, p32) feature maps.

        Input height and width must be multiples of 32 (the transform pads to that)."""

        def __init__(self, channels: tuple[int, ...]) -> None:
            super().__init__()
            c0, c1, c2, c3 = channels
            self.stem = nn.Sequential(_conv(3, c0, 3, 2), _conv(c0, c0, 3, 2), Residual(c0))  # /4
            self.stage8 = nn.Sequential(_conv(c0, c1, 3, 2), Residual(c1))
            self.stage16 = nn.Sequential(_conv(c1, c2, 3, 2), Residual(c2), Residual(c2))
            self.stage32 = nn.Sequential(_conv(c2, c3, 3, 2), Residual(c3), Residual(c3))
            self.top32 = nn.Sequential(_conv(c3, c3 // 2, 1), _conv(c3 // 2, c3, 3))
            self.up32 = _conv(c3, c2, 1)
            self.top16 = nn.Sequential(_conv(2 * c2, c2 // 2, 1), _conv(c2 // 2, c2, 3))
            self.up16 = _conv(c2, c1, 1)
            self.top8 = nn.Sequential(_conv(2 * c1, c1 // 2, 1), _conv(c1 // 2, c1, 3))
            self.out_channels = (c1, c2, c3)

        def forward(self, x):
            up = nn.functional.interpolate
            f8 = self.stage8(self.stem(x))
            f16 = self.stage16(f8)
            p32 = self.top32(self.stage32(f16))
            p16 = self.top16(torch.cat([up(self.up32(p32), scale_factor=2.0, mode="nearest"), f16], 1))
            p8 = self.top8(torch.cat([up(self.up16(p16), scale_factor=2.0, mode="nearest"), f8], 1))
            return p8, p16, p32

    return DarknetNeck


def _yolo_cls():
    import torch
    from torch import nn
    from torchvision.ops import batched_nms, box_iou, clip_boxes_to_image, generalized_box_iou_loss

    class YOLOv3(nn.Module):
        """YOLOv3 with torchvision's detection interface (see the module docstring)."""

        def __init__(self, config, transform) -> None:
            super().__init__()
            self.num_classes = int(config.num_classes) - 1  # foreground classes (no background)
            self.detections_per_img = int(config.detections_per_img)
            self.transform = transform
            self.backbone = _backbone_cls()(tuple(config.channels or CHANNELS))
            per = ANCHORS_PER_SCALE * (5 + self.num_classes)
            self.heads = nn.ModuleList(nn.Conv2d(c, per, 1) for c in self.backbone.out_channels)
            prior = math.log(0.01 / 0.99)  # objectness and classes start at p = 0.01 (stable start)
            for head in self.heads:
                nn.init.normal_(head.weight, std=0.01)
                bias = head.bias.detach().view(ANCHORS_PER_SCALE, -1)
                bias.zero_()
                bias[:, 4:] = prior
            anchors = torch.tensor(default_anchors(config), dtype=torch.float32)
            self.register_buffer(
                "anchors", anchors.view(len(STRIDES), ANCHORS_PER_SCALE, 2), persistent=False
            )

        # -- shared pieces --------------------------------------------------------------------------
        def _raw(self, images):
            """Per scale (B, A, H, W, 5 + C) float32 predictions."""
            out = []
            for head, f in zip(self.heads, self.backbone(images)):
                p = head(f).float()
                b, _, h, w = p.shape
                out.append(p.view(b, ANCHORS_PER_SCALE, -1, h, w).permute(0, 1, 3, 4, 2))
            return out

        def _decode(self, p, level: int):
            """Raw (B, A, H, W, 5 + C) -> boxes (B, A, H, W, 4) xyxy in model pixels."""
            _, _, h, w, _ = p.shape
            stride = STRIDES[level]
            gy, gx = torch.meshgrid(
                torch.arange(h, device=p.device), torch.arange(w, device=p.device), indexing="ij"
            )
            grid = torch.stack([gx, gy], -1).to(p.dtype)
            xy = (p[..., :2].sigmoid() + grid) * stride
            wh = self.anchors[level].view(1, -1, 1, 1, 2) * p[..., 2:4].clamp(max=_MAX_LOG_WH).exp()
            return torch.cat([xy - wh / 2, xy + wh / 2], -1)

        def forward(self, images, targets=None):
            if self.training and targets is None:
                raise ValueError("targets are needed in training mode")
            original_sizes = [tuple(img.shape[-2:]) for img in images]
            image_list, targets = self.transform(images, targets)
            raw = self._raw(image_list.tensors)
            if self.training:
                return self._losses(raw, targets)
            dets = self._detections(raw, image_list.image_sizes)
            return self.transform.postprocess(dets, image_list.image_sizes, original_sizes)

        # -- training -------------------------------------------------------------------------------
        def _assign(self, target, shapes):
            """Positive (level, anchor, y, x) cells and the truth index each one predicts."""
            boxes = target["boxes"]
            if not len(boxes):
                return []
            wh = (boxes[:, 2:] - boxes[:, :2]).clamp(min=1e-3)
            flat = self.anchors.view(-1, 2)
            inter = torch.min(wh[:, None], flat[None]).prod(-1)
            iou = inter / (wh.prod(-1)[:, None] + flat.prod(-1)[None] - inter)
            positive = iou > POSITIVE_SHAPE_IOU
            positive[torch.arange(len(boxes)), iou.argmax(1)] = True
            gt, anchor = positive.nonzero(as_tuple=True)
            centre = (boxes[gt, :2] + boxes[gt, 2:]) / 2
            cells = []
            for level, (h, w) in enumerate(shapes):
                sel = anchor // ANCHORS_PER_SCALE == level
                cxy = (centre[sel] / STRIDES[level]).long()
                cx, cy = cxy[:, 0].clamp(0, w - 1), cxy[:, 1].clamp(0, h - 1)
                cells.append((anchor[sel] % ANCHORS_PER_SCALE, cy, cx, gt[sel]))
            return cells

        def _losses(self, raw, targets):
            shapes = [p.shape[2:4] for p in raw]
            decoded = [self._decode(p, lvl) for lvl, p in enumerate(raw)]
            obj_sum = raw[0].new_zeros(())
            cls_sum, box_sum, n_pos = raw[0].new_zeros(()), raw[0].new_zeros(()), 0
            for i, target in enumerate(targets):
                boxes, labels = target["boxes"], target["labels"]
                cells = self._assign(target, shapes)
                for lvl, p in enumerate(raw):
                    obj = p[i, ..., 4]
                    want = torch.zeros_like(obj)
                    weight = torch.ones_like(obj)
                    if len(boxes):
                        with torch.no_grad():  # the paper's ignore rule for good unassigned boxes
                            best = box_iou(decoded[lvl][i].reshape(-1, 4), boxes).max(1).values
                            weight[(best > IGNORE_IOU).view_as(obj)] = 0.0
                        a, y, x, g = cells[lvl]
                        if len(g):
                            weight[a, y, x] = 1.0
                            want[a, y, x] = 1.0
                            pred = p[i, a, y, x]
                            n_pos += len(g)
                            box_sum = box_sum + generalized_box_iou_loss(
                                decoded[lvl][i, a, y, x], boxes[g], reduction="sum"
                            )
                            onehot = nn.functional.one_hot(labels[g] - 1, self.num_classes).to(pred.dtype)
                            cls_sum = cls_sum + nn.functional.binary_cross_entropy_with_logits(
                                pred[:, 5:], onehot, reduction="sum"
                            )
                    obj_sum = (
                        obj_sum
                        + (
                            nn.functional.binary_cross_entropy_with_logits(obj, want, reduction="none")
                            * weight
                        ).sum()
                    )
            norm = max(1, n_pos)
            return {
                "loss_objectness": obj_sum / norm,
                "loss_classifier": cls_sum / norm,
                "loss_box_reg": BOX_LOSS_WEIGHT * box_sum / norm,
            }

        # -- inference ------------------------------------------------------------------------------
        def _detections(self, raw, image_sizes):
            result = []
            for i, size in enumerate(image_sizes):
                boxes = torch.cat(
                    [self._decode(p[i : i + 1], lvl).reshape(-1, 4) for lvl, p in enumerate(raw)]
                )
                pred = torch.cat([p[i].reshape(-1, p.shape[-1]) for p in raw])
                scores = pred[:, 4:5].sigmoid() * pred[:, 5:].sigmoid()  # (M, C)
                idx, cls = (scores > SCORE_THRESH).nonzero(as_tuple=True)
                s = scores[idx, cls]
                if len(s) > PRE_NMS_TOP_N:
                    s, top = s.topk(PRE_NMS_TOP_N)
                    idx, cls = idx[top], cls[top]
                b = clip_boxes_to_image(boxes[idx], tuple(size))
                ok = ((b[:, 2] - b[:, 0]) > 1e-2) & ((b[:, 3] - b[:, 1]) > 1e-2)
                b, s, labels = b[ok], s[ok], cls[ok] + 1
                keep = batched_nms(b, s, labels, NMS_IOU)[: self.detections_per_img]
                result.append({"boxes": b[keep], "labels": labels[keep], "scores": s[keep]})
            return result

    return YOLOv3


def build_yolov3(*, config) -> Any:
    """YOLOv3 (light Darknet body, FPN-like neck, 3 scales x 3 anchors) for ``config``
    (:class:`medseg.pathology.detector.DetectorConfig` with ``arch="yolov3"``); random weights."""
    from medseg.pathology.detector import _fixed_scale_transform

    transform = _fixed_scale_transform(config.input_scale, config.image_mean, config.image_std)
    return _yolo_cls()(config, transform)
