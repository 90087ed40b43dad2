"""Segment the cells of one image: stain and size decided, overlap-tile U-Net, instances.

:class:`CellSegmenter` holds the nets (built on first use) and turns one image's planes into
instance labels and maps; the batch around it (outputs, resume, summary, report) is
:mod:`medseg.cells.batch`.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from medseg.cells.instances import InstanceConfig, instances_from_maps
from medseg.cells.model import DEMO_COMPANIONS, DEMO_WEIGHTS, DEMO_WEIGHTS_BY_STAIN
from medseg.cells.stain import (
    StainDecision,
    detect_stain,
    he_plane_of,
    normalise_for_stain,
    nuclear_plane,
    uses_local_contrast,
)
from medseg.errors import InputError, ModelError

if TYPE_CHECKING:
    from medseg.engine.predictor import Predictor

log = logging.getLogger("medseg.cells")

COMMAND = "cells-segment"
SUMMARY, REPORT = "summary.json", "report.html"
MAX_FIGURES = 6  # overlays kept (as thumbnails) for the report
THUMB_EDGE = 768


@dataclass
class SegmentConfig:
    weights: str | Path | None = None  # None: the shipped demo weights (with a warning)
    device: str = "auto"
    amp: str = "auto"  # auto: bf16/fp16 on CUDA, fp32 on CPU
    tile: int = 512  # output tile edge (the whole image when smaller), plus the net's margin around it
    batch_size: int = 4  # tiles per forward pass
    save_probability: bool = False
    channel: int | None = None  # channel of a multi-channel image (None: RGB stays colour, else the first)
    stain: str = "auto"  # auto | fluo | phase | he | ihc
    # typical cell diameter: px (or um with pixel_size); "auto" (default: estimated by first passes at
    # scale 1 and 1/2); None: the model's own scale. auto chosen on the 60 real DSB validation images:
    # dataset AP@0.5 0.657 vs 0.631 (zoomed 2x, as 40x against 20x: 0.590 vs 0.400)
    diameter: float | str | None = "auto"
    pixel_size: float | None = None  # um per pixel: then ``diameter`` is in um
    instances: InstanceConfig = field(default_factory=InstanceConfig)
    report: bool = True
    overwrite: bool = False
    resume: bool = False
    progress: bool = False

    def settings(self) -> dict[str, Any]:
        """What decides the outputs (compared on --resume)."""
        return {
            "tile": self.tile,
            "save_probability": self.save_probability,
            "channel": self.channel,
            "stain": self.stain,
            "diameter": self.diameter,
            "pixel_size": self.pixel_size,
            "instances": asdict(self.instances),
        }


DEFAULT_TRAIN_DIAMETER = 23.0  # px: median cell diameter of the synthetic training images
AUTO_MIN_CELLS = 3  # a first pass needs this many cells to estimate the diameter
# rescale only when the estimate is off the training scale by more than the training's scale jitter
# (0.6-1.6) covers: 0.1, 0.25 and 0.4 tie on the 20 held-out DSB training images (AP@0.5 0.683-0.684
# native, 0.584-0.585 zoomed 2x; 0.6: 0.633 / 0.527), and 0.4 saves the third pass on most images
AUTO_TOLERANCE = 0.4
AUTO_HALF_BELIEF = 0.9  # the 1/2 pass is believed when its cells are >= this x the training size there


@dataclass
class PlaneResult:
    prob: np.ndarray  # (H, W) cell probability at the input size (what --save-prob writes)
    labels: np.ndarray  # (H, W) instances at the input size
    nuclear: np.ndarray  # (H, W) the plane the net read, raw units (for the table and overlay)
    stain: StainDecision
    diameter: float | None  # the diameter used (px of the input), None: the model's own scale
    scale: float  # input -> model scale factor
    maps: np.ndarray | None = None  # (K, H, W) the net's output maps (decoded as its target says)
    weights: str = ""  # file name of the weights that ran (a stain's specialist or the main model)


def _check_device(config: SegmentConfig) -> None:
    """Resolve the device, precision and runtime as the Predictor will (raising what it would raise)."""
    from medseg.engine.openvino_runtime import resolve_runtime
    from medseg.engine.runtime import resolve_amp_dtype, select_device

    device = select_device(str(config.device))
    resolve_runtime(None, device_type=device.type, amp_dtype=resolve_amp_dtype(device, config.amp))


def train_diameter(meta: Any) -> float:
    """Median cell diameter (px) of the weights' training data (stored in ``notes``) or the default."""
    try:
        value = float(json.loads(meta.notes or "{}").get("diameter") or DEFAULT_TRAIN_DIAMETER)
    except (ValueError, TypeError, AttributeError):
        value = DEFAULT_TRAIN_DIAMETER
    return value if value > 0 else DEFAULT_TRAIN_DIAMETER


def median_diameter(labels: np.ndarray) -> float | None:
    """Median equivalent-circle diameter of the instances (None below AUTO_MIN_CELLS cells)."""
    areas = np.bincount(labels.ravel())[1:]
    areas = areas[areas > 0]
    if areas.size < AUTO_MIN_CELLS:
        return None
    return float(2 * np.sqrt(np.median(areas) / np.pi))


class CellSegmenter:
    """Holds the model behind the engine Predictor; ``segment_plane`` turns a 2D plane into instances."""

    def __init__(self, config: SegmentConfig | None = None, *, specialists: bool = True) -> None:
        from medseg.cells.model import load_model
        from medseg.cells.targets import out_channels, target_of
        from medseg.engine.weights import resolve_weights

        self.config = config or SegmentConfig()
        self.weights, self.is_demo = resolve_weights(self.config.weights, demo=DEMO_WEIGHTS)
        model, self.model_config, self.meta = load_model(self.weights)
        if self.model_config.in_channels != 1:
            raise ModelError(
                f"model expects {self.model_config.in_channels} channels; cells models take 1",
                path=self.weights,
            )
        try:
            self.target = target_of(self.meta.config)
        except ValueError as exc:
            raise ModelError(str(exc), path=self.weights) from None
        if getattr(self.model_config, "num_classes", out_channels(self.target)) != out_channels(self.target):
            raise ModelError(
                f"{self.target} weights need {out_channels(self.target)} output channels, these have "
                f"{self.model_config.num_classes}",
                path=self.weights,
            )
        # the Predictor (for OpenVINO: reading and compiling the converted net, about 0.05 s per net) is built
        # on first use: a batch of H&E images never runs the main nets, nor a fluorescence batch the specialists
        self._model: Any = model
        self._predictor: Predictor | None = None
        _check_device(self.config)  # an unusable --device / --amp / --runtime is refused now, not at image 1

        self.train_diameter = train_diameter(self.meta)
        # without --weights, the shipped per-stain specialists take their stains (loaded on first use), and
        # the shipped companions (DEMO_COMPANIONS) are averaged with the main net: two independently trained
        # nets, the one lever that beat the single net on held-out and validation images alike
        self.stain_weights: dict[str, Path] = {}
        self._specialists: dict[Path, CellSegmenter] = {}
        self.companions: list[CellSegmenter] = []
        if self.is_demo and specialists:
            from medseg.engine.weights import demo_weights_path

            found = {stain: demo_weights_path(name) for stain, name in DEMO_WEIGHTS_BY_STAIN.items()}
            self.stain_weights = {stain: path for stain, path in found.items() if path.is_file()}
            self.companions = self._shipped_companions(DEMO_WEIGHTS)

    @property
    def predictor(self) -> Predictor:
        """This net's engine Predictor, built on first use."""
        if self._predictor is None:
            from medseg.cells.predict import make_predictor
            from medseg.cells.targets import postprocess_for

            self._predictor = make_predictor(
                self._model,
                device=self.config.device,
                amp=self.config.amp,
                config=self.model_config,
                postprocess=postprocess_for(self.target),
            )
            self._model = None  # the Predictor holds it now
        return self._predictor

    def _described_predictor(self) -> Predictor:
        """The Predictor whose device and runtime a summary reports: this net's if it ran, else a
        specialist's that ran (all are built from one config), else this one's, built now."""
        if self._predictor is None:
            for other in self._specialists.values():
                if other._predictor is not None:
                    return other._predictor
        return self.predictor

    def _shipped_companions(self, name: str) -> list[CellSegmenter]:
        """The installed companions (DEMO_COMPANIONS) of the shipped file ``name``."""
        from medseg.engine.weights import demo_weights_path

        paths = [demo_weights_path(n) for n in DEMO_COMPANIONS.get(name, ())]
        return [self._companion(p) for p in paths if p.is_file()]

    def _companion(self, path: Path) -> CellSegmenter:
        """A net whose maps are averaged with this one's: it must read the same plane and mean the same."""
        other = CellSegmenter(replace(self.config, weights=path), specialists=False)
        local = uses_local_contrast(self.meta.normalisation)
        if other.target != self.target or uses_local_contrast(other.meta.normalisation) != local:
            raise ModelError("a companion net must share the instance target and normalisation", path=path)
        return other

    def for_stain(self, stain: str) -> CellSegmenter:
        """The segmenter whose weights take ``stain``: a shipped specialist, else this one."""
        path = self.stain_weights.get(stain)
        if path is None:
            return self
        if path not in self._specialists:
            other = CellSegmenter(replace(self.config, weights=path), specialists=False)
            other.is_demo = True
            other.companions = other._shipped_companions(DEMO_WEIGHTS_BY_STAIN[stain])
            self._specialists[path] = other
        return self._specialists[path]

    def predict(self, plane: np.ndarray, *, stain: str = "fluo", scale: float = 1.0) -> np.ndarray:
        """Cell probability (H, W) for a raw 2D nuclear plane (see :meth:`predict_maps`)."""
        from medseg.cells.targets import foreground_probability

        return foreground_probability(self.predict_maps(plane, stain=stain, scale=scale), self.target)

    def predict_maps(self, plane: np.ndarray, *, stain: str = "fluo", scale: float = 1.0) -> np.ndarray:
        """The net's output maps (K, H, W) for a raw 2D nuclear plane: rescaled by ``scale`` to the
        model's object size, normalised for ``stain``, predicted, and mapped back to the plane's size."""
        from skimage.transform import rescale, resize

        from medseg.cells.predict import predict_image

        x = plane
        if scale != 1.0:
            x = rescale(plane, scale, order=1, anti_aliasing=scale < 1, preserve_range=True)
            x = x.astype(np.float32, copy=False)
        x = normalise_for_stain(x, stain, local=uses_local_contrast(self.meta.normalisation))
        nets = [self, *self.companions]
        maps = sum(
            predict_image(
                n.predictor, n.model_config, x, tile=self.config.tile, batch_size=self.config.batch_size
            )
            for n in nets
        ) / len(nets)
        if maps.shape[1:] != plane.shape:
            maps = resize(maps, (maps.shape[0], *plane.shape), order=1, preserve_range=True)
            maps = maps.astype(np.float32)
        return maps

    @property
    def weights_name(self) -> str:
        """The file(s) whose maps make this segmenter's output, e.g. ``a.safetensors + b.safetensors``."""
        return " + ".join(p.name for p in [self.weights, *(c.weights for c in self.companions)])

    def _given_diameter(self) -> float | None:
        d = self.config.diameter
        if d is None or d == "auto":
            return None
        d = float(d)
        if d <= 0:
            raise InputError(f"--diameter must be positive, got {d:g}")
        return d / self.config.pixel_size if self.config.pixel_size else d

    def analyse(self, plane: np.ndarray, *, path: Any = None) -> PlaneResult:
        """One plane (gray (H, W) or RGB (H, W, 3)): stain, nuclear plane, size, probability, instances;
        by the weights for its stain (:meth:`for_stain`)."""
        stain = self.config.stain
        decision = detect_stain(plane, path=path) if stain == "auto" else StainDecision(stain, "given")
        return self.for_stain(decision.stain).analyse_as(plane, decision)

    def empty_result(self, plane: np.ndarray, reason: str) -> PlaneResult:
        """No cells in a plane that holds nothing to segment (:func:`medseg.cells.stain.empty_field`)."""
        gray = plane.mean(axis=-1) if plane.ndim == 3 else plane
        zeros = np.zeros(gray.shape, np.float32)
        return PlaneResult(
            prob=zeros,
            labels=np.zeros(gray.shape, np.int32),
            nuclear=gray.astype(np.float32),
            stain=StainDecision("none", reason),
            diameter=None,
            scale=1.0,
        )

    def analyse_as(self, plane: np.ndarray, decision: StainDecision) -> PlaneResult:
        """:meth:`analyse` with the stain decided, by this segmenter's own weights."""
        nuclear = nuclear_plane(plane, decision.stain, he_plane=he_plane_of(self.meta.normalisation))
        diameter = self._given_diameter()
        scale = self.train_diameter / diameter if diameter else 1.0
        maps = self.predict_maps(nuclear, stain=decision.stain, scale=scale)
        labels = instances_from_maps(maps, self.target, self.config.instances)
        if self.config.diameter == "auto":
            estimate = self._estimate_diameter(nuclear, decision.stain, labels)
            if estimate is not None:
                diameter = estimate
                if abs(self.train_diameter / estimate - 1) > AUTO_TOLERANCE:
                    scale = self.train_diameter / estimate
                    maps = self.predict_maps(nuclear, stain=decision.stain, scale=scale)
                    labels = instances_from_maps(maps, self.target, self.config.instances)
        from medseg.cells.targets import foreground_probability

        prob = foreground_probability(maps, self.target)
        return PlaneResult(prob, labels, nuclear, decision, diameter, scale, maps, self.weights_name)

    def _estimate_diameter(self, nuclear: np.ndarray, stain: str, labels: np.ndarray) -> float | None:
        """First passes at scale 1 (``labels``) and 1/2: the median cell diameter each finds, in input
        px. Cells much larger than the training size fragment at scale 1 into pieces of about the
        training size, so the scale-1 pass cannot tell them from cells of the training size; the 1/2
        pass can: where its cells, at that scale, are at least ``AUTO_HALF_BELIEF`` x the training
        diameter, they are big cells seen whole and its estimate is believed; otherwise the scale-1
        estimate (small cells shrink below the size limit at 1/2 and bias it upwards). Chosen on the 20
        held-out DSB training images, native and zoomed 2x, against their annotated diameters (median
        log error 0.06 / 0.06, 0 % / 16 % of images more than 30 % off; the previous rule, the pass
        whose cells were closest to the training size, 0.06 / 0.14 and 0 % / 42 %)."""
        at_half = median_diameter(self._labels_at(nuclear, stain, 0.5))  # px of the half-scale frame
        if at_half is not None and at_half >= AUTO_HALF_BELIEF * self.train_diameter:
            return at_half / 0.5
        full = median_diameter(labels)
        return full if full is not None else (at_half / 0.5 if at_half is not None else None)

    def _labels_at(self, nuclear: np.ndarray, stain: str, scale: float) -> np.ndarray:
        """Instances at ``scale`` (in the rescaled frame, for measuring sizes)."""
        from skimage.transform import rescale

        x = rescale(nuclear, scale, order=1, anti_aliasing=scale < 1, preserve_range=True).astype(np.float32)
        return instances_from_maps(self.predict_maps(x, stain=stain), self.target, self.config.instances)

    def segment_plane(self, plane: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        r = self.analyse(plane)
        return r.prob, r.labels

    def describe(self) -> dict[str, Any]:
        return {
            "weights": str(self.weights),
            "demo_weights": self.is_demo,
            "model": self.model_config.to_dict(),
            "training_data": self.meta.training_data,
            "instance_target": self.target,
            **({"averaged_with": [str(c.weights) for c in self.companions]} if self.companions else {}),
            **(
                {"weights_by_stain": {k: str(v) for k, v in self.stain_weights.items()}}
                if self.stain_weights
                else {}
            ),
            **self._described_predictor().describe(),
        }
