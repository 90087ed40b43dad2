"""PTC detectors (torchvision): Faster R-CNN ResNet-50-FPN for real use, a light one for demos,
the light one with a mask head (Mask R-CNN, ``arch="maskrcnn"``: :mod:`medseg.pathology.maskrcnn`),
and two one-stage detectors with the same interface: YOLOv3 (``arch="yolov3"``,
:mod:`medseg.pathology.yolo`) and CornerNet (``arch="cornernet"``, :mod:`medseg.pathology.cornernet`).

Both take tiles at the target resolution and rescale them internally by ``input_scale`` (fixed,
not torchvision's min/max-size rule), so training crops and 1024 px scoring tiles see objects at
the same size; boxes come back in tile pixels. Nothing is ever downloaded: ``weights=None`` and
``weights_backbone=None`` always.

Classes: 0 background, then :data:`medseg.pathology.labels.LABELS` (1 C4d+, 2 C4d-).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medseg.errors import InputError, ModelError
from medseg.pathology.labels import DEFAULT_MARGINS, NUM_CLASSES

log = logging.getLogger("medseg.pathology")

MODEL_NAME = "c4d-faster-rcnn"
# light detector trained on synthetic slides (scripts/make_sample_data_pathology.py); not for clinical use.
# Relative to the shipped demo folder: resolve with medseg.engine.weights.resolve_weights(None, demo=DEMO_WEIGHTS).
DEMO_WEIGHTS = "pathology/c4d_light_demo.safetensors"


@dataclass
class DetectorConfig:
    """Everything needed to rebuild a detector (stored in the weights' metadata)."""

    arch: str = "light"  # one of ARCHS ("maskrcnn": light + mask head)
    num_classes: int = NUM_CLASSES
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
    # YOLOv3: 9 anchor shapes (w, h) in model pixels, k-means on the training boxes (slide-train);
    # empty: anchor_sizes x aspect_ratios
    anchors: tuple[tuple[float, float], ...] = ()

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DetectorConfig:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        for key in ("anchor_sizes", "aspect_ratios", "channels", "image_mean", "image_std"):
            if key in known:
                known[key] = tuple(known[key])
        if "anchors" in known:
            known["anchors"] = tuple((float(w), float(h)) for w, h in known["anchors"])
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
            image = torch.nn.functional.interpolate(
                image[None], size=size, mode="bilinear", align_corners=False, antialias=scale < 1
            )[0]
            if target is not None and "boxes" in target:
                ry, rx = size[0] / h, size[1] / w
                target["boxes"] = target["boxes"] * torch.tensor([rx, ry, rx, ry], device=image.device)
            if target is not None and "masks" in target and len(target["masks"]):
                masks = target["masks"][:, None].float()
                target["masks"] = torch.nn.functional.interpolate(masks, size=size)[:, 0].byte()
            return image, target

        def postprocess(self, result, image_shapes, original_image_sizes):
            """Boxes back to tile pixels; Mask R-CNN's 28 x 28 masks stay per box (not pasted)."""
            from torchvision.models.detection.transform import resize_boxes

            if self.training:
                return result
            for pred, im_s, o_im_s in zip(result, image_shapes, original_image_sizes):
                pred["boxes"] = resize_boxes(pred["boxes"], im_s, o_im_s)
            return result

    return FixedScaleTransform(
        min_size=1, max_size=1, image_mean=list(mean), image_std=list(std), size_divisible=32
    )


def _light_backbone(channels: tuple[int, ...]):
    from torch import nn

    def block(cin, cout, stride=1, dilation=1):
        return [
            nn.Conv2d(cin, cout, 3, stride, padding=dilation, dilation=dilation, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
        ]

    c0, c1, c2, c3 = channels
    layers = (
        block(3, c0, 2)
        + block(c0, c0)
        + block(c0, c1, 2)
        + block(c1, c1)
        + block(c1, c2, 2)
        + block(c2, c2)
        + block(c2, c3, dilation=2)
        + block(c3, c3, dilation=4)
    )
    body = nn.Sequential(*layers)
    body.out_channels = c3  # what FasterRCNN reads
    return body


def light_rcnn_parts(cfg: DetectorConfig) -> tuple[Any, dict[str, Any]]:
    """Backbone and R-CNN keyword arguments of the light detector, shared by its Faster R-CNN and
    Mask R-CNN variants (:mod:`medseg.pathology.maskrcnn`), so both see tiles the same way."""
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
    from torchvision.ops import MultiScaleRoIAlign

    backbone = _light_backbone(tuple(cfg.channels))
    kwargs = {
        "num_classes": None,
        "rpn_anchor_generator": AnchorGenerator(
            sizes=(tuple(cfg.anchor_sizes),), aspect_ratios=(tuple(cfg.aspect_ratios),)
        ),
        "box_roi_pool": MultiScaleRoIAlign(featmap_names=["0"], output_size=7, sampling_ratio=2),
        "box_head": TwoMLPHead(backbone.out_channels * 49, cfg.representation),
        "box_predictor": FastRCNNPredictor(cfg.representation, cfg.num_classes),
        "min_size": 1,
        "max_size": 1,
        "rpn_pre_nms_top_n_train": 1000,
        "rpn_post_nms_top_n_train": 500,
        "rpn_pre_nms_top_n_test": 600,
        "rpn_post_nms_top_n_test": 300,
        "box_batch_size_per_image": 256,
        "box_detections_per_img": cfg.detections_per_img,
        "box_score_thresh": 0.05,
    }
    return backbone, kwargs


def build_light_detector(*, config: DetectorConfig | None = None):
    """Small stride-8 CNN backbone + single-level RPN + small box head (about 0.6 M parameters)."""
    from torchvision.models.detection import FasterRCNN

    cfg = config or DetectorConfig()
    backbone, kwargs = light_rcnn_parts(cfg)
    model = FasterRCNN(backbone, **kwargs)
    model.transform = _fixed_scale_transform(cfg.input_scale, cfg.image_mean, cfg.image_std)
    return model


def build_resnet50_fpn_detector(*, config: DetectorConfig | None = None, weights=None, weights_backbone=None):
    """torchvision's ResNet-50-FPN Faster R-CNN with our 3 classes (no pretrained download)."""
    from torchvision.models.detection import fasterrcnn_resnet50_fpn

    if weights is not None or weights_backbone is not None:
        raise ModelError(
            "pretrained torchvision weights are not downloaded; load medseg weights with --weights"
        )
    cfg = config or DetectorConfig(
        arch="resnet50-fpn",
        input_scale=1.0,
        image_mean=(0.485, 0.456, 0.406),
        image_std=(0.229, 0.224, 0.225),
    )
    model = fasterrcnn_resnet50_fpn(
        weights=None,
        weights_backbone=None,
        num_classes=cfg.num_classes,
        box_detections_per_img=cfg.detections_per_img,
        min_size=1,
        max_size=1,
    )
    model.transform = _fixed_scale_transform(cfg.input_scale, cfg.image_mean, cfg.image_std)
    return model


def resnet50_config() -> DetectorConfig:
    return DetectorConfig(
        arch="resnet50-fpn",
        input_scale=1.0,
        image_mean=(0.485, 0.456, 0.406),
        image_std=(0.229, 0.224, 0.225),
        anchor_sizes=(),
        aspect_ratios=(),
        channels=(),
    )


def yolov3_config(**kwargs: Any) -> DetectorConfig:
    """Default YOLOv3 config: wider channels than the light R-CNN (no RoI head to hold parameters)."""
    from medseg.pathology.yolo import CHANNELS

    return DetectorConfig(**{"arch": "yolov3", "channels": CHANNELS, **kwargs})


ARCHS = ("light", "resnet50-fpn", "maskrcnn", "yolov3", "cornernet")
# architectures whose weights can start one another (--init-weights): the R-CNNs share their parts
ARCH_FAMILIES = {"light": "rcnn-light", "maskrcnn": "rcnn-light"}
# shipped demo weights per architecture (synthetic slides, not for clinical use)
DEMO_BY_ARCH = {
    "light": DEMO_WEIGHTS,
    "maskrcnn": "pathology/c4d_maskrcnn_demo.safetensors",
    "yolov3": "pathology/c4d_yolov3_demo.safetensors",
    "cornernet": "pathology/c4d_cornernet_demo.safetensors",
}


def config_for(arch: str) -> DetectorConfig:
    """The default config of an architecture (what ``slide-train --arch`` starts from)."""
    if arch == "resnet50-fpn":
        return resnet50_config()
    if arch == "yolov3":
        return yolov3_config()
    if arch not in ARCHS:
        raise ModelError(f"unknown detector architecture {arch!r} ({', '.join(ARCHS)})")
    return DetectorConfig(arch=arch)


def same_family(a: str, b: str) -> bool:
    """Whether weights of architecture ``a`` can initialise architecture ``b``."""
    return ARCH_FAMILIES.get(a, a) == ARCH_FAMILIES.get(b, b)


def weights_for_arch(arch: str | None, weights: str | Path | None) -> tuple[str | Path | None, bool]:
    """``slide-score --arch``: (weights to load, whether they are shipped demo weights).

    No ``arch``: ``weights`` as given (None: the default demo detector, with its warning). With
    ``arch`` and no ``weights``: that architecture's demo weights, or an InputError in words when
    none ship; with both: the weights must hold that architecture (InputError otherwise)."""
    from medseg.engine.checkpoint import read_meta
    from medseg.engine.weights import demo_weights_path

    if arch is None:
        return weights, False
    if arch not in ARCHS:
        raise InputError(f"unknown detector architecture {arch!r}: use one of {', '.join(ARCHS)}")
    if weights is not None:
        held = str(read_meta(weights).config.get("arch", "unknown"))
        if held != arch:
            raise InputError(
                f"--weights hold a {held} detector, not {arch}: leave out --arch or give {arch} weights",
                path=weights,
            )
        return weights, False
    if arch == "light":
        return None, False
    demo = demo_weights_path(DEMO_BY_ARCH[arch]) if arch in DEMO_BY_ARCH else None
    if demo is None or not demo.is_file():
        raise InputError(
            f"no demo weights ship for --arch {arch}: train them with medseg slide-train --arch {arch} "
            "and pass --weights"
        )
    return demo, True


def build_detector(*, config: DetectorConfig):
    if config.arch == "light":
        return build_light_detector(config=config)
    if config.arch == "resnet50-fpn":
        return build_resnet50_fpn_detector(config=config)
    if config.arch == "maskrcnn":
        from medseg.pathology.maskrcnn import build_light_maskrcnn

        return build_light_maskrcnn(config=config)
    if config.arch == "yolov3":
        from medseg.pathology.yolo import build_yolov3

        return build_yolov3(config=config)
    if config.arch == "cornernet":
        try:
            from medseg.pathology.cornernet import build_cornernet
        except ModuleNotFoundError as exc:
            if exc.name != "medseg.pathology.cornernet":
                raise
            raise ModelError("the cornernet detector is not part of this medseg version") from None
        return build_cornernet(config=config)
    raise ModelError(f"unknown detector architecture {config.arch!r} ({', '.join(ARCHS)})")


def postprocess_for(config: DetectorConfig):
    """The Predictor ``postprocess`` of an architecture: boxes, or boxes + outlines (Mask R-CNN)."""
    if config.arch == "maskrcnn":
        from medseg.pathology.maskrcnn import maskrcnn_to_numpy

        return maskrcnn_to_numpy
    return detections_to_numpy


def tiles_to_images(batch):
    """Predictor ``prepare``: uint8 NHWC tiles on the device -> list of float CHW images in [0, 1].

    torchvision detectors take a list of images (their transform normalises, rescales and pads
    them into one batch); the backbone's convolutions run NHWC because the Predictor converted
    the model to ``channels_last`` (about 1.3x faster than NCHW for the light detector on CPU).
    """
    return list(batch.permute(0, 3, 1, 2).float().div_(255.0))


def detections_to_numpy(outputs: list[dict[str, Any]]) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Predictor ``postprocess``: torchvision's list of dicts -> per tile NumPy (boxes, labels, scores)."""
    return [
        (out["boxes"].float().cpu().numpy(), out["labels"].cpu().numpy(), out["scores"].float().cpu().numpy())
        for out in outputs
    ]


class Detector:
    """A detector behind the engine :class:`~medseg.engine.predictor.Predictor`: uint8 tiles in,
    boxes in tile pixels out (Mask R-CNN: each row a box then its outline, see
    :func:`medseg.pathology.maskrcnn.split_detections`). The predictor owns device, AMP,
    channels_last and inference mode."""

    def __init__(
        self,
        model,
        config: DetectorConfig,
        *,
        device: Any = "auto",
        amp: str | bool | None = "auto",
        channels_last: bool = True,
        source: str = "",
        runtime: str | None = None,
    ) -> None:
        from medseg.engine.predictor import Predictor

        self.config = config
        self.source = source
        self.predictor = Predictor(
            model,
            device=device,
            amp=amp,
            channels_last=channels_last,
            prepare=tiles_to_images,
            postprocess=postprocess_for(config),
            # OpenVINO (None: --runtime / auto) runs the backbone (+ FPN), where the time goes; the
            # proposals, NMS and box heads are data-dependent torchvision code and stay on PyTorch
            runtime=runtime,
            openvino_part="backbone",
            example_shape=(1, 3, 256, 256),
        )

    @property
    def device(self):
        return self.predictor.device

    @property
    def model(self):
        return self.predictor.model

    def describe(self) -> dict[str, Any]:
        """Device and precision in words (for summaries and logs)."""
        return self.predictor.describe()

    def predict(
        self, tiles: np.ndarray, *, min_score: float = 0.5
    ) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """``tiles`` uint8 (B, H, W, 3) -> per tile (boxes (N, 4) xyxy, labels (N,), scores (N,));
        Mask R-CNN: (N, 4 + 2K) rows, the box then the enlarged outline."""
        result = []
        for boxes, labels, scores in self.predictor(np.ascontiguousarray(tiles)):
            keep = scores >= min_score
            result.append((boxes[keep], labels[keep], scores[keep]))
        return result


def load_detector(
    path: str | Path, *, device: Any = "auto", amp: str | bool | None = "auto", runtime: str | None = None
) -> Detector:
    """Rebuild the model described by the weights' metadata; ModelError for the wrong weights."""
    from medseg.engine.checkpoint import load_weights

    state, meta = load_weights(path, expect_model=MODEL_NAME)
    try:
        config = DetectorConfig.from_dict(meta.config)
        model = build_detector(config=config)
        model.load_state_dict(state, strict=True)
    except (RuntimeError, TypeError, ValueError) as exc:
        first = str(exc).splitlines()[0]
        raise ModelError(
            f"weights do not fit the {meta.config.get('arch', 'unknown')} detector: {first}", path=path
        ) from None
    return Detector(model, config, device=device, amp=amp, source=str(path), runtime=runtime)


def check_detector_resolution(target_mpp: float, detector) -> None:
    """``--mpp`` must be the detector's training resolution (in its weights): at another every PTC
    has the wrong size in pixels (the demo detector found 0 PTCs at 1.0 where it finds 30 at 0.5)."""
    trained = getattr(getattr(detector, "config", None), "target_mpp", None)
    if not isinstance(trained, (int, float)) or not trained > 0:
        return  # a detector that does not say (a plug-in): the user's --mpp stands
    if abs(target_mpp - trained) > 0.02 * trained:
        raise InputError(
            f"--mpp {target_mpp:g} is not the resolution the detector was trained at "
            f"({trained:g} um/px, stored in its weights): PTCs would have the wrong size in pixels "
            f"and the counts would be wrong; use --mpp {trained:g} (the slide's own scale is "
            "--slide-mpp)"
        )
