"""Seeded synthetic microscopy: many touching, irregular cells with instance masks.

Two looks: ``fluorescence`` (bright textured cells, dark background) and ``phase`` (grey
background, dark cells with a bright halo). Both get uneven illumination, blur and noise.
Touching cells meet along a shared border that is dimmer (fluorescence) or a faint bright halo
line (phase contrast), so separating them is learnable but not trivial. For tests and demos only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from medseg.cells.weights import touching_borders

MODALITIES = ("fluorescence", "phase")


@dataclass
class SyntheticCellsConfig:
    """Parameters of the generator (sizes in pixels)."""

    height: int = 256
    width: int = 256
    modality: str = "fluorescence"
    radius_range: tuple[float, float] = (9.0, 16.0)
    density: float = 0.55  # fraction of the area covered by cell discs before packing
    irregularity: float = 0.18  # relative amplitude of the boundary's Fourier perturbation
    clustering: float = 0.7  # probability that a new cell is placed touching an existing one
    border_dip: float = 0.45  # contrast of the line where two cells touch (darker / brighter halo)
    noise: float = 0.04
    illumination: float = 0.25  # amplitude of the low-frequency illumination field


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    field = ndimage.gaussian_filter(rng.normal(size=shape), sigma)
    return field / (field.std() + 1e-8)


def _place_cells(
    rng: np.random.Generator, cfg: SyntheticCellsConfig
) -> list[tuple[float, float, float, np.ndarray]]:
    """Centres, radii and Fourier boundary coefficients; clustered so that many cells touch."""
    h, w = cfg.height, cfg.width
    r_lo, r_hi = cfg.radius_range
    target = cfg.density * h * w / (np.pi * ((r_lo + r_hi) / 2) ** 2)
    cells: list[tuple[float, float, float, np.ndarray]] = []
    attempts = 0
    while len(cells) < target and attempts < 50 * max(int(target), 1):
        attempts += 1
        r = rng.uniform(r_lo, r_hi)
        if cells and rng.random() < cfg.clustering:
            cy, cx, cr, _ = cells[rng.integers(len(cells))]
            angle = rng.uniform(0, 2 * np.pi)
            dist = (cr + r) * rng.uniform(0.8, 0.95)  # overlapping discs -> shared border
            y, x = cy + dist * np.sin(angle), cx + dist * np.cos(angle)
        else:
            y, x = rng.uniform(-r / 2, h + r / 2), rng.uniform(-r / 2, w + r / 2)
        if any(np.hypot(y - cy, x - cx) < 0.75 * (r + cr) for cy, cx, cr, _ in cells):
            continue
        coeffs = rng.normal(size=(5, 2)) * (cfg.irregularity / np.arange(1, 6))[:, None]
        cells.append((y, x, r, coeffs))
    return cells


def _rasterise(cells, shape: tuple[int, int]) -> np.ndarray:
    """Each pixel goes to the cell whose (irregular) normalised radius is smallest, if < 1."""
    h, w = shape
    best = np.full(shape, np.inf, dtype=np.float32)
    labels = np.zeros(shape, dtype=np.int32)
    for index, (cy, cx, r, coeffs) in enumerate(cells, start=1):
        reach = int(np.ceil(r * 1.8))
        y0, y1 = max(int(cy) - reach, 0), min(int(cy) + reach + 1, h)
        x0, x1 = max(int(cx) - reach, 0), min(int(cx) + reach + 1, w)
        if y0 >= y1 or x0 >= x1:
            continue
        yy, xx = np.mgrid[y0:y1, x0:x1]
        dy, dx = yy - cy, xx - cx
        theta = np.arctan2(dy, dx)
        k = np.arange(1, 6)[:, None, None]
        radius = r * (
            1
            + (
                coeffs[:, 0, None, None] * np.cos(k * theta) + coeffs[:, 1, None, None] * np.sin(k * theta)
            ).sum(0)
        )
        rho = (np.hypot(dy, dx) / np.maximum(radius, 1.0)).astype(np.float32)
        region = best[y0:y1, x0:x1]
        take = (rho < 1) & (rho < region)
        region[take] = rho[take]
        labels[y0:y1, x0:x1][take] = index
    # relabel consecutively, dropping specks left by neighbours
    out = np.zeros_like(labels)
    next_label = 1
    for index in np.unique(labels)[1:]:
        comp, n = ndimage.label(labels == index)
        if n == 0:
            continue
        sizes = np.bincount(comp.ravel())[1:]
        keep = comp == (np.argmax(sizes) + 1)
        if keep.sum() >= 12:
            out[keep] = next_label
            next_label += 1
    return out


def synthetic_cells(seed: int, config: SyntheticCellsConfig | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(image float32 in [0, 1], instance labels int32)`` for ``seed``."""
    cfg = config or SyntheticCellsConfig()
    if cfg.modality not in MODALITIES:
        raise ValueError(f"unknown modality {cfg.modality!r}: use {', '.join(MODALITIES)}")
    rng = np.random.default_rng(seed)
    shape = (cfg.height, cfg.width)
    labels = _rasterise(_place_cells(rng, cfg), shape)
    fg = labels > 0
    n = int(labels.max())
    per_cell = np.concatenate([[0.0], rng.uniform(0.55, 1.0, size=n)])
    texture = _smooth_noise(rng, shape, 1.5)
    # intensity falls off towards the cell edge (distance to the background or a neighbour)
    inside = ndimage.distance_transform_edt(fg & ~touching_borders(labels))
    profile = 1 - 0.35 * np.exp(-inside / 3.0)
    touching = touching_borders(labels)
    illum = 1 + cfg.illumination * _smooth_noise(rng, shape, max(shape) / 4) / 2
    illum += cfg.illumination * np.linspace(-0.5, 0.5, shape[1])[None, :] * rng.choice([-1, 1])
    if cfg.modality == "fluorescence":
        cell = per_cell[labels] * profile * (1 + 0.15 * texture)
        cell[touching] *= 1 - cfg.border_dip
        image = np.where(fg, cell, 0.05) * illum
        image = ndimage.gaussian_filter(image, 1.0)
    else:
        halo = ndimage.distance_transform_edt(~fg)
        background = 0.55 + 0.35 * np.exp(-halo / 2.5) * (halo > 0)
        cell = 0.55 - 0.3 * per_cell[labels] * profile + 0.05 * texture
        cell[touching] += 0.6 * cfg.border_dip  # a bright halo line where cells touch, as in phase contrast
        image = np.where(fg, cell, background) * illum
        image = ndimage.gaussian_filter(image, 0.8)
    image = image + cfg.noise * rng.normal(size=shape)
    lo, hi = np.percentile(image, [0.5, 99.8])
    image = np.clip((image - lo) / max(hi - lo, 1e-6), 0, 1).astype(np.float32)
    return image, labels.astype(np.int32)


def synthetic_batch(
    seed: int,
    count: int,
    config: SyntheticCellsConfig | None = None,
    modalities: tuple[str, ...] = MODALITIES,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """``count`` image/label pairs, alternating modalities, from seeds ``seed*1000 + i``."""
    from dataclasses import replace

    cfg = config or SyntheticCellsConfig()
    return [
        synthetic_cells(seed * 1000 + i, replace(cfg, modality=modalities[i % len(modalities)]))
        for i in range(count)
    ]
