"""Synthetic chest CT reconstructed with simulated Siemens kernels (B10f/B30f/B50f/B70f).

Why this model: reconstructions of one scan with different kernels share one sinogram, so
they share one noise realisation and differ by a linear filter. We simulate exactly that:

    image_k = IFFT( (FFT(object) + raw_noise) * H30(f) * R_k(f) )

with a Gaussian system MTF ``H30`` for B30f and kernel ratios ``R_k`` calibrated on measured
ratios relative to B30f (see ``KERNEL_SIGMA_MM``): B10f = B30f blurred (Gaussian sigma 0.52 mm),
B50f = B30f * exp(2 pi^2 sigma^2 f^2) with sigma 0.52 mm, B70f likewise with sigma 0.64 mm and a
gain cap of 17. The raw noise has a ramp (|f|) spectrum as in filtered back-projection, scaled
so soft-tissue noise in B30f is ``noise_b30_hu``; the other kernels' noise follows from their
filters (about 0.65 : 1 : 2.6 : 5.5). Lung parenchyma carries fine texture that sharp kernels
amplify, which raises LAA-950 by roughly 8-11 points, as reported clinically.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from medseg.ct import KERNELS  # the one list of kernel names medseg knows

# (sign, sigma in mm, gain cap) of the ratio R_k(f) = exp(sign * 2 pi^2 sigma^2 f^2) w.r.t. B30f
KERNEL_SIGMA_MM: dict[str, tuple[int, float, float]] = {
    "B10f": (-1, 0.52, 1.0),
    "B30f": (0, 0.0, 1.0),
    "B50f": (1, 0.52, 40.0),
    "B70f": (1, 0.64, 17.0),
}
SIMULATED_KERNELS = tuple(k for k in KERNELS if k in KERNEL_SIGMA_MM)  # what a phantom exam holds by default
B30_SYSTEM_SIGMA_MM = 0.55  # Gaussian system MTF of the B30f reconstruction
TEXTURE_SIGMA_PX = 0.45  # grain of the lung parenchyma texture
NOISE_SPECTRUM_EXPONENT = 0.75  # raw noise power ~ |f|**exponent (1 = pure FBP ramp)


@dataclass
class PhantomConfig:
    """Geometry and contents of one synthetic exam."""

    size: int = 160  # in-plane matrix (pixels)
    n_slices: int = 12
    pixel_mm: float = 0.7
    slice_mm: float = 1.5
    noise_b30_hu: float = 18.0  # soft-tissue noise SD in B30f
    lung_hu: float = -868.0  # mean lung parenchyma
    lung_texture_hu: float = 42.0  # SD of fine parenchymal texture in the object
    emphysema_fraction: float = 0.08  # requested volume fraction of bullae (about 60 % survive in the slab)


def kernel_ratio(kernel: str, f_per_mm: np.ndarray) -> np.ndarray:
    """Frequency response of ``kernel`` relative to B30f at spatial frequency ``f`` (cycles/mm)."""
    if kernel not in KERNEL_SIGMA_MM:
        raise ValueError(f"kernel '{kernel}' is not simulated; simulated: {', '.join(SIMULATED_KERNELS)}")
    sign, sigma, cap = KERNEL_SIGMA_MM[kernel]
    ratio = np.exp(sign * 2 * np.pi**2 * sigma**2 * np.asarray(f_per_mm, float) ** 2)
    return np.minimum(ratio, cap) if sign > 0 else ratio


def _freq_grid(n: int, pixel_mm: float) -> np.ndarray:
    f = np.fft.fftfreq(n, d=pixel_mm)
    return np.hypot(f[:, None], f[None, :])


def _ellipse(yy, xx, cy, cx, ry, rx) -> np.ndarray:
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma_px: float) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    field = gaussian_filter(rng.standard_normal(shape), sigma_px)
    return field / (field.std() + 1e-12)


def make_object(cfg: PhantomConfig, rng: np.random.Generator) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The 'true' object in HU, shape (z, y, x), plus truth masks (lungs, airways, emphysema)."""
    n, nz, px = cfg.size, cfg.n_slices, cfg.pixel_mm
    fov = n * px
    coords = (np.arange(n) - (n - 1) / 2) * px
    yy, xx = np.meshgrid(coords, coords, indexing="ij")
    zz = (np.arange(nz) - (nz - 1) / 2) * cfg.slice_mm

    obj = np.full((nz, n, n), -1000.0, np.float32)
    lungs = np.zeros((nz, n, n), bool)
    airways = np.zeros((nz, n, n), bool)
    emph = np.zeros((nz, n, n), bool)

    # body geometry (slightly varying with z)
    ax_body, ay_body = 0.46 * fov, 0.34 * fov
    lung_ry, lung_rx = 0.25 * fov, 0.16 * fov
    lung_cx, lung_cy = 0.205 * fov, -0.01 * fov
    spine_c, spine_r = (0.24 * fov, 0.0), 0.065 * fov
    trachea_c, trachea_r = (-0.16 * fov, 0.0), 0.045 * fov
    texture = _smooth_noise(rng, (nz, n, n), TEXTURE_SIGMA_PX)
    slow = _smooth_noise(rng, (nz, n, n), 8.0)

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
    # vessels: cylinders crossing the slab obliquely
    vessels = []
    for _ in range(int(26 * (n / 160) ** 2)):
        side = rng.choice([-1, 1])
        vessels.append(
            (
                rng.uniform(-0.8, 0.8) * lung_ry + lung_cy,
                side * lung_cx + rng.uniform(-0.75, 0.75) * lung_rx,
                rng.uniform(-0.3, 0.3),
                rng.uniform(-0.3, 0.3),
                rng.uniform(0.6, 2.2),
            )
        )
    # small bronchi: rings running with the vessels
    bronchi = []
    for _ in range(int(6 * (n / 160) ** 2)):
        side = rng.choice([-1, 1])
        bronchi.append(
            (
                rng.uniform(-0.6, 0.6) * lung_ry + lung_cy,
                side * lung_cx + rng.uniform(-0.5, 0.5) * lung_rx,
                rng.uniform(-0.15, 0.15),
                rng.uniform(-0.15, 0.15),
                rng.uniform(1.2, 2.2),
            )
        )

    for k, z in enumerate(zz):
        s = 1.0 + 0.02 * np.sin(z / 20.0)
        body = _ellipse(yy, xx, 0, 0, ay_body * s, ax_body * s)
        inner = _ellipse(yy, xx, 0, 0, ay_body * s - 6.0, ax_body * s - 6.0)
        sl = obj[k]
        sl[body] = -95.0  # subcutaneous fat
        sl[inner] = 40.0  # muscle / soft tissue
        lung_k = np.zeros_like(body)
        for side in (-1, 1):
            lung_k |= _ellipse(yy, xx, lung_cy, side * lung_cx, lung_ry * s, lung_rx * s)
        heart = _ellipse(yy, xx, -0.02 * fov, 0.05 * fov, 0.16 * fov, 0.1 * fov)
        lung_k &= ~heart & inner
        sl[lung_k] = cfg.lung_hu + 15.0 * slow[k][lung_k] + cfg.lung_texture_hu * texture[k][lung_k]
        for cz, cy, cx, r in bullae:
            dz = z - cz
            if abs(dz) < r:
                rr = np.sqrt(r * r - dz * dz)
                b = _ellipse(yy, xx, cy, cx, rr, rr) & lung_k
                sl[b] = -985.0 + 6.0 * texture[k][b]
                emph[k] |= b
        for cy, cx, ty, tx, r in vessels:
            v = _ellipse(yy, xx, cy + ty * z, cx + tx * z, r, r) & lung_k
            sl[v] = 40.0
        for cy, cx, ty, tx, r in bronchi:
            outer = _ellipse(yy, xx, cy + ty * z, cx + tx * z, r + 0.9, r + 0.9) & lung_k
            lumen = _ellipse(yy, xx, cy + ty * z, cx + tx * z, r, r) & lung_k
            sl[outer] = 30.0
            sl[lumen] = -1000.0
            airways[k] |= lumen
        lungs[k] = lung_k
        # trachea (mediastinal airway, separate from the lungs)
        tw = _ellipse(yy, xx, *trachea_c, trachea_r + 1.8, trachea_r + 1.8)
        tl = _ellipse(yy, xx, *trachea_c, trachea_r, trachea_r)
        sl[tw] = 35.0
        sl[tl] = -1000.0
        airways[k] |= tl
        # spine: cortical shell + cancellous core; ribs on the body wall
        sl[_ellipse(yy, xx, *spine_c, spine_r, spine_r)] = 850.0
        sl[_ellipse(yy, xx, *spine_c, spine_r - 2.5, spine_r - 2.5)] = 230.0
        for ang in np.linspace(0.25, np.pi - 0.25, 7):
            for side in (-1, 1):
                ry_, rx_ = ay_body * s - 9.0, ax_body * s - 9.0
                cy, cx = ry_ * np.cos(ang) * -1 * side, rx_ * np.sin(ang) * side
                sl[_ellipse(yy, xx, cy, cx, 3.0, 4.0)] = 700.0
    lungs &= ~airways
    return obj, {"lungs": lungs, "airways": airways, "emphysema": emph & lungs}


def reconstruct(
    obj: np.ndarray, kernels: tuple[str, ...], cfg: PhantomConfig, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """Simulate reconstructions of one acquisition with several kernels (shared noise)."""
    nz, n, _ = obj.shape
    pad = n // 8
    m = n + 2 * pad
    f = _freq_grid(m, cfg.pixel_mm)
    h30 = np.exp(-2 * np.pi**2 * B30_SYSTEM_SIGMA_MM**2 * f**2)
    ramp = (f / f.max()) ** (NOISE_SPECTRUM_EXPONENT / 2)
    filters = {k: h30 * kernel_ratio(k, f) for k in kernels}
    out = {k: np.empty_like(obj, dtype=np.float32) for k in kernels}
    for z in range(nz):
        sl = np.pad(obj[z].astype(np.float64), pad, mode="edge")
        noise_f = np.fft.fft2(rng.standard_normal((m, m))) * ramp
        # scale the raw noise so B30f noise SD matches cfg.noise_b30_hu
        sd30 = np.real(np.fft.ifft2(noise_f * h30)).std()
        spectrum = np.fft.fft2(sl) + noise_f * (cfg.noise_b30_hu / sd30)
        for k in kernels:
            img = np.real(np.fft.ifft2(spectrum * filters[k]))
            out[k][z] = img[pad : pad + n, pad : pad + n]
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
    vols = reconstruct(obj, tuple(kernels), cfg, rng)
    return SyntheticExam(vols, obj, masks, (cfg.slice_mm, cfg.pixel_mm, cfg.pixel_mm))


def write_exam_dicom(
    exam: SyntheticExam, out_dir, *, seed: int, name: str = "exam", layout: str = "folders"
) -> dict[str, list]:
    """Write each kernel's volume as a real DICOM CT series (shared study and frame of reference).

    ``layout='folders'`` puts each series in ``out_dir/<kernel>/``; ``'flat'`` mixes all series
    in ``out_dir`` with opaque file names (as exported by many PACS).
    """
    from pathlib import Path

    from medseg.io.dicom import new_uid, write_ct_series

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
