"""Train a cell U-Net with the pixel-wise weighted cross-entropy of the 2015 paper.

Targets: instance masks (or binary masks, split into connected components) become a
foreground target in which the pixels where two cells touch are background, and a border
weight map that stresses those thin lines (``medseg.cells.weights``). Patches are drawn at
random with mirrored context, elastically deformed, flipped and rotated. Each epoch ends with
a validation pass (overlap-tile inference + instance separation, pixel IoU) and checkpoints:
``last.safetensors``, ``best.safetensors`` (inference weights with metadata) and
``state.pt`` (optimizer etc., for ``resume``).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from medseg.cells.augment import AugmentConfig, augment
from medseg.cells.instances import InstanceConfig, instances_from_probability
from medseg.cells.model import CellModelConfig, build_model, model_margin, valid_tile
from medseg.cells.weights import WeightMapConfig, border_weight_map, separate_touching
from medseg.engine.checkpoint import (
    CheckpointMeta,
    load_training_state,
    load_weights,
    save_training_state,
    save_weights,
)
from medseg.engine.runtime import seed_everything
from medseg.engine.tiling import extract_tile
from medseg.errors import InputError, ModelError
from medseg.io.atomic import write_text

log = logging.getLogger("medseg.cells")

MODEL_NAME = "medseg-cells-unet"
TASK = "cell-foreground-with-borders"


@dataclass
class TrainConfig:
    model: CellModelConfig = field(default_factory=CellModelConfig)
    weights: WeightMapConfig = field(default_factory=WeightMapConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    instances: InstanceConfig = field(default_factory=InstanceConfig)
    epochs: int = 20
    steps_per_epoch: int = 50
    batch_size: int = 4
    tile: int = 316  # input patch size (rounded up to one the arch accepts)
    lr: float = 1e-3
    weight_decay: float = 0.0
    val_fraction: float = 0.2
    seed: int = 0
    max_minutes: float | None = None  # stop (after a checkpoint) when this much time has passed
    training_data: str = ""  # free text stored in the weights' metadata

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _Sample:
    image: np.ndarray  # (H, W) float32 normalised
    target: np.ndarray  # (H, W) int64, 1 = cell (touching borders removed)
    weight: np.ndarray  # (H, W) float32
    labels: np.ndarray  # (H, W) int32 instances, for validation


def prepare_sample(image: np.ndarray, labels: np.ndarray, config: WeightMapConfig) -> _Sample:
    """Precompute target and weight map once per image (as in the paper)."""
    if image.shape != labels.shape:
        raise InputError(f"mask size {labels.shape} differs from image size {image.shape}")
    separated = separate_touching(labels)
    weight = border_weight_map(separated, config)
    return _Sample(image.astype(np.float32), (separated > 0).astype(np.int64), weight, labels.astype(np.int32))


def draw_batch(rng: np.random.Generator, samples: list[_Sample], *, batch_size: int, tile: int, margin: int,
               out_size: int, augment_config: AugmentConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random patches: (N,1,tile,tile) input; (N,o,o) target and weights for the output core.

    Context beyond the image border is mirrored, as at inference.
    """
    xs, ts, ws = [], [], []
    crop = (tile - out_size) // 2
    for index in rng.integers(len(samples), size=batch_size):
        s = samples[index]
        h, w = s.image.shape
        y0 = int(rng.integers(0, max(h - out_size, 0) + 1)) - margin
        x0 = int(rng.integers(0, max(w - out_size, 0) + 1)) - margin
        parts = [extract_tile(a, y0, x0, (tile, tile)) for a in (s.image, s.target, s.weight)]
        image, target, weight = augment(rng, parts, [1, 0, 1], augment_config)
        xs.append(image[None])
        ts.append(target[crop:crop + out_size, crop:crop + out_size])
        ws.append(weight[crop:crop + out_size, crop:crop + out_size])
    return (torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(ts).astype(np.int64)),
            torch.from_numpy(np.stack(ws).astype(np.float32)))


def weighted_cross_entropy(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Pixel-wise weighted cross-entropy (softmax over classes), averaged over pixels."""
    if logits.shape[-2:] != target.shape[-2:]:
        raise ValueError(f"logits {tuple(logits.shape)} and target {tuple(target.shape)} differ in size")
    return (F.cross_entropy(logits.float(), target, reduction="none") * weight).mean()


def validate(model: torch.nn.Module, config: TrainConfig, samples: list[_Sample], device: torch.device) -> float:
    """Mean pixel IoU of the segmented instances (foreground) against the masks."""
    from medseg.cells.predict import predict_image

    if not samples:
        return float("nan")
    ious = []
    for s in samples:
        prob = predict_image(model, config.model, s.image, device=device, tile=config.tile,
                             batch_size=config.batch_size)[1]
        pred = instances_from_probability(prob, config.instances) > 0
        truth = s.labels > 0
        union = np.logical_or(pred, truth).sum()
        ious.append(np.logical_and(pred, truth).sum() / union if union else 1.0)
    model.train()
    return float(np.mean(ious))


def make_meta(config: TrainConfig, metrics: dict[str, Any]) -> CheckpointMeta:
    return CheckpointMeta(
        model=MODEL_NAME, task=TASK, config=config.model.to_dict(),
        training_data=config.training_data or "user-supplied image/mask pairs",
        normalisation={"method": "percentile", "low": 1.0, "high": 99.8, "channels": "luminance"},
        notes=json.dumps({"instances": asdict(config.instances), "tile": config.tile, "seed": config.seed}),
        metrics=metrics,
    )


def load_model(path: str | Path, device: torch.device | None = None) -> tuple[torch.nn.Module, CellModelConfig, CheckpointMeta]:
    """Rebuild a cell model from a weights file (safetensors with medseg metadata)."""
    state, meta = load_weights(path, expect_model=MODEL_NAME)
    config = CellModelConfig.from_dict(meta.config)
    model = build_model(config=config)
    try:
        model.load_state_dict({k: v.float() for k, v in state.items()})
    except RuntimeError as exc:
        raise ModelError(f"weights do not fit the {config.arch} model they describe: {str(exc).splitlines()[0]}",
                         path=path) from None
    model.eval()
    if device is not None:
        model.to(device)
    return model, config, meta


def train(pairs: list[tuple[np.ndarray, np.ndarray]], out_dir: str | Path, *, config: TrainConfig,
          device: torch.device, val_pairs: list[tuple[np.ndarray, np.ndarray]] | None = None,
          resume: bool = False, half_weights: bool = False) -> dict[str, Any]:
    """Train on (normalised image, instance labels) pairs; write checkpoints into ``out_dir``.

    Without ``val_pairs`` a ``val_fraction`` of the pairs is held out. ``half_weights`` stores the
    inference weights as float16 (half the size; they are loaded back as float32).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if not pairs:
        raise InputError("no usable image/mask pairs to train on")
    rng = seed_everything(config.seed)
    samples = [prepare_sample(i, m, config.weights) for i, m in pairs]
    if val_pairs is None:
        n_val = int(round(len(samples) * config.val_fraction)) if len(samples) > 1 else 0
        order = rng.permutation(len(samples))
        val = [samples[i] for i in order[:n_val]]
        samples = [samples[i] for i in order[n_val:]]
    else:
        val = [prepare_sample(i, m, config.weights) for i, m in val_pairs]
    model = build_model(config=config.model).to(device)
    margin = model_margin(config.model)
    tile = valid_tile(config.model, config.tile)
    with torch.no_grad():
        out_size = model.eval()(torch.zeros(1, config.model.in_channels, tile, tile, device=device)).shape[-1]
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(config.epochs, 1))
    history: list[dict[str, Any]] = []
    start_epoch, best = 0, -1.0
    state_path = out_dir / "state.pt"
    if resume:
        state = load_training_state(state_path)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_epoch, best, history = int(state["epoch"]) + 1, float(state["best"]), list(state["history"])
        log.info("resuming at epoch %d (best val IoU so far %.4f)", start_epoch, best)
    write_text(out_dir / "train_config.json", json.dumps(config.to_dict(), indent=2))
    t0 = time.monotonic()
    log.info("training %s (base %d) on %d images, %d for validation; tile %d -> %d, %s",
             config.model.arch, config.model.base_channels, len(samples), len(val), tile, out_size, device)
    for epoch in range(start_epoch, config.epochs):
        model.train()
        epoch_rng = np.random.default_rng([config.seed, epoch])
        losses = []
        for _ in range(config.steps_per_epoch):
            x, t, w = draw_batch(epoch_rng, samples, batch_size=config.batch_size, tile=tile, margin=margin,
                                 out_size=out_size, augment_config=config.augment)
            x, t, w = x.to(device), t.to(device), w.to(device)
            loss = weighted_cross_entropy(model(x), t, w)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
        scheduler.step()
        val_iou = validate(model, config, val, device)
        entry = {"epoch": epoch, "loss": float(np.mean(losses)), "val_iou": val_iou,
                 "minutes": (time.monotonic() - t0) / 60}
        history.append(entry)
        log.info("epoch %d: loss %.4f, val IoU %.4f (%.1f min)", epoch, entry["loss"], val_iou, entry["minutes"])
        metrics = {"val_pixel_iou": val_iou, "epoch": epoch}
        weights = {k: (v.half() if half_weights and v.is_floating_point() else v) for k, v in model.state_dict().items()}
        save_weights(out_dir / "last.safetensors", weights, make_meta(config, metrics))
        if not np.isfinite(val_iou) or val_iou >= best:
            best = val_iou if np.isfinite(val_iou) else best
            save_weights(out_dir / "best.safetensors", weights, make_meta(config, metrics))
        save_training_state(state_path, {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                         "scheduler": scheduler.state_dict(), "epoch": epoch, "best": best,
                                         "history": history})
        if config.max_minutes is not None and entry["minutes"] >= config.max_minutes:
            log.info("time budget of %.1f min reached after epoch %d", config.max_minutes, epoch)
            break
    summary = {"out_dir": str(out_dir), "epochs_run": len(history), "best_val_iou": best, "history": history,
               "train_images": len(samples), "val_images": len(val)}
    write_text(out_dir / "train_summary.json", json.dumps(summary, indent=2))
    return summary
