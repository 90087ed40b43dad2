"""Training samples of the cell nets: targets and weight maps precomputed once per image, random
patches drawn with augmentation, scale and intensity jitter (what ``cells-train`` feeds the net)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from medseg.cells.augment import AugmentConfig, augment
from medseg.cells.targets import (
    BORDERS,
    MAX_CLASS_WEIGHT,
    make_targets,
)
from medseg.cells.weights import WeightMapConfig
from medseg.engine.tiling import extract_tile
from medseg.errors import InputError

log = logging.getLogger("medseg.cells")


@dataclass
class Sample:
    image: np.ndarray  # (H, W) float32 normalised
    target: np.ndarray  # (H, W) uint8 classes (borders: 1 = cell with touching borders removed)
    weight: np.ndarray  # (H, W) float32
    labels: np.ndarray  # (H, W) int32 instances, for validation
    extra: np.ndarray | None = None  # (H, W) float16 regression target (dist), else None


def prepare_sample(
    image: np.ndarray,
    labels: np.ndarray,
    config: WeightMapConfig,
    kind: str = BORDERS,
    max_class_weight: float = MAX_CLASS_WEIGHT,
    touch_weight: float = 0.0,
) -> Sample:
    """Precompute target and weight map once per image (as in the paper), for the target ``kind``."""
    if image.shape != labels.shape:
        raise InputError(f"mask size {labels.shape} differs from image size {image.shape}")
    target, weight, extra = make_targets(labels, kind, config, max_class_weight, touch_weight)
    return Sample(
        image.astype(np.float32),
        target,
        weight,
        labels.astype(np.int32),
        None if extra is None else extra.astype(np.float16),
    )


def _resize(a: np.ndarray, size: int, order: int) -> np.ndarray:
    """Square patch ``a`` resampled to ``size`` px (bilinear, or nearest for the target)."""
    t = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))[None, None]
    mode = "bilinear" if order else "nearest"
    kwargs = {"align_corners": False} if order else {}
    return F.interpolate(t, size=(size, size), mode=mode, **kwargs)[0, 0].numpy()


def _patch(
    rng: np.random.Generator, s: Sample, *, tile: int, margin: int, out_size: int, scale: float
) -> list[np.ndarray]:
    """Image, target and weight patch of ``tile`` px whose output core lies in the image; with
    ``scale`` != 1 a region of ``tile / scale`` px is cut and resampled (scale jitter: objects look
    ``scale`` times larger)."""
    h, w = s.image.shape
    arrays = [s.image, s.target, s.weight] + ([] if s.extra is None else [s.extra])
    orders = (1, 0, 1, 1)
    if scale == 1.0:
        y0 = int(rng.integers(0, max(h - out_size, 0) + 1)) - margin
        x0 = int(rng.integers(0, max(w - out_size, 0) + 1)) - margin
        return [extract_tile(a, y0, x0, (tile, tile)).astype(np.float32, copy=False) for a in arrays]
    src = max(int(round(tile / scale)), 8)
    core = int(round(out_size / scale))
    m = (src - core) // 2
    y0 = int(rng.integers(0, max(h - core, 0) + 1)) - m
    x0 = int(rng.integers(0, max(w - core, 0) + 1)) - m
    parts = [extract_tile(a, y0, x0, (src, src)) for a in arrays]
    return [_resize(a, tile, order).astype(np.float32) for a, order in zip(parts, orders)]


def _intensity_jitter(rng: np.random.Generator, image: np.ndarray, noise: float) -> np.ndarray:
    """Blur or Gaussian noise (each in a third of the patches): microscopes differ in focus and noise."""
    from scipy.ndimage import gaussian_filter

    if rng.random() < 1 / 3:
        image = gaussian_filter(image, float(rng.uniform(0.5, 1.5)))
    if rng.random() < 1 / 3:
        image = image + rng.normal(0, rng.uniform(0, noise), image.shape)
    return image.astype(np.float32, copy=False)


def draw_batch(
    rng: np.random.Generator,
    samples: list[Sample],
    *,
    batch_size: int,
    tile: int,
    margin: int,
    out_size: int,
    augment_config: AugmentConfig,
    scale_range: tuple[float, float] = (1.0, 1.0),
    noise: float = 0.0,
    probabilities: np.ndarray | None = None,
) -> tuple[torch.Tensor, ...]:
    """Random patches: (N,1,tile,tile) input; (N,o,o) target and weights for the output core (and
    the regression target when the samples carry one, ``dist``).

    Context beyond the image border is mirrored, as at inference. ``scale_range`` (log-uniform),
    ``noise`` (blur / Gaussian noise up to this SD) and ``probabilities`` (which images patches
    come from) are off by default.
    """
    xs, ts, ws, es = [], [], [], []
    crop = (tile - out_size) // 2
    jitter_scale = scale_range != (1.0, 1.0)
    if probabilities is None:
        indices = rng.integers(len(samples), size=batch_size)
    else:
        indices = rng.choice(len(samples), size=batch_size, p=probabilities)
    for index in indices:
        scale = float(np.exp(rng.uniform(*np.log(scale_range)))) if jitter_scale else 1.0
        parts = _patch(rng, samples[index], tile=tile, margin=margin, out_size=out_size, scale=scale)
        image, target, weight, *extra = augment(rng, parts, [1, 0, 1, 1][: len(parts)], augment_config)
        if noise > 0:
            image = _intensity_jitter(rng, image, noise)
        xs.append(image[None])
        ts.append(target[crop : crop + out_size, crop : crop + out_size])
        ws.append(weight[crop : crop + out_size, crop : crop + out_size])
        es += [e[crop : crop + out_size, crop : crop + out_size] for e in extra]
    batch = (
        torch.from_numpy(np.stack(xs).astype(np.float32, copy=False)),
        torch.from_numpy(np.rint(np.stack(ts)).astype(np.int64)),
        torch.from_numpy(np.stack(ws).astype(np.float32)),
    )
    if es:
        return (*batch, torch.from_numpy(np.stack(es).astype(np.float32)))
    return batch
