"""Training augmentation as in the U-Net paper: elastic deformation plus flips and rotations.

Elastic deformation: random displacement vectors on a coarse 3x3 grid, drawn from a Gaussian
with 10 px standard deviation, interpolated to every pixel with bicubic splines. MONAI's
``Rand2DElastic`` parametrises the grid by spacing and smooths differently, so the paper's
scheme is implemented directly here (scipy).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from scipy import ndimage


@dataclass
class AugmentConfig:
    elastic_grid: int = 3  # coarse grid points per axis
    elastic_std: float = 10.0  # px, standard deviation of the displacement vectors
    elastic_prob: float = 0.8
    flips: bool = True
    rot90: bool = True
    intensity: float = 0.15  # random gamma/contrast jitter amplitude (0 = off)


@functools.lru_cache(maxsize=16)
def _bicubic_weights(n_out: int, grid: int) -> np.ndarray:
    """(n_out, grid) matrix: cubic-spline interpolation of ``grid`` values onto ``n_out`` points.

    Interpolation is linear in the data, so interpolating the identity gives the weights once;
    the 2D field is then ``Wy @ coarse @ Wx.T`` (separable, microseconds instead of a 2D spline).
    """
    positions = np.linspace(0, grid - 1, n_out)
    eye = np.eye(grid)
    return np.stack(
        [ndimage.map_coordinates(eye[:, j], [positions], order=3, mode="nearest") for j in range(grid)],
        axis=1,
    )


def elastic_displacement(
    rng: np.random.Generator, shape: tuple[int, int], *, grid: int = 3, std: float = 10.0
) -> np.ndarray:
    """Per-pixel displacement field (2, H, W) from a coarse grid, bicubic-interpolated."""
    coarse = rng.normal(scale=std, size=(2, grid, grid))
    wy, wx = _bicubic_weights(shape[0], grid), _bicubic_weights(shape[1], grid)
    return np.einsum("yi,cij,xj->cyx", wy, coarse, wx)


def warp(arrays: list[np.ndarray], displacement: np.ndarray, orders: list[int]) -> list[np.ndarray]:
    """Resample each 2D array at x + displacement (mirror at the borders)."""
    h, w = arrays[0].shape
    yy, xx = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    coords = np.stack([yy + displacement[0], xx + displacement[1]])
    return [
        ndimage.map_coordinates(a, coords, order=o, mode="mirror").astype(a.dtype, copy=False)
        for a, o in zip(arrays, orders)
    ]


def augment(
    rng: np.random.Generator, arrays: list[np.ndarray], orders: list[int], config: AugmentConfig
) -> list[np.ndarray]:
    """Apply the same random geometric transform to all arrays (first one = image)."""
    if config.elastic_prob > 0 and rng.random() < config.elastic_prob:
        disp = elastic_displacement(rng, arrays[0].shape, grid=config.elastic_grid, std=config.elastic_std)
        arrays = warp(arrays, disp, orders)
    if config.flips and rng.random() < 0.5:
        arrays = [a[:, ::-1] for a in arrays]
    if config.rot90:
        k = int(rng.integers(4))
        arrays = [np.rot90(a, k) for a in arrays]
    arrays = [np.ascontiguousarray(a) for a in arrays]
    if config.intensity > 0:
        image = np.clip(arrays[0], 0, None)
        gamma = np.exp(rng.uniform(-config.intensity, config.intensity) * 2)
        scale = 1 + rng.uniform(-config.intensity, config.intensity)
        arrays[0] = (image**gamma * scale + rng.uniform(-1, 1) * config.intensity / 3).astype(np.float32)
    return arrays


# ranges of the tissue L*a*b* means a recoloured H&E copy is given: DSB 2018's blue-violet tissue
# (about 68 / 26 / -31) to the pink, darker H&E of Aperio-scanned sections such as CMU-1 (47 / 29 / -13)
HE_RECOLOUR_MEAN = ((45.0, 72.0), (12.0, 35.0), (-35.0, -5.0))
HE_RECOLOUR_SD_SCALE = (0.8, 1.25)


def recolour_he(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A copy of an 8-bit RGB H&E image as another lab might have stained and scanned it: the tissue
    pixels' (L* < 85) CIE L*a*b* mean drawn from :data:`HE_RECOLOUR_MEAN`, their SD scaled by
    :data:`HE_RECOLOUR_SD_SCALE` (Reinhard colour transfer, used here as augmentation). Why: the
    specialists read the hematoxylin plane of a fixed deconvolution, and learning only from one stain look
    leaves them unable to read another (docs/cells.md, session 15). Glass-only images come back unchanged."""
    from skimage.color import lab2rgb, rgb2lab

    x = np.clip(rgb[..., :3].astype(np.float32) / 255.0, 0, 1)
    lab = rgb2lab(x)
    tissue = lab[..., 0] < 85.0
    if tissue.mean() < 0.02:
        return rgb[..., :3].copy()
    mean = lab[tissue].mean(axis=0)
    target = np.array([rng.uniform(*r) for r in HE_RECOLOUR_MEAN])
    scale = rng.uniform(*HE_RECOLOUR_SD_SCALE, 3)
    out = (lab - mean) * scale + target
    return np.clip(lab2rgb(out) * 255.0, 0, 255).astype(np.uint8)
