"""Tile grid of a whole slide at a target resolution, read ahead through the engine prefetcher.

Coordinates: the grid lives in *target* pixels (level-0 pixels scaled by ``mpp / target_mpp``).
Tile ``(i, j)`` covers ``[j * stride, j * stride + tile)`` horizontally, ``stride = tile - overlap``.
Its *core* is the part it owns, ``[j * stride + overlap / 2, (j + 1) * stride + overlap / 2)`` (the
first and last tiles own up to the slide edge): a detection is kept only by the tile whose core
holds its centre, so an object on a tile border is counted once. With ``overlap`` at least the
size of an (enlarged) object box, the owning tile also sees that object whole.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from medseg.errors import InputError
from medseg.pathology.slide import Slide, TissueMap

T = TypeVar("T")


@dataclass(frozen=True)
class Tile:
    """One tile: grid index, target-pixel origin, and how to read it from the slide."""

    row: int
    col: int
    x: int  # target-pixel origin
    y: int
    level: int
    read_x: int  # level-0 origin for read_region
    read_y: int
    read_w: int  # size to read at ``level``
    read_h: int
    tissue: float  # tissue fraction from the low-resolution mask


@dataclass
class TileGrid:
    """The grid of a slide at ``target_mpp`` and the rule deciding which tile owns a point."""

    slide_mpp: float
    target_mpp: float
    tile: int
    overlap: int
    width: int  # slide size in target pixels
    height: int

    def __post_init__(self) -> None:
        if self.tile < 16:
            raise InputError(f"--tile must be >= 16, got {self.tile}")
        if not 0 <= self.overlap < self.tile:
            raise InputError(f"--overlap must be in [0, tile), got {self.overlap}")
        if self.width < 1 or self.height < 1:
            raise InputError("slide is smaller than one pixel at the target resolution")

    @property
    def stride(self) -> int:
        return self.tile - self.overlap

    @property
    def scale(self) -> float:
        """Level-0 pixels per target pixel."""
        return self.target_mpp / self.slide_mpp

    @property
    def n_cols(self) -> int:
        return max(1, math.ceil((self.width - self.overlap) / self.stride))

    @property
    def n_rows(self) -> int:
        return max(1, math.ceil((self.height - self.overlap) / self.stride))

    def owner(self, cx: np.ndarray, cy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(row, col) of the tile whose core holds each target-pixel point."""
        half = self.overlap / 2
        col = np.clip(np.floor((np.asarray(cx) - half) / self.stride), 0, self.n_cols - 1).astype(int)
        row = np.clip(np.floor((np.asarray(cy) - half) / self.stride), 0, self.n_rows - 1).astype(int)
        return row, col


def make_grid(slide: Slide, *, target_mpp: float, tile: int, overlap: int) -> TileGrid:
    if target_mpp <= 0:
        raise InputError(f"--mpp must be > 0, got {target_mpp}")
    scale = target_mpp / slide.mpp
    return TileGrid(slide.mpp, target_mpp, tile, overlap, int(slide.width / scale), int(slide.height / scale))


def plan_slide_tiles(
    slide: Slide, grid: TileGrid, tissue: TissueMap | None, *, min_tissue: float = 0.05
) -> list[Tile]:
    """The slide's tiles whose footprint holds at least ``min_tissue`` tissue (all tiles without a map).

    (Not :func:`medseg.engine.tiling.plan_tiles`, which plans overlap-tiles of an image for the
    valid-convolution U-Net: this one plans reads of a whole slide from its pyramid.)
    """
    s = grid.scale
    level = int(slide.handle.get_best_level_for_downsample(max(1.0, s) * 1.001))
    lds = slide.level_downsamples[level]
    if lds > s * 1.001:  # never read coarser than the target
        level, lds = 0, 1.0
    read = max(1, int(round(grid.tile * s / lds)))
    tiles = []
    for r in range(grid.n_rows):
        for c in range(grid.n_cols):
            x, y = c * grid.stride, r * grid.stride
            x0, y0 = x * s, y * s
            frac = (
                tissue.fraction(x0, y0, x0 + grid.tile * s, y0 + grid.tile * s) if tissue is not None else 1.0
            )
            if frac < min_tissue:
                continue
            tiles.append(Tile(r, c, x, y, level, int(round(x0)), int(round(y0)), read, read, frac))
    return tiles


def read_tile(slide: Slide, tile: Tile, size: int) -> np.ndarray:
    """RGB uint8 (size, size, 3) of ``tile`` at the target resolution."""
    from PIL import Image

    rgb = slide.read_rgb((tile.read_x, tile.read_y), tile.level, (tile.read_w, tile.read_h))
    if rgb.shape[0] != size or rgb.shape[1] != size:
        rgb = np.asarray(Image.fromarray(rgb).resize((size, size), Image.BILINEAR))
    return rgb


def read_ahead(
    tiles: Sequence[Tile], reader: Callable[[Tile], T], *, batch_size: int, workers: int = 2, depth: int = 2
) -> Iterator[tuple[Tile, T | Exception]]:
    """Yield ``(tile, reader(tile))`` in order, read ahead of the consumer by the engine's prefetcher.

    Tiles go to :func:`medseg.engine.batching.prefetch` in groups of ``batch_size``; each group is
    read by ``workers`` threads (OpenSlide decodes in C with the GIL released, so reading overlaps
    inference in the consumer). At most ``depth`` + 1 groups are in memory, whatever the slide
    size. A tile that fails to read is yielded with its exception instead of an image. Close the
    iterator (``contextlib.closing``) before closing the slide.
    """
    from medseg.engine.batching import iter_batches, prefetch

    def safe(tile: Tile) -> T | Exception:
        try:
            return reader(tile)
        except Exception as exc:  # noqa: BLE001 - reported per tile by the caller
            return exc

    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="medseg-tile") if workers > 1 else None

    def read_group(group: list[Tile]) -> list[tuple[Tile, T | Exception]]:
        return list(zip(group, pool.map(safe, group) if pool is not None else map(safe, group)))

    stream = prefetch(iter_batches(tiles, max(1, batch_size)), depth=max(1, depth), transform=read_group)
    try:
        for group in stream:
            yield from group
    finally:
        stream.close()  # stops and joins the reader thread before the pool (and then the slide) closes
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
