"""Faster R-CNN PTC detectors (torchvision): ResNet-50-FPN for real use, a light one for demos.

Both take tiles at the target resolution and rescale them internally by ``input_scale`` (fixed,
not torchvision's min/max-size rule), so training crops and 1024 px scoring tiles see objects at
the same size; boxes come back in tile pixels. Nothing is ever downloaded: ``weights=None`` and
``weights_backbone=None`` always.

Classes: 0 background, 1 C4d+, 2 C4d-.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medseg.engine.checkpoint import sample_data_path
from medseg.errors import ModelError

log = logging.getLogger("medseg.pathology")

MODEL_NAME = "c4d-faster-rcnn"
# light detector trained on synthetic slides (scripts/make_sample_data_pathology.py); not for clinical use
DEMO_WEIGHTS = sample_data_path("pathology", "c4d_light_demo.safetensors")
CLASSES = ("C4d+", "C4d-")  # label 1, 2
DEFAULT_MARGINS = {"C4d+": 50, "C4d-": 40}


@dataclass
class DetectorConfig:
    """Everything needed to rebuild a detector (stored in the weights' metadata)."""

    arch: str = "light"  # "light" | "resnet50-fpn"
    num_classes: int = 3
    input_scale: float = 0.5  # tile pixels -> model pixels
    anchor_sizes: tuple[int, ...] = (40, 56, 80)  # model pixels (light: one feature map)
    aspect_ratios: tuple[float, ...] = (0.6, 1.0, 1.6)
    channels: tuple[int, ...] = (16, 32, 48, 64)
    representation: int = 128
    image_mean: tuple[float, ...] = (0.85, 0.8, 0.85)
    image_std: tuple[float, ...] = (0.15, 0.15, 0.15)
    detections_per_img: int = 300
    # the training convention the boxes follow, needed to read detections back as PTCs
    margins: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_MARGINS))
    target_mpp: float = 0.5

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DetectorConfig:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        for key in ("anchor_sizes", "aspect_ratios", "channels", "image_mean", "image_std"):
            if key in known:
                known[key] = tuple(known[key])
        return cls(**known)


def _fixed_scale_transform(scale: float, mean, std):
    import torch
    from torchvision.models.detection.transform import GeneralizedRCNNTransform

    class FixedScaleTransform(GeneralizedRCNNTransform):
        """Normalise and rescale every image by the same factor (no min/max-size rule)."""

        def resize(self, image, target=None):
            if scale == 1.0:
                return image, target
            h, w = image.shape[-2:]
            size = (max(1, round(h * scale)), max(1, round(w * scale)))
            image = torch.nn.functional.interpolate(image[None], size=size, mode="bilinear",
                                                    align_corners=False, antialias=scale < 1)[0]
            if target is not None and "boxes" in target:
                ry, rx = size[0] / h, size[1] / w
                target["boxes"] = target["boxes"] * torch.tensor([rx, ry, rx, ry], device=image.device)
            return image, target

    return FixedScaleTransform(min_size=1, max_size=1, image_mean=list(mean), image_std=list(std),
                               size_divisible=32)


def _light_backbone(channels: tuple[int, ...]):
    from torch import nn

    def block(cin, cout, stride=1, dilation=1):
        return [nn.Conv2d(cin, cout, 3, stride, padding=dilation, dilation=dilation, bias=False),
                nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

    c0, c1, c2, c3 = channels
    layers = (block(3, c0, 2) + block(c0, c0) + block(c0, c1, 2) + block(c1, c1) + block(c1, c2, 2)
              + block(c2, c2) + block(c2, c3, dilation=2) + block(c3, c3, dilation=4))
    body = nn.Sequential(*layers)
    body.out_channels = c3  # what FasterRCNN reads
    return body


def build_light_detector(*, config: DetectorConfig | None = None):
    """Small stride-8 CNN backbone + single-level RPN + small box head (about 0.6 M parameters)."""
    from torchvision.models.detection import FasterRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
    from torchvision.ops import MultiScaleRoIAlign

    cfg = config or DetectorConfig()
    backbone = _light_backbone(tuple(cfg.channels))
    anchors = AnchorGenerator(sizes=(tuple(cfg.anchor_sizes),), aspect_ratios=(tuple(cfg.aspect_ratios),))
    roi = MultiScaleRoIAlign(featmap_names=["0"], output_size=7, sampling_ratio=2)
    model = FasterRCNN(backbone, num_classes=None, rpn_anchor_generator=anchors, box_roi_pool=roi,
                       box_head=TwoMLPHead(backbone.out_channels * 49, cfg.representation),
                       box_predictor=FastRCNNPredictor(cfg.representation, cfg.num_classes),
                       min_size=1, max_size=1, rpn_pre_nms_top_n_train=1000, rpn_post_nms_top_n_train=500,
                       rpn_pre_nms_top_n_test=600, rpn_post_nms_top_n_test=300, box_batch_size_per_image=256,
                       box_detections_per_img=cfg.detections_per_img, box_score_thresh=0.05)
    model.transform = _fixed_scale_transform(cfg.input_scale, cfg.image_mean, cfg.image_std)
    return model


def build_resnet50_fpn_detector(*, config: DetectorConfig | None = None, weights=None, weights_backbone=None):
    """torchvision's ResNet-50-FPN Faster R-CNN with our 3 classes (no pretrained download)."""
    from torchvision.models.detection import fasterrcnn_resnet50_fpn

    if weights is not None or weights_backbone is not None:
        raise ModelError("pretrained torchvision weights are not downloaded; load medseg weights with --weights")
    cfg = config or DetectorConfig(arch="resnet50-fpn", input_scale=1.0, image_mean=(0.485, 0.456, 0.406),
                                   image_std=(0.229, 0.224, 0.225))
    model = fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=cfg.num_classes,
                                    box_detections_per_img=cfg.detections_per_img, min_size=1, max_size=1)
    model.transform = _fixed_scale_transform(cfg.input_scale, cfg.image_mean, cfg.image_std)
    return model


def resnet50_config() -> DetectorConfig:
    return DetectorConfig(arch="resnet50-fpn", input_scale=1.0, image_mean=(0.485, 0.456, 0.406),
                          image_std=(0.229, 0.224, 0.225), anchor_sizes=(), aspect_ratios=(), channels=())


def build_detector(*, config: DetectorConfig):
    if config.arch == "light":
        return build_light_detector(config=config)
    if config.arch == "resnet50-fpn":
        return build_resnet50_fpn_detector(config=config)
    raise ModelError(f"unknown detector architecture {config.arch!r} (light or resnet50-fpn)")


class Detector:
    """A loaded model + its config on a device: uint8 tiles in, boxes in tile pixels out."""

    def __init__(self, model, config: DetectorConfig, device, *, amp_dtype=None, source: str = "") -> None:
        self.model = model.to(device).eval()
        self.config = config
        self.device = device
        self.amp_dtype = amp_dtype
        self.source = source

    def predict(self, tiles: np.ndarray, *, min_score: float = 0.5) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """``tiles`` uint8 (B, H, W, 3) -> per tile (boxes (N, 4) xyxy, labels (N,), scores (N,))."""
        import torch

        from medseg.engine.batching import to_device
        from medseg.engine.runtime import autocast

        batch = to_device(tiles, self.device).permute(0, 3, 1, 2).float().div_(255.0)
        with torch.inference_mode(), autocast(self.device, self.amp_dtype):
            outputs = self.model(list(batch))
        result = []
        for out in outputs:
            keep = out["scores"] >= min_score
            result.append((out["boxes"][keep].float().cpu().numpy(), out["labels"][keep].cpu().numpy(),
                           out["scores"][keep].float().cpu().numpy()))
        return result


def load_detector(path: str | Path, *, device=None, amp_dtype=None) -> Detector:
    """Rebuild the model described by the weights' metadata; ModelError for the wrong weights."""
    import torch

    from medseg.engine.checkpoint import load_weights

    state, meta = load_weights(path, expect_model=MODEL_NAME)
    try:
        config = DetectorConfig.from_dict(meta.config)
        model = build_detector(config=config)
        model.load_state_dict(state, strict=True)
    except (RuntimeError, TypeError, ValueError) as exc:
        first = str(exc).splitlines()[0]
        raise ModelError(f"weights do not fit the {meta.config.get('arch', '?')} detector: {first}", path=path) from None
    return Detector(model, config, device or torch.device("cpu"), amp_dtype=amp_dtype, source=str(path))


def config_dict(config: DetectorConfig) -> dict[str, Any]:
    return asdict(config)
