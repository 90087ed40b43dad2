"""``ct-train --init demo|scratch|FILE``: start from the nearest shipped direction, not from noise.

A converter for another vendor's kernels is still a smoothing or a sharpening filter, so the demo
weights of the shipped direction that does the most similar thing are a far better start than
random weights on a CPU budget (measured on the real Philips pair: the nearest direction alone
removes 68 % of the YA->UB and 54 % of the UB->YA RMSE before any training; the wrong one makes it
worse). "Most similar" is measured, because kernel names say nothing across vendors:

- the kernels' names are a shipped direction (``B50f -> B30f``): that one;
- else the sharpness of the training source and target slices (:func:`medseg.ct.fingerprint.
  kernel_fingerprint`) is compared with the sharpness of the shipped kernels on the synthetic
  phantoms they were trained on (:data:`DEMO_SHARPNESS`), and the direction of the same sense
  (smoothing or sharpening) whose source and target lie nearest (sum of the two log distances) wins;
- unmeasurable slices fall back to the names' Siemens number when both have one, else scratch.

The initial weights fix the net's shape and its HU offset (``hu_mean``), so fine-tuning starts
from exactly the shipped function; a net of another shape (``channels``/``depth``) trains from
scratch with a log line, a given FILE that is no CT converter is an input error.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medseg.errors import ModelError

log = logging.getLogger("medseg.ct")

# Measured sharpness of the shipped kernels on the synthetic chest phantoms at 18 HU soft-tissue
# noise (medseg.ct.fingerprint's calibration: B30f about 1, each Siemens step x1.5-2.5).
DEMO_SHARPNESS = {"B10f": 0.5, "B30f": 0.9, "B50f": 2.3, "B70f": 3.4}
INIT_CHOICES = ("demo", "scratch")


@dataclass
class InitChoice:
    """The weights a run starts from (None: scratch) and why, in words."""

    path: str | None
    net: dict | None  # the initial weights' model config (channels, depth, hu_mean)
    description: str
    source_sharpness: float | None = None
    target_sharpness: float | None = None

    def to_dict(self) -> dict:
        return {
            "weights": self.path,
            "description": self.description,
            "source_sharpness": self.source_sharpness,
            "target_sharpness": self.target_sharpness,
        }


def _demo_directions() -> list[tuple[str, str, Path]]:
    from medseg.ct.models import DEMO_MODELS, demo_file_name

    out = []
    for a in DEMO_SHARPNESS:
        for b in DEMO_SHARPNESS:
            path = Path(DEMO_MODELS) / demo_file_name(a, b)
            if a != b and path.is_file():
                out.append((a, b, path))
    return out


def measured_sharpness(stack: np.ndarray, pixel_mm: float | None) -> float:
    """Fingerprint sharpness of up to 16 slices of an int16 HU stack (NaN when unmeasurable)."""
    from medseg.ct.fingerprint import kernel_fingerprint

    if len(stack) == 0 or min(stack.shape[1:]) < 16:
        return math.nan
    px = pixel_mm or 1.0
    try:
        return float(kernel_fingerprint(stack, (px, px)).sharpness)
    except ValueError:
        return math.nan


def nearest_direction(
    source_sharpness: float, target_sharpness: float
) -> tuple[str, str, Path, float] | None:
    """The shipped direction of the same sense whose kernels' sharpness lies nearest; None if none."""
    if not (source_sharpness > 0 and target_sharpness > 0) or source_sharpness == target_sharpness:
        return None
    sharpening = target_sharpness > source_sharpness
    best = None
    for a, b, path in _demo_directions():
        if (DEMO_SHARPNESS[b] > DEMO_SHARPNESS[a]) != sharpening:
            continue
        d = abs(math.log(source_sharpness / DEMO_SHARPNESS[a])) + abs(
            math.log(target_sharpness / DEMO_SHARPNESS[b])
        )
        if best is None or d < best[3]:
            best = (a, b, path, d)
    return best


def _nominal(name: str) -> float | None:
    """The shipped kernels' sharpness interpolated at a Siemens-style name's number (B40f -> 1.6)."""
    from medseg.ct.fingerprint import nominal_sharpness_order

    order = nominal_sharpness_order(name)
    if order is None:
        return None
    xs = [10.0, 30.0, 50.0, 70.0]
    return float(np.exp(np.interp(order, xs, np.log(list(DEMO_SHARPNESS.values())))))


def resolve_init(
    init: str,
    source: str,
    target: str,
    train_xy: tuple[np.ndarray, np.ndarray],
    pixel_mm: float | None,
    *,
    channels: int,
    depth: int,
) -> InitChoice:
    """``--init``: 'demo' (nearest shipped direction), 'scratch', or a weights FILE."""
    from medseg.ct.model import MODEL_NAME
    from medseg.engine.checkpoint import read_meta, read_meta_for

    if init == "scratch":
        return InitChoice(None, None, "scratch (random weights)")
    if init != "demo":
        path = Path(init)
        if not path.is_file():
            raise ModelError("--init: weights file not found", path=path)
        meta = read_meta_for(path, MODEL_NAME, "--init: weights of {model}, not a CT kernel converter")
        return InitChoice(str(path), meta.config, f"the given weights {path.name} ({meta.task})")
    directions = _demo_directions()
    if not directions:
        log.warning("no demo CT weights installed: training from scratch")
        return InitChoice(None, None, "scratch (no demo weights installed)")
    demo_net = read_meta(directions[0][2]).config
    if (int(demo_net.get("channels", 0)), int(demo_net.get("depth", 0))) != (channels, depth):
        log.info(
            "a net of %d channels x %d layers is not the demo net's shape: training from scratch",
            channels,
            depth,
        )
        return InitChoice(None, None, f"scratch (a {channels}x{depth} net is not the demo net's shape)")
    for a, b, path in directions:
        if (a.casefold(), b.casefold()) == (source.casefold(), target.casefold()):
            return InitChoice(str(path), read_meta(path).config, f"the shipped demo weights {a}->{b}")
    s_src, s_tgt = (measured_sharpness(stack, pixel_mm) for stack in train_xy)
    how = f"measured sharpness {source} {s_src:.2f}, {target} {s_tgt:.2f}"
    pick = nearest_direction(s_src, s_tgt)
    if pick is None:
        n_src, n_tgt = _nominal(source), _nominal(target)
        if n_src is not None and n_tgt is not None:
            pick, how = nearest_direction(n_src, n_tgt), f"sharpness from the names {source}, {target}"
    if pick is None:
        log.warning(
            "%s: no shipped direction to start from (unmeasured or equal): training from scratch", how
        )
        return InitChoice(None, None, f"scratch ({how}: no nearest shipped direction)", s_src, s_tgt)
    a, b, path, _ = pick
    text = (
        f"the nearest shipped direction {a}->{b} (demo weights; {how}; "
        f"{'sharpening' if DEMO_SHARPNESS[b] > DEMO_SHARPNESS[a] else 'smoothing'}, shipped kernels "
        f"{DEMO_SHARPNESS[a]:g} -> {DEMO_SHARPNESS[b]:g})"
    )
    log.info("starting from %s", text)
    return InitChoice(str(path), read_meta(path).config, text, s_src, s_tgt)
