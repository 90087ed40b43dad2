"""Synthetic chest CT reconstructed with simulated Siemens kernels (B10f/B30f/B50f/B70f).

Why this model: reconstructions of one scan with different kernels share one sinogram, so
they share one noise realisation and differ by a linear filter. We simulate exactly that:

    image_k = IFFT( (FFT(object) + FFT(w * white_noise) * ramp) * H30(f) * R_k(f) )

with a Gaussian system MTF ``H30`` for B30f (MTF50 3.4 lp/cm, MTF10 6.2 lp/cm) and kernel ratios
``R_k`` calibrated on published Siemens ratios relative to B30f (see ``KERNEL_SIGMA_MM``): B10f =
B30f blurred (Gaussian sigma 0.52 mm), B50f = B30f * exp(2 pi^2 sigma^2 f^2) with sigma 0.52 mm,
B70f likewise with sigma 0.64 mm and a gain cap of 17. The noise is filtered by the same kernel as
the anatomy, so its power spectrum is the kernel's: NPS_k(f) ~ |f|**0.75 * (H30 * R_k)**2 (smooth
kernels: low-frequency grain, sharp kernels: high-frequency speckle). It is not stationary: ``w``
raises it towards the centre of the body (fewer photons through more tissue). Soft-tissue noise in
B30f is ``noise_b30_hu``; the other kernels' noise follows from their filters (about 0.65 : 1 :
2.6 : 5.5). Values below -1024 HU are clipped, as scanners store HU + 1024 unsigned.

The anatomy is meant to look like a chest at the scale a 3x3 CNN sees: lung parenchyma with a
fine, skewed, multi-scale texture and a dorsal density gradient; branching vessel trees (radius
shrinking by generation, anti-aliased partial volume) with bronchi (wall + air lumen) running
beside the larger vessels; emphysematous bullae; body wall, heart, spine, ribs, trachea and,
optionally, the table. Sharp kernels amplify the fine texture, which raises LAA-950 by several
points, as reported clinically.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from medseg.ct import KERNELS  # the one list of kernel names medseg knows

# (sign, sigma in mm, gain cap) of the ratio R_k(f) = exp(sign * 2 pi^2 sigma^2 f^2) w.r.t. B30f
KERNEL_SIGMA_MM: dict[str, tuple[int, float, float]] = {
    "B10f": (-1, 0.52, 1.0),
    "B30f": (0, 0.0, 1.0),
    "B50f": (1, 0.52, 7.5),
    "B70f": (1, 0.64, 17.0),
}
SIMULATED_KERNELS = tuple(k for k in KERNELS if k in KERNEL_SIGMA_MM)  # what a phantom exam holds by default
B30_SYSTEM_SIGMA_MM = 0.55  # Gaussian system MTF of the B30f reconstruction
TEXTURE_SIGMA_PX = 0.45  # grain of the finest lung parenchyma texture
NOISE_SPECTRUM_EXPONENT = 0.75  # raw noise power ~ |f|**exponent (1 = pure FBP ramp)
VESSEL_HU, BRONCHIAL_WALL_HU, AIR_HU = 40.0, 10.0, -1000.0


@dataclass
class PhantomConfig:
    """Geometry and contents of one synthetic exam."""

    size: int = 160  # in-plane matrix (pixels)
    n_slices: int = 12
    pixel_mm: float = 0.7
    slice_mm: float = 1.5
    noise_b30_hu: float = 18.0  # soft-tissue noise SD in B30f (body average)
    lung_hu: float = -868.0  # mean lung parenchyma
    lung_texture_hu: float = 48.0  # SD of the parenchymal texture in the object (all scales)
    emphysema_fraction: float = 0.08  # requested volume fraction of bullae (about 60 % survive in the slab)
    body_scale: float = 1.0  # patient size relative to the field of view
    vessel_trees: int = 4  # branching vessel trees per lung
    noise_centre_gain: float = 0.4  # noise SD at the body centre is (1 + gain) x that at its edge
    table: bool = False  # the patient table below the back (a separate object, never patient)
    contrast_hu: float = 0.0  # iodine enhancement of blood (heart, aorta, lung vessels)
    calcifications: int = 3  # small dense spots (0.4-1.2 mm, 300-900 HU) in the aortic wall and heart
    clip_hu: float | None = -1024.0  # scanners store HU + 1024 unsigned: nothing below -1024


def varied_config(seed: int, base: PhantomConfig | None = None) -> PhantomConfig:
    """A patient-like variation of ``base`` for training and held-out evaluation: pixel size
    0.6-0.8 mm (field of view), dose (B30f noise 10-30 HU), patient size, emphysema 0-20 %, table."""
    rng = np.random.default_rng(seed + 104729)
    cfg = base or PhantomConfig()
    return replace(
        cfg,
        pixel_mm=float(rng.uniform(0.6, 0.8)),
        noise_b30_hu=float(np.exp(rng.uniform(np.log(10.0), np.log(30.0)))),
        body_scale=float(rng.uniform(0.85, 1.0)),
        emphysema_fraction=float(rng.uniform(0.0, 0.2)),
        lung_hu=float(rng.uniform(-890.0, -830.0)),
        noise_centre_gain=float(rng.uniform(0.2, 0.7)),
        table=bool(rng.random() < 0.7),
        contrast_hu=float(rng.choice([0.0, rng.uniform(150.0, 300.0)])),
        calcifications=int(rng.integers(0, 8)),
    )


def kernel_ratio(kernel: str, f_per_mm: np.ndarray) -> np.ndarray:
    """Frequency response of ``kernel`` relative to B30f at spatial frequency ``f`` (cycles/mm)."""
    if kernel not in KERNEL_SIGMA_MM:
        raise ValueError(f"kernel '{kernel}' is not simulated; simulated: {', '.join(SIMULATED_KERNELS)}")
    sign, sigma, cap = KERNEL_SIGMA_MM[kernel]
    ratio = np.exp(sign * 2 * np.pi**2 * sigma**2 * np.asarray(f_per_mm, float) ** 2)
    return np.minimum(ratio, cap) if sign > 0 else ratio


def kernel_mtf(kernel: str, f_per_mm: np.ndarray) -> np.ndarray:
    """Absolute modulation transfer of the simulated ``kernel`` (system MTF of B30f times the ratio)."""
    f = np.asarray(f_per_mm, float)
    return np.exp(-2 * np.pi**2 * B30_SYSTEM_SIGMA_MM**2 * f**2) * kernel_ratio(kernel, f)


def _freq_grid(n: int, pixel_mm: float) -> np.ndarray:
    f = np.fft.fftfreq(n, d=pixel_mm)
    return np.hypot(f[:, None], f[None, :])


def _ellipse(yy, xx, cy, cx, ry, rx) -> np.ndarray:
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma_px) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    field = gaussian_filter(rng.standard_normal(shape), sigma_px, mode="wrap")
    return field / (field.std() + 1e-12)


def _lung_texture(rng: np.random.Generator, shape: tuple[int, ...], px: float, dz: float) -> np.ndarray:
    """Unit-SD parenchymal texture: alveolar grain (~0.3 mm), lobular mottling (~1.5 mm) and
    coarse patches (~5 mm), skewed towards denser values like real lung histograms."""
    fine = _smooth_noise(rng, shape, (0.3, TEXTURE_SIGMA_PX, TEXTURE_SIGMA_PX))
    lobular = _smooth_noise(rng, shape, (1.5 / dz, 1.5 / px, 1.5 / px))
    coarse = _smooth_noise(rng, shape, (5.0 / dz, 5.0 / px, 5.0 / px))
    field = np.expm1(0.35 * (0.85 * fine + 0.4 * lobular + 0.35 * coarse))
    return ((field - field.mean()) / (field.std() + 1e-12)).astype(np.float32)


def _unit(v: np.ndarray) -> np.ndarray:
    return v / (np.linalg.norm(v) + 1e-12)


def _rotate(d: np.ndarray, axis: np.ndarray, angle: float) -> np.ndarray:
    """Rodrigues rotation of ``d`` about the unit vector ``axis``."""
    return d * np.cos(angle) + np.cross(axis, d) * np.sin(angle) + axis * (axis @ d) * (1 - np.cos(angle))


def _grow_tree(
    rng: np.random.Generator,
    root: np.ndarray,
    direction: np.ndarray,
    r0: float,
    inside,
    *,
    min_r: float = 0.3,
    max_segments: int = 400,
) -> list[tuple[np.ndarray, np.ndarray, float, np.ndarray]]:
    """A branching vessel tree as (start, end, radius, bronchus offset direction) segments, in mm (z, y, x).

    Each segment is 4-8 radii long and splits in two thinner children (radius x 0.6-0.85,
    branching 20-45 degrees away from the parent, drifting outwards); growth stops at ``min_r``
    or where a segment would leave the lung (``inside(point)``)."""
    outward = _unit(direction * np.array([0.0, 1.0, 1.0]) + 1e-6)
    side = _unit(np.cross(direction, rng.standard_normal(3)))
    stack = [(root, _unit(direction), r0)]
    segments: list[tuple[np.ndarray, np.ndarray, float, np.ndarray]] = []
    while stack and len(segments) < max_segments:
        start, d, r = stack.pop()
        length = max(2.0, rng.uniform(4.0, 8.0) * r)
        end = start + d * length
        if not inside(end):
            end = start + d * length * 0.5
            if not inside(end):
                continue
        off = _unit(side - d * (side @ d))
        segments.append((start, end, r, off))
        if r * 0.85 < min_r:
            continue
        axis = _unit(np.cross(d, rng.standard_normal(3)))
        for sign, shrink in ((1, rng.uniform(0.7, 0.85)), (-1, rng.uniform(0.6, 0.8))):
            child = _unit(_rotate(d, axis, sign * np.radians(rng.uniform(20, 45))) + 0.25 * outward)
            stack.append((end, child, r * shrink))
    return segments


def _segment_occupancy(
    seg_a: np.ndarray, seg_b: np.ndarray, radius: float, zz: np.ndarray, coords: np.ndarray, px: float
):
    """Partial-volume occupancy (0..1) of a cylinder with round caps, on the slices it crosses.

    Returns (z indices, y slice, x slice, occupancy) or None when it misses the slab."""
    lo, hi = np.minimum(seg_a, seg_b) - radius - px, np.maximum(seg_a, seg_b) + radius + px
    kz = np.flatnonzero((zz >= lo[0]) & (zz <= hi[0]))
    ky = np.flatnonzero((coords >= lo[1]) & (coords <= hi[1]))
    kx = np.flatnonzero((coords >= lo[2]) & (coords <= hi[2]))
    if not (kz.size and ky.size and kx.size):
        return None
    p = np.stack(np.meshgrid(zz[kz], coords[ky], coords[kx], indexing="ij"), axis=-1)
    ab = seg_b - seg_a
    t = np.clip(((p - seg_a) @ ab) / max(float(ab @ ab), 1e-12), 0.0, 1.0)
    dist = np.linalg.norm(p - seg_a - t[..., None] * ab, axis=-1)
    occ = np.clip((radius - dist) / px + 0.5, 0.0, 1.0)
    return kz, slice(ky[0], ky[-1] + 1), slice(kx[0], kx[-1] + 1), occ


def _vessels_and_bronchi(cfg: PhantomConfig, rng, geometry: dict, zz: np.ndarray, coords: np.ndarray):
    """Occupancy volumes (z, y, x) of vessels, bronchial walls and bronchial lumens in both lungs."""
    nz, n, px = len(zz), len(coords), cfg.pixel_mm
    vessel = np.zeros((nz, n, n), np.float32)
    wall = np.zeros((nz, n, n), np.float32)
    lumen = np.zeros((nz, n, n), np.float32)
    lung_ry, lung_rx, lung_cy, lung_cx = (geometry[k] for k in ("lung_ry", "lung_rx", "lung_cy", "lung_cx"))
    r0 = float(np.clip(0.1 * lung_rx, 0.8, 6.0))
    z_lo, z_hi = zz.min() - 8.0, zz.max() + 8.0
    # trees per lung: two from the hilum, the rest rooted further out (one per ~60 mm^2 of lung
    # cross-section) so that the periphery also holds vessels, thinner the further out they start
    n_trees = cfg.vessel_trees + int(np.pi * lung_ry * lung_rx / 60.0 * cfg.vessel_trees / 4)

    def put(target: np.ndarray, hit) -> None:
        if hit is not None:
            kz, sy, sx, occ = hit
            np.maximum(target[kz, sy, sx], occ, out=occ)
            target[kz, sy, sx] = occ

    for side in (-1, 1):
        cx = side * lung_cx

        def inside(p, cx=cx):
            return ((p[1] - lung_cy) / lung_ry) ** 2 + ((p[2] - cx) / lung_rx) ** 2 <= 0.95

        for i in range(n_trees):
            if i < 2:
                frac = rng.uniform(0.0, 0.15)
                ry = rng.uniform(-0.35, 0.35)
            else:
                frac = rng.uniform(0.2, 0.9)
                ry = rng.uniform(-0.85, 0.85) * np.sqrt(max(0.0, 1 - (1.5 * frac - 0.75) ** 2))
            x_rel = -0.7 + 1.5 * frac  # medial (-0.7) to lateral (+0.8), in lung half-widths
            root = np.array([rng.uniform(z_lo, z_hi), lung_cy + ry * lung_ry, cx + side * x_rel * lung_rx])
            if not inside(root):
                continue
            direction = _unit(np.array([rng.uniform(-1.2, 1.2), rng.uniform(-0.6, 0.6), 0.8 * side]))
            radius = r0 * (1.0 - 0.75 * frac) * rng.uniform(0.7, 1.0)
            for a, b, r, off in _grow_tree(rng, root, direction, radius, inside):
                put(vessel, _segment_occupancy(a, b, r, zz, coords, px))
                if r >= 0.6:  # a bronchus runs beside the larger vessels: lumen ~ artery, thin wall
                    rb, t = 0.85 * r, 0.2 * r + 0.25
                    shift = off * (r + rb + t + 0.2)
                    put(wall, _segment_occupancy(a + shift, b + shift, rb + t, zz, coords, px))
                    put(lumen, _segment_occupancy(a + shift, b + shift, rb, zz, coords, px))
    return vessel, wall, lumen


def make_object(cfg: PhantomConfig, rng: np.random.Generator) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The 'true' object in HU, shape (z, y, x), plus truth masks (lungs, airways, emphysema, body)."""
    n, nz, px = cfg.size, cfg.n_slices, cfg.pixel_mm
    fov = n * px
    coords = (np.arange(n) - (n - 1) / 2) * px
    yy, xx = np.meshgrid(coords, coords, indexing="ij")
    zz = (np.arange(nz) - (nz - 1) / 2) * cfg.slice_mm

    obj = np.full((nz, n, n), AIR_HU, np.float32)
    lungs = np.zeros((nz, n, n), bool)
    airways = np.zeros((nz, n, n), bool)
    emph = np.zeros((nz, n, n), bool)
    body_mask = np.zeros((nz, n, n), bool)

    # body geometry (slightly varying with z), scaled with the patient
    b = cfg.body_scale
    ax_body, ay_body = 0.46 * fov * b, 0.34 * fov * b
    lung_ry, lung_rx = 0.25 * fov * b, 0.16 * fov * b
    lung_cx, lung_cy = 0.205 * fov * b, -0.01 * fov * b
    spine_c, spine_r = (0.24 * fov * b, 0.0), 0.065 * fov * b
    trachea_c, trachea_r = (-0.16 * fov * b, 0.0), 0.045 * fov * b
    aorta_c, aorta_r = (spine_c[0] - spine_r - 0.045 * fov * b, 0.05 * fov * b), 0.04 * fov * b
    texture = _lung_texture(rng, (nz, n, n), px, cfg.slice_mm)
    trabecular = _smooth_noise(rng, (nz, n, n), (0.5, 0.6, 0.6))  # cancellous bone texture
    calcs = [
        (
            rng.uniform(zz.min(), zz.max()) if nz > 1 else 0.0,
            rng.uniform(0.4, 1.2),
            rng.uniform(300.0, 900.0),
            rng.uniform(0, 2 * np.pi),
            rng.random() < 0.5,  # aortic wall or heart (coronary)
        )
        for _ in range(cfg.calcifications)
    ]
    geometry = {"lung_ry": lung_ry, "lung_rx": lung_rx, "lung_cy": lung_cy, "lung_cx": lung_cx}

    # emphysema bullae: random spheres inside lungs
    lung_volume = 2 * np.pi * lung_ry * lung_rx * 0.8 * nz * cfg.slice_mm
    mean_bulla = 4 / 3 * np.pi * (7.0**4 - 2.0**4) / (4 * 5.0)  # E[r^3] for r ~ U(2, 7) mm
    n_bullae = max(1, int(round(1.4 * cfg.emphysema_fraction * lung_volume / mean_bulla)))
    bullae = []
    for _ in range(n_bullae):
        side = rng.choice([-1, 1])
        r = rng.uniform(2.0, 7.0)
        cy = lung_cy + rng.uniform(-0.7, 0.7) * lung_ry
        cx = side * lung_cx + rng.uniform(-0.6, 0.6) * lung_rx
        cz = rng.uniform(zz.min(), zz.max()) if nz > 1 else 0.0
        bullae.append((cz, cy, cx, r))
    vessel, wall, lumen = _vessels_and_bronchi(cfg, rng, geometry, zz, coords)

    for k, z in enumerate(zz):
        s = 1.0 + 0.02 * np.sin(z / 20.0)
        body = _ellipse(yy, xx, 0, 0, ay_body * s, ax_body * s)
        inner = _ellipse(yy, xx, 0, 0, ay_body * s - 6.0, ax_body * s - 6.0)
        body_mask[k] = body
        sl = obj[k]
        sl[body] = -95.0  # subcutaneous fat
        sl[inner] = 40.0  # muscle / soft tissue
        lung_k = np.zeros_like(body)
        for side in (-1, 1):
            lung_k |= _ellipse(yy, xx, lung_cy, side * lung_cx, lung_ry * s, lung_rx * s)
        heart = _ellipse(yy, xx, -0.02 * fov * b, 0.05 * fov * b, 0.16 * fov * b, 0.1 * fov * b)
        lung_k &= ~heart & inner
        blood = 40.0 + cfg.contrast_hu
        sl[heart] = blood
        aorta = _ellipse(yy, xx, *aorta_c, aorta_r, aorta_r)
        sl[aorta & ~_ellipse(yy, xx, *aorta_c, aorta_r - 1.5, aorta_r - 1.5)] = 45.0  # wall
        sl[_ellipse(yy, xx, *aorta_c, aorta_r - 1.5, aorta_r - 1.5)] = blood
        for cz, r, hu, ang, in_aorta in calcs:
            if abs(z - cz) < r:
                rr = np.sqrt(r * r - (z - cz) ** 2)
                if in_aorta:
                    cy, cx = (
                        aorta_c[0] + (aorta_r - 1.0) * np.cos(ang),
                        aorta_c[1] + (aorta_r - 1.0) * np.sin(ang),
                    )
                else:
                    cy = -0.02 * fov * b + 0.12 * fov * b * np.cos(ang)
                    cx = 0.05 * fov * b + 0.07 * fov * b * np.sin(ang)
                sl[_ellipse(yy, xx, cy, cx, rr, rr)] = hu
        dorsal = 25.0 * np.clip((yy - lung_cy) / lung_ry, -1, 1)  # gravity-dependent density
        sl[lung_k] = cfg.lung_hu + dorsal[lung_k] + cfg.lung_texture_hu * texture[k][lung_k]
        for cz, cy, cx, r in bullae:
            dz = z - cz
            if abs(dz) < r:
                rr = np.sqrt(r * r - dz * dz)
                bl = _ellipse(yy, xx, cy, cx, rr, rr) & lung_k
                sl[bl] = -985.0 + 6.0 * texture[k][bl]
                emph[k] |= bl
        for occ, hu in (
            (vessel[k], VESSEL_HU + cfg.contrast_hu),
            (wall[k], BRONCHIAL_WALL_HU),
            (lumen[k], AIR_HU),
        ):
            o = np.where(lung_k, occ, 0.0)
            sl[:] = sl * (1 - o) + hu * o
        airways[k] |= (lumen[k] > 0.5) & lung_k
        emph[k] &= (vessel[k] < 0.5) & (wall[k] < 0.5)
        lungs[k] = lung_k
        # trachea (mediastinal airway, separate from the lungs)
        tw = _ellipse(yy, xx, *trachea_c, trachea_r + 1.8, trachea_r + 1.8)
        tl = _ellipse(yy, xx, *trachea_c, trachea_r, trachea_r)
        sl[tw] = 35.0
        sl[tl] = AIR_HU
        airways[k] |= tl
        # spine: cortical shell + cancellous core; ribs on the body wall
        sl[_ellipse(yy, xx, *spine_c, spine_r, spine_r)] = 850.0
        core = _ellipse(yy, xx, *spine_c, spine_r - 2.5, spine_r - 2.5)
        sl[core] = 230.0 + 70.0 * trabecular[k][core]
        for ang in np.linspace(0.25, np.pi - 0.25, 7):
            for side in (-1, 1):
                ry_, rx_ = ay_body * s - 9.0, ax_body * s - 9.0
                cy, cx = ry_ * np.cos(ang) * -1 * side, rx_ * np.sin(ang) * side
                sl[_ellipse(yy, xx, cy, cx, 3.0, 4.0)] = 750.0  # cortex ...
                marrow = _ellipse(yy, xx, cy, cx, 1.8, 2.8)  # ... around marrow
                sl[marrow] = 250.0 + 60.0 * trabecular[k][marrow]
        if cfg.table:  # curved couch: carbon shell around a foam core, a few mm below the back
            top = ay_body * 1.02 + 3.0
            couch = (
                (yy >= top - 0.001 * xx**2) & (yy <= top - 0.001 * xx**2 + 7.0) & (np.abs(xx) < 0.45 * fov)
            )
            core = (
                (yy >= top - 0.001 * xx**2 + 1.5)
                & (yy <= top - 0.001 * xx**2 + 5.5)
                & (np.abs(xx) < 0.45 * fov - 1.5)
            )
            sl[couch] = 250.0
            sl[core] = -850.0
    lungs &= ~airways
    return obj, {"lungs": lungs, "airways": airways, "emphysema": emph & lungs, "body": body_mask}


def noise_weight(body: np.ndarray, cfg: PhantomConfig) -> np.ndarray:
    """Relative noise SD per voxel: 1 outside and at the edge of the body, 1 + gain at its centre."""
    from scipy.ndimage import distance_transform_edt

    out = np.ones(body.shape, np.float32)
    for k, sl in enumerate(body):
        if sl.any():
            depth = distance_transform_edt(sl)
            out[k] += cfg.noise_centre_gain * (depth / max(float(depth.max()), 1.0)).astype(np.float32)
    return out


def reconstruct(
    obj: np.ndarray,
    kernels: tuple[str, ...],
    cfg: PhantomConfig,
    rng: np.random.Generator,
    *,
    weight: np.ndarray | None = None,
    body: np.ndarray | None = None,
    ratio: Callable[[Any, np.ndarray], np.ndarray] | None = None,
) -> dict[Any, np.ndarray]:
    """Simulate reconstructions of one acquisition with several kernels (shared noise).

    ``weight`` (z, y, x) shapes the noise SD in space; ``body`` is where the B30f noise SD is
    ``cfg.noise_b30_hu`` on average (default: everywhere). ``ratio(kernel, f)`` is each kernel's MTF
    relative to B30f (default :func:`kernel_ratio` of the named kernels; the conditioned converter's
    training passes kernels on a continuum)."""
    ratio = ratio or kernel_ratio
    nz, n, _ = obj.shape
    pad = n // 8
    m = n + 2 * pad
    f = _freq_grid(m, cfg.pixel_mm)
    h30 = np.exp(-2 * np.pi**2 * B30_SYSTEM_SIGMA_MM**2 * f**2)
    ramp = (f / f.max()) ** (NOISE_SPECTRUM_EXPONENT / 2)
    filters = {k: h30 * ratio(k, f) for k in kernels}
    out = {k: np.empty_like(obj, dtype=np.float32) for k in kernels}
    for z in range(nz):
        sl = np.pad(obj[z].astype(np.float64), pad, mode="edge")
        white = rng.standard_normal((m, m))
        if weight is not None:
            white *= np.pad(weight[z].astype(np.float64), pad, mode="edge")
        noise_f = np.fft.fft2(white) * ramp
        # scale the raw noise so B30f noise SD (in the body) matches cfg.noise_b30_hu
        noise30 = np.real(np.fft.ifft2(noise_f * h30))[pad : pad + n, pad : pad + n]
        region = body[z] if body is not None and body[z].any() else slice(None)
        sd30 = float(noise30[region].std())
        spectrum = np.fft.fft2(sl) + noise_f * (cfg.noise_b30_hu / max(sd30, 1e-12))
        for k in kernels:
            img = np.real(np.fft.ifft2(spectrum * filters[k]))[pad : pad + n, pad : pad + n]
            out[k][z] = img if cfg.clip_hu is None else np.maximum(img, cfg.clip_hu)
    return out


@dataclass
class SyntheticExam:
    """One phantom exam: per-kernel HU volumes, the object and its truth masks."""

    volumes: dict[str, np.ndarray]
    object: np.ndarray
    masks: dict[str, np.ndarray]
    spacing_zyx: tuple[float, float, float]


def make_exam(
    seed: int, *, kernels: tuple[str, ...] = SIMULATED_KERNELS, config: PhantomConfig | None = None
) -> SyntheticExam:
    """Generate one exam deterministically from ``seed``."""
    cfg = config or PhantomConfig()
    rng = np.random.default_rng(seed)
    obj, masks = make_object(cfg, rng)
    weight = noise_weight(masks["body"], cfg)
    vols = reconstruct(obj, tuple(kernels), cfg, rng, weight=weight, body=masks["body"])
    return SyntheticExam(vols, obj, masks, (cfg.slice_mm, cfg.pixel_mm, cfg.pixel_mm))


def write_exam_dicom(
    exam: SyntheticExam, out_dir, *, seed: int, name: str = "exam", layout: str = "folders"
) -> dict[str, list]:
    """Write each kernel's volume as a real DICOM CT series (shared study and frame of reference).

    ``layout='folders'`` puts each series in ``out_dir/<kernel>/``; ``'flat'`` mixes all series
    in ``out_dir`` with opaque file names (as exported by many PACS).
    """
    from pathlib import Path

    from medseg.io.dicom import new_uid
    from medseg.io.dicom_write import write_ct_series

    out_dir = Path(out_dir)
    study, frame = new_uid("study", name, str(seed)), new_uid("frame", name, str(seed))
    written = {}
    for number, (kernel, volume) in enumerate(sorted(exam.volumes.items()), start=1):
        folder = out_dir / kernel if layout == "folders" else out_dir
        written[kernel] = write_ct_series(
            folder,
            volume,
            spacing_zyx=exam.spacing_zyx,
            kernel=kernel,
            study_uid=study,
            series_uid=new_uid("series", name, str(seed), kernel),
            frame_uid=frame,
            series_number=number,
            description=f"Thorax {exam.spacing_zyx[0]:g} {kernel} (synthetic)",
            patient_id=f"SYN{seed:06d}",
            file_prefix="IM" if layout == "folders" else f"{kernel[1:3]}x",
        )
    return written


def write_cohort(
    out_dir,
    seeds: list[int],
    *,
    kernels: tuple[str, ...] = SIMULATED_KERNELS,
    config: PhantomConfig | None = None,
    vary_emphysema: bool = True,
) -> list:
    """One exam folder per seed; emphysema severity varies by seed so Bland-Altman has a range."""
    from dataclasses import replace
    from pathlib import Path

    out = []
    for seed in seeds:
        cfg = config or PhantomConfig()
        if vary_emphysema:
            cfg = replace(cfg, emphysema_fraction=float(np.random.default_rng(seed + 7919).uniform(0.0, 0.2)))
        exam = make_exam(seed, kernels=kernels, config=cfg)
        folder = Path(out_dir) / f"exam{seed:04d}"
        write_exam_dicom(exam, folder, seed=seed, name=folder.name)
        out.append(folder)
    return out
