"""Overlap-tile inference (Ronneberger et al. 2015) for 2D images of any size.

The image is cut into overlapping input tiles; each tile carries ``margin`` pixels of context
on every side so that every output pixel is computed from its full receptive field. Where the
context falls outside the image it is filled by mirroring (``reflect``), as in the paper.

Works for valid-convolution nets (the predictor returns ``tile - 2*shrink`` pixels, e.g. the
original U-Net's 572 -> 388) and for padded nets (output as large as the input): the engine
reads the predictor's output size, and crops whatever is left of the margin.

Tile origins are multiples of ``align`` (the net's total down-sampling, 16 for 4 poolings), so
the pooling grid of every tile lines up with that of a whole-image pass: overlap-tile output
then equals whole-image output to float tolerance (exactly, up to summation order).

Memory is the output array plus ``prefetch depth x batch`` tiles, whatever the image size.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from medseg.engine.batching import iter_batches, prefetch

log = logging.getLogger("medseg.engine.tiling")

Predictor = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class TilePlan:
    """Where tiles go: input tile size, context margin and the stride of the output grid."""

    tile: tuple[int, int]  # input tile size (h, w) handed to the predictor
    margin: tuple[int, int]  # context per side, (y, x)
    step: tuple[int, int]  # stride between tile origins (multiple of ``align``)
    origins: tuple[tuple[int, int], ...]  # output-space origins (y0, x0) of the tiles

    @property
    def core(self) -> tuple[int, int]:
        return self.tile[0] - 2 * self.margin[0], self.tile[1] - 2 * self.margin[1]


def _pair(value: int | tuple[int, int]) -> tuple[int, int]:
    if isinstance(value, (int, np.integer)):
        return int(value), int(value)
    a, b = value
    return int(a), int(b)


def _axis_origins(size: int, core: int, step: int) -> list[int]:
    """Origins 0, step, 2*step ... until the last core reaches ``size`` (no shifting back)."""
    origins = [0]
    while origins[-1] + core < size:
        origins.append(origins[-1] + step)
    return origins


def plan_tiles(
    shape: tuple[int, int], *, tile: int | tuple[int, int], margin: int | tuple[int, int], align: int = 1
) -> TilePlan:
    """Lay out tiles for an image of ``shape`` (h, w)."""
    tile, margin = _pair(tile), _pair(margin)
    if align < 1:
        raise ValueError("align must be >= 1")
    steps = []
    for t, m in zip(tile, margin):
        core = t - 2 * m
        if m < 0 or core < 1:
            raise ValueError(f"tile {t} leaves no output with margin {m}")
        step = (core // align) * align
        if step < 1:
            raise ValueError(f"tile {t} with margin {m} has an output core {core} smaller than align {align}")
        steps.append(step)
    ys = _axis_origins(shape[0], tile[0] - 2 * margin[0], steps[0])
    xs = _axis_origins(shape[1], tile[1] - 2 * margin[1], steps[1])
    return TilePlan(
        tile=tile, margin=margin, step=(steps[0], steps[1]), origins=tuple((y, x) for y in ys for x in xs)
    )


def _mirrored_indices(start: int, stop: int, size: int, mode: str) -> np.ndarray:
    """Indices into ``[0, size)`` for coordinates ``start..stop-1``, mirrored by ``np.pad``."""
    before, after = max(-start, 0), max(stop - size, 0)
    return np.pad(np.arange(size), (before, after), mode=mode)[start + before : stop + before]


def extract_tile(
    image: np.ndarray, y0: int, x0: int, tile: tuple[int, int], *, mode: str = "reflect"
) -> np.ndarray:
    """Input tile whose top-left is (y0, x0) in image coordinates (may be negative), mirrored.

    ``reflect`` mirrors about the edge pixel (d c b | a b c d | c b a), ``symmetric`` repeats it,
    exactly as ``np.pad`` (which also handles context wider than the image).
    """
    h, w = image.shape[-2:]
    y1, x1 = y0 + tile[0], x0 + tile[1]
    if y0 >= 0 and x0 >= 0 and y1 <= h and x1 <= w:
        return np.ascontiguousarray(image[..., y0:y1, x0:x1])
    if mode not in ("reflect", "symmetric"):
        raise ValueError(f"unknown mirror mode {mode!r}")
    iy, ix = _mirrored_indices(y0, y1, h, mode), _mirrored_indices(x0, x1, w, mode)
    return np.ascontiguousarray(image[..., iy[:, None], ix[None, :]])


def overlap_tile_predict(
    predictor: Predictor,
    image: np.ndarray,
    *,
    tile: int | tuple[int, int],
    margin: int | tuple[int, int],
    align: int = 1,
    batch_size: int = 4,
    mode: str = "reflect",
    out: np.ndarray | None = None,
    out_dtype: np.dtype | type = np.float32,
    prefetch_depth: int = 2,
) -> np.ndarray:
    """Predict ``image`` (C, H, W) or (H, W) tile by tile; return (K, H, W).

    ``predictor`` maps a float32 batch (N, C, th, tw) to (N, K, oh, ow) with ``oh = th - 2*s``
    for some shrink ``s <= margin`` (``s = margin`` for valid nets, 0 for padded nets); the
    remaining ``margin - s`` pixels are cropped here. ``out`` may be a preallocated (or
    memory-mapped) array to write into.
    """
    if image.ndim == 2:
        image = image[None]
    if image.ndim != 3:
        raise ValueError(f"expected a (C, H, W) or (H, W) array, got shape {image.shape}")
    h, w = image.shape[-2:]
    if h < 1 or w < 1:
        raise ValueError("empty image")
    plan = plan_tiles((h, w), tile=tile, margin=margin, align=align)
    (my, mx), (cy, cx) = plan.margin, plan.core

    def make_batch(origins: list[tuple[int, int]]) -> tuple[list[tuple[int, int]], np.ndarray]:
        tiles = [extract_tile(image, y0 - my, x0 - mx, plan.tile, mode=mode) for y0, x0 in origins]
        return origins, np.stack(tiles).astype(np.float32, copy=False)

    batches: Iterator = prefetch(
        iter_batches(plan.origins, batch_size), depth=prefetch_depth, transform=make_batch
    )
    for origins, batch in batches:
        pred = np.asarray(predictor(batch))
        if pred.ndim != 4 or pred.shape[0] != len(origins):
            raise ValueError(f"predictor returned shape {pred.shape} for a batch of {batch.shape}")
        sy, sx = plan.tile[0] - pred.shape[2], plan.tile[1] - pred.shape[3]
        if sy % 2 or sx % 2 or sy < 0 or sx < 0 or sy // 2 > my or sx // 2 > mx:
            raise ValueError(
                f"predictor output {pred.shape[2:]} does not fit tile {plan.tile} with margin {plan.margin}"
            )
        oy, ox = my - sy // 2, mx - sx // 2  # what is left of the margin to crop
        if out is None:
            out = np.zeros((pred.shape[1], h, w), dtype=out_dtype)
        for (y0, x0), p in zip(origins, pred):
            hh, ww = min(cy, h - y0), min(cx, w - x0)
            out[:, y0 : y0 + hh, x0 : x0 + ww] = p[:, oy : oy + hh, ox : ox + ww]
    log.debug(
        "overlap-tile: %d tiles of %s (margin %s, step %s) for %dx%d",
        len(plan.origins),
        plan.tile,
        plan.margin,
        plan.step,
        h,
        w,
    )
    assert out is not None
    return out
