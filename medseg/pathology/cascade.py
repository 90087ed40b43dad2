"""IDK cascade (Wang et al. 2017): a tiny tile gate decides where the PTC detector must run.

The gate is a ~12 k-parameter CNN that looks at a tile at a quarter of its resolution (1024 px ->
256 px) and gives a calibrated probability that the tile holds *any* PTC (C4d+ or C4d-): a
per-location score map reduced by its maximum, so one PTC anywhere is enough. Only tiles it is
confidently sure are empty (probability below ``skip_below``, chosen on held-out tiles so that
no tile with a PTC fell below it) skip the detector; every other tile is "I don't know" and goes
to the detector. The gate never decides a *class*: C4d-negative PTCs have no DAB, and "no DAB"
is not "no PTC", so it is trained on slides with only C4d- PTCs too.

:class:`CascadeDetector` has the interface of :class:`medseg.pathology.detector.Detector`
(``predict(tiles, min_score=...)``, ``config``, ``source``, ``describe()``), so the scoring code
does not change; it counts the tiles it kept from the detector (per slide: :meth:`slide_fields`).
"""

from __future__ import annotations

import logging
import math
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medseg.errors import ModelError

log = logging.getLogger("medseg.pathology")

GATE_MODEL = "c4d-cascade-gate"
# trained on synthetic slides (scripts/make_cascade_gate_pathology.py); not for clinical use
DEMO_GATE = "pathology/c4d_cascade_gate_demo.safetensors"


@dataclass
class GateConfig:
    """The gate's architecture and its calibration (stored in the weights' metadata)."""

    downsample: int = 4  # tile px per gate px: 1024 px tiles at 0.5 um/px are seen at 2 um/px
    channels: tuple[int, ...] = (8, 16, 24, 32)
    temperature: float = 1.0  # logits / temperature -> calibrated probability (fit on held-out tiles)
    skip_below: float = 0.02  # calibrated P(any PTC) under which a tile skips the detector
    target_mpp: float = 0.5  # the resolution of the tiles it was trained on
    # "holds a PTC" = a PTC centre this far inside the tile (px): the part of a 1024 px tile whose
    # detections slide-score keeps with --overlap 160 (overlap / 2 - 16 px of tolerance)
    core_inset: int = 64

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GateConfig:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        if "channels" in known:
            known["channels"] = tuple(known["channels"])
        return cls(**known)


def build_gate(*, config: GateConfig | None = None):
    """Stride-2 conv blocks and a 1 x 1 score map, reduced by its maximum (one logit per tile)."""
    from torch import nn

    cfg = config or GateConfig()

    class Gate(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            layers, cin = [], 3
            for cout in cfg.channels:  # no batch norm: training and inference compute the same thing
                layers += [nn.Conv2d(cin, cout, 3, 2, 1), nn.ReLU(inplace=True)]
                cin = cout
            self.body = nn.Sequential(*layers)
            self.score = nn.Conv2d(cin, 1, 1)

        def forward(self, x):
            x = (x - 0.8) / 0.15  # stained tissue on glass: bright, low contrast
            return self.score(self.body(x)).amax(dim=(1, 2, 3))  # any PTC anywhere in the tile

    return Gate()


def downsample_tiles(batch, factor: int):
    """uint8 (B, H, W, 3) tiles (tensor) -> float (B, 3, H/f, W/f) in [0, 1], area-averaged: what
    the gate sees, at training and at scoring alike."""
    import torch

    x = batch.permute(0, 3, 1, 2).float().div_(255.0)
    return torch.nn.functional.avg_pool2d(x, factor) if factor > 1 else x


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """Temperature scaling: the T minimising the log-loss of sigmoid(logit / T) on held-out tiles."""
    logits, labels = np.asarray(logits, float), np.asarray(labels, float)
    best, best_t = math.inf, 1.0
    for t in np.exp(np.linspace(np.log(0.05), np.log(20), 200)):
        p = np.clip(1 / (1 + np.exp(-logits / t)), 1e-7, 1 - 1e-7)
        loss = -np.mean(labels * np.log(p) + (1 - labels) * np.log(1 - p))
        if loss < best:
            best, best_t = loss, float(t)
    return best_t


def choose_skip_threshold(
    probs: np.ndarray, labels: np.ndarray, *, safety: float = 0.9, cap: float = 0.05
) -> float:
    """The band's lower edge: ``safety`` x the lowest probability of a held-out tile that holds a PTC,
    at most ``cap`` (a tile is skipped only when the gate is at least that sure it is empty)."""
    probs, labels = np.asarray(probs, float), np.asarray(labels, bool)
    if not labels.any():
        raise ValueError("no held-out tile with a PTC: the skip threshold cannot be calibrated")
    return float(min(cap, safety * probs[labels].min()))


class TileGate:
    """The gate behind the engine Predictor: uint8 tiles in, calibrated P(any PTC) out."""

    def __init__(self, model, config: GateConfig, *, device: Any = "cpu", source: str = "") -> None:
        from medseg.engine.predictor import Predictor

        self.config = config
        self.source = source
        factor = int(config.downsample)
        self.predictor = Predictor(
            model,
            device=device,
            amp="off",
            channels_last=True,
            prepare=lambda b: downsample_tiles(b, factor),
            postprocess="float",
        )

    def probabilities(self, tiles: np.ndarray) -> np.ndarray:
        logits = np.asarray(self.predictor(np.ascontiguousarray(tiles)), float).reshape(-1)
        return 1 / (1 + np.exp(-logits / self.config.temperature))


def load_gate(path: str | Path, *, device: Any = "cpu") -> TileGate:
    """Rebuild the gate from its weights; ModelError for weights of another model."""
    from medseg.engine.checkpoint import load_weights

    state, meta = load_weights(path, expect_model=GATE_MODEL)
    try:
        config = GateConfig.from_dict(meta.config)
        model = build_gate(config=config)
        model.load_state_dict(state, strict=True)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise ModelError(
            f"weights do not fit the cascade gate: {str(exc).splitlines()[0]}", path=path
        ) from None
    return TileGate(model, config, device=device, source=str(path))


class CascadeDetector:
    """The detector behind a gate: tiles the gate is sure are empty get no detections without
    running the detector; the others go to it. Same interface as the detector it wraps."""

    def __init__(self, detector, gate: TileGate) -> None:
        from medseg.pathology.maskrcnn import detection_columns

        self.detector = detector
        self.gate = gate
        self.config = detector.config
        self.source = getattr(detector, "source", "")
        self._columns = detection_columns(getattr(detector.config, "arch", "light"))
        self._lock = threading.Lock()
        # live counters: describe() hands out this dict, so a run summary built from it is current
        self.stats = {
            "tiles_gated": 0,
            "tiles_skipped": 0,
            "gate": gate.source,
            "skip_below": gate.config.skip_below,
        }
        self._slide = [0, 0]  # tiles gated, skipped since the last slide_fields()

    def describe(self) -> dict[str, Any]:
        base = self.detector.describe() if hasattr(self.detector, "describe") else {}
        return {**base, "cascade": self.stats}

    def predict(
        self, tiles: np.ndarray, *, min_score: float = 0.5
    ) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        tiles = np.asarray(tiles)
        run = self.gate.probabilities(tiles) >= self.gate.config.skip_below
        empty = (np.zeros((0, self._columns), np.float32), np.zeros(0, np.int64), np.zeros(0, np.float32))
        out: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = [empty] * len(tiles)
        if run.any():
            for i, dets in zip(np.flatnonzero(run), self.detector.predict(tiles[run], min_score=min_score)):
                out[i] = dets
        skipped = int((~run).sum())
        with self._lock:
            self.stats["tiles_gated"] += len(tiles)
            self.stats["tiles_skipped"] += skipped
            self._slide[0] += len(tiles)
            self._slide[1] += skipped
        return out

    def slide_fields(self) -> dict[str, Any]:
        """What a slide summary records (the tiles since the previous call: call it once per slide)."""
        with self._lock:
            gated, skipped = self._slide
            self._slide = [0, 0]
        return {"cascade": True, "cascade_tiles_gated": gated, "cascade_tiles_skipped": skipped}


def load_cascade(
    weights: str | Path | None = None,
    gate_weights: str | Path | None = None,
    *,
    device: Any = "auto",
    amp: str | bool | None = "auto",
) -> tuple[CascadeDetector, bool]:
    """The detector (``weights``, default the demo one) behind the gate (``gate_weights``, default
    the demo gate): (cascade, whether demo weights are used). The gate runs on the detector's device."""
    from medseg.engine.weights import resolve_weights
    from medseg.pathology.detector import DEMO_WEIGHTS, load_detector

    det_path, det_demo = resolve_weights(weights, demo=DEMO_WEIGHTS)
    gate_path, gate_demo = resolve_weights(gate_weights, demo=DEMO_GATE)
    detector = load_detector(det_path, device=device, amp=amp)
    gate = load_gate(gate_path, device=detector.device)
    if abs(gate.config.target_mpp - detector.config.target_mpp) > 1e-6:
        log.warning(
            "the cascade gate was trained at %g um/px, the detector at %g um/px",
            gate.config.target_mpp,
            detector.config.target_mpp,
        )
    return CascadeDetector(detector, gate), det_demo or gate_demo


def gate_meta(config: GateConfig, metrics: dict[str, Any], training_data: str):
    """Checkpoint metadata of gate weights (the calibration lives in the config)."""
    from medseg.engine.checkpoint import CheckpointMeta

    return CheckpointMeta(
        model=GATE_MODEL,
        task="cascade gate: does a tile hold any PTC (C4d+ or C4d-)?",
        config=asdict(config),
        training_data=training_data,
        normalisation={"input": "RGB uint8 / 255, area-averaged by downsample"},
        metrics=metrics,
        notes="not for clinical use",
    )
