"""Seeded synthetic microscopy: many touching, irregular cells with instance masks.

Three looks: ``fluorescence`` (bright textured cells, dark background), ``phase`` (grey
background, dark cells with a bright halo) and ``he`` (an RGB brightfield rendering: hematoxylin
nuclei on an eosin-stained background and white glass, by Beer-Lambert with the stain vectors that
``skimage.color.rgb2hed`` inverts). All get uneven illumination, blur and noise. Touching cells
meet along a shared border that is dimmer (fluorescence, H&E) or a faint bright halo line (phase
contrast), so separating them is learnable but not trivial.

:func:`randomised_config` draws a config per image over what real images vary in (object size
4-40 px, per-cell brightness over two decades, saturation, blur, Poisson/Gaussian noise, uneven
background, clumps, the three looks): the demo weights are trained on it so that they transfer
to real images. For tests and demos only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from medseg.cells.weights import touching_borders

MODALITIES = ("fluorescence", "phase")  # the gray looks (synthetic_batch alternates them)
ALL_MODALITIES = (*MODALITIES, "he")


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
    # realism knobs (the defaults keep the original look, so seeds give the same images as before)
    brightness_decades: float = 0.0  # per-cell brightness also x 10**-U(0, decades) (2: two decades)
    saturation: float = 0.0  # share of the cell pixels clipped at the detector's maximum
    blur: float | None = None  # gaussian sigma (px); None: 1.0 fluorescence, 0.8 phase / he
    photons: float | None = None  # Poisson (shot) noise: photons at full scale; None: Gaussian only
    background: float = 0.05  # fluorescence background level (relative to a bright cell)
    background_field: float = 0.0  # amplitude of an additive uneven background (autofluorescence, stroma)
    min_area: int = 12  # px: smaller cell fragments are dropped


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
    centres = np.zeros((max(int(target) + 1, 1), 3))  # y, x, r of the placed cells (vectorised check)
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
        placed = centres[: len(cells)]
        if np.any(np.hypot(y - placed[:, 0], x - placed[:, 1]) < 0.75 * (r + placed[:, 2])):
            continue
        coeffs = rng.normal(size=(5, 2)) * (cfg.irregularity / np.arange(1, 6))[:, None]
        centres[len(cells)] = (y, x, r)
        cells.append((y, x, r, coeffs))
    return cells


def _rasterise(cells, shape: tuple[int, int], min_area: int = 12) -> np.ndarray:
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
    for index, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None:
            continue
        comp, n = ndimage.label(labels[box] == index)
        if n == 0:
            continue
        sizes = np.bincount(comp.ravel())[1:]
        keep = comp == (np.argmax(sizes) + 1)
        if keep.sum() >= min_area:
            out[box][keep] = next_label
            next_label += 1
    return out


def synthetic_cells(seed: int, config: SyntheticCellsConfig | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(image float32 in [0, 1], instance labels int32)`` for ``seed``."""
    cfg = config or SyntheticCellsConfig()
    if cfg.modality not in ALL_MODALITIES:
        raise ValueError(f"unknown modality {cfg.modality!r}: use {', '.join(ALL_MODALITIES)}")
    rng = np.random.default_rng(seed)
    shape = (cfg.height, cfg.width)
    labels = _rasterise(_place_cells(rng, cfg), shape, cfg.min_area)
    fg = labels > 0
    n = int(labels.max())
    per_cell = np.concatenate([[0.0], rng.uniform(0.55, 1.0, size=n)])
    if cfg.brightness_decades > 0:
        per_cell[1:] *= 10.0 ** -rng.uniform(0, cfg.brightness_decades, size=n)
    texture = _smooth_noise(rng, shape, 1.5)
    # intensity falls off towards the cell edge (distance to the background or a neighbour)
    inside = ndimage.distance_transform_edt(fg & ~touching_borders(labels))
    profile = 1 - 0.35 * np.exp(-inside / 3.0)
    touching = touching_borders(labels)
    illum = 1 + cfg.illumination * _smooth_noise(rng, shape, max(shape) / 4) / 2
    illum += cfg.illumination * np.linspace(-0.5, 0.5, shape[1])[None, :] * rng.choice([-1, 1])
    if cfg.modality == "he":
        return _render_he(rng, cfg, labels, per_cell, profile, texture, touching, illum), labels.astype(
            np.int32
        )
    if cfg.modality == "fluorescence":
        cell = per_cell[labels] * profile * (1 + 0.15 * texture)
        cell[touching] *= 1 - cfg.border_dip
        background = cfg.background
        if cfg.background_field > 0:
            background = background + cfg.background_field * np.abs(_smooth_noise(rng, shape, max(shape) / 8))
        image = np.where(fg, cell, background) * illum
        image = ndimage.gaussian_filter(image, 1.0 if cfg.blur is None else cfg.blur)
        image = _detector(rng, cfg, image, fg)
    else:
        halo = ndimage.distance_transform_edt(~fg)
        background = 0.55 + 0.35 * np.exp(-halo / 2.5) * (halo > 0)
        cell = 0.55 - 0.3 * per_cell[labels] * profile + 0.05 * texture
        cell[touching] += 0.6 * cfg.border_dip  # a bright halo line where cells touch, as in phase contrast
        image = np.where(fg, cell, background) * illum
        image = ndimage.gaussian_filter(image, 0.8 if cfg.blur is None else cfg.blur)
        image = _detector(rng, cfg, image, fg)
    image = image + cfg.noise * rng.normal(size=shape)
    lo, hi = np.percentile(image, [0.5, 99.8])
    image = np.clip((image - lo) / max(hi - lo, 1e-6), 0, 1).astype(np.float32)
    return image, labels.astype(np.int32)


def _detector(
    rng: np.random.Generator, cfg: SyntheticCellsConfig, image: np.ndarray, fg: np.ndarray
) -> np.ndarray:
    """Saturation (the brightest ``saturation`` share of cell pixels clipped) and shot noise."""
    if cfg.saturation > 0 and fg.any():
        image = np.minimum(image, np.quantile(image[fg], 1 - cfg.saturation))
    if cfg.photons:
        scale = cfg.photons / max(float(image.max()), 1e-6)
        image = rng.poisson(np.clip(image, 0, None) * scale) / scale
    return image


def _render_he(
    rng: np.random.Generator,
    cfg: SyntheticCellsConfig,
    labels: np.ndarray,
    per_cell: np.ndarray,
    profile: np.ndarray,
    texture: np.ndarray,
    touching: np.ndarray,
    illum: np.ndarray,
) -> np.ndarray:
    """H&E-like RGB in [0, 1]: hematoxylin optical density in the nuclei (chromatin texture), eosin
    in a patchy stroma/cytoplasm with gaps of white glass, Beer-Lambert via ``skimage.color.hed2rgb``
    (the inverse of the ``rgb2hed`` that ``--stain he`` applies), blur, illumination and noise."""
    from skimage.color import hed2rgb

    shape = labels.shape
    fg = labels > 0
    nuclei = 0.35 + 0.65 * per_cell  # hematoxylin is never as faint as a dim fluorophore
    h_od = nuclei[labels] * profile * (1 + 0.25 * texture)
    h_od[touching] *= 1 - cfg.border_dip
    h_od = np.where(fg, h_od * rng.uniform(0.5, 1.2), 0.0)
    tissue = _smooth_noise(rng, shape, max(shape) / 10) + rng.uniform(-0.3, 1.2)
    e_od = np.clip(0.6 + 0.4 * _smooth_noise(rng, shape, 3.0), 0, None) * (tissue > 0) * rng.uniform(0.4, 1.2)
    h_od = h_od + 0.04 * cfg.background_field * np.abs(_smooth_noise(rng, shape, 4.0)) * (tissue > 0)
    hed = np.stack([h_od, e_od, np.zeros(shape)], axis=-1) * 0.12  # rgb2hed units: a dark nucleus ~0.1
    rgb = hed2rgb(hed) * np.clip(illum, 0.5, 1.5)[..., None]
    rgb = ndimage.gaussian_filter(rgb, (0.8 if cfg.blur is None else cfg.blur,) * 2 + (0,))
    rgb = rgb + cfg.noise * 0.5 * rng.normal(size=rgb.shape)
    return np.clip(rgb, 0, 1).astype(np.float32)


def randomised_config(
    rng: np.random.Generator,
    *,
    height: int = 256,
    width: int = 256,
    modality: str | None = None,
    diameters: tuple[float, float] = (4.0, 40.0),
) -> SyntheticCellsConfig:
    """One image's generator settings, drawn over what real microscopy varies in (the demo weights'
    training distribution): diameter log-uniform in ``diameters`` (4-40 px), brightness spread up to two decades,
    saturation in half the images, blur, Gaussian and (half the time) Poisson noise, uneven
    illumination and background, density and clumping; looks fluorescence 50 %, H&E 30 %, phase 20 %."""
    if modality is None:
        modality = str(rng.choice(ALL_MODALITIES, p=[0.5, 0.2, 0.3]))
    diameter = float(np.exp(rng.uniform(np.log(diameters[0]), np.log(diameters[1]))))
    r = diameter / 2
    return SyntheticCellsConfig(
        height=height,
        width=width,
        modality=modality,
        radius_range=(0.8 * r, 1.2 * r),
        density=float(rng.uniform(0.25, 0.65)),
        irregularity=float(rng.uniform(0.05, 0.25)),
        clustering=float(rng.uniform(0.3, 0.9)),
        border_dip=float(rng.uniform(0.2, 0.6)),
        noise=float(np.exp(rng.uniform(np.log(0.005), np.log(0.08)))),
        illumination=float(rng.uniform(0.0, 0.5)),
        brightness_decades=float(rng.uniform(0.0, 2.0)) if modality != "phase" else 0.0,
        saturation=float(rng.uniform(0.0, 0.1)) if rng.random() < 0.5 else 0.0,
        blur=float(rng.uniform(0.5, min(2.0, max(0.6, r / 3)))),
        photons=float(np.exp(rng.uniform(np.log(30.0), np.log(2000.0)))) if rng.random() < 0.5 else None,
        background=float(rng.uniform(0.0, 0.1)),
        background_field=float(rng.uniform(0.0, 0.3)),
        min_area=max(int(0.5 * np.pi * (0.8 * r) ** 2), 6),
    )


def randomised_batch(
    seed: int,
    count: int,
    *,
    height: int = 256,
    width: int = 256,
    diameters: tuple[float, float] = (4.0, 40.0),
) -> list[tuple[np.ndarray, np.ndarray, str]]:
    """``count`` (image, labels, modality) triples from :func:`randomised_config`, seeds ``seed*1000 + i``;
    the image is (H, W) for the gray looks and (H, W, 3) RGB for ``he``."""
    out = []
    for i in range(count):
        rng = np.random.default_rng([seed, i])
        cfg = randomised_config(rng, height=height, width=width, diameters=diameters)
        image, labels = synthetic_cells(seed * 1000 + i, cfg)
        out.append((image, labels, cfg.modality))
    return out


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
