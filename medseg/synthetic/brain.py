"""Synthetic 4-modality brain MRI (T1, T1c, T2, FLAIR) with a labelled tumour.

Why this model: the Havaei CNNs learn from the *contrast pattern across modalities*, so the
phantom reproduces the qualitative BraTS appearance of each tissue rather than anatomy:

* head ellipsoid with scalp, skull, CSF, a grey-matter cortex band (wavy) and white matter,
  two ventricles;
* a tumour with irregular (smooth random field) boundaries: necrotic core (dark on T1/T1c,
  bright on T2), an enhancing rim (bright on T1c only), surrounded by edema (bright on T2 and
  FLAIR);
* partial-volume blur, a smooth multiplicative bias field per modality (stronger on T1/T1c, which
  is why N4 runs on those), Rician noise, arbitrary per-modality scanner gain;
* skull-stripped like BraTS by default (zero outside the brain).

Labels use the Havaei order (0 healthy, 1 necrosis, 2 edema, 4 enhancing; 3 non-enhancing is not
simulated), which coincides with the BraTS 2021 convention. Seeded and deterministic.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from medseg.brain.io import MODALITIES

# tissue index: 0 bg, 1 scalp, 2 skull, 3 csf, 4 gm, 5 wm, 6 necrosis, 7 edema, 8 enhancing
_TISSUE_INTENSITY = np.array(
    [
        # t1    t1c   t2    flair
        [0.00, 0.00, 0.00, 0.00],  # background
        [0.90, 0.90, 0.50, 0.55],  # scalp / fat
        [0.08, 0.08, 0.08, 0.08],  # skull
        [0.22, 0.22, 1.00, 0.12],  # CSF
        [0.55, 0.55, 0.62, 0.60],  # grey matter
        [0.78, 0.78, 0.42, 0.48],  # white matter
        [0.28, 0.30, 0.95, 0.35],  # necrosis
        [0.45, 0.45, 0.82, 0.95],  # edema
        [0.58, 1.25, 0.62, 0.70],  # enhancing tumour
    ],
    dtype=np.float32,
)
_GAIN = {"t1": 800.0, "t1c": 900.0, "t2": 1200.0, "flair": 600.0}
_BIAS_AMPLITUDE = {"t1": 0.25, "t1c": 0.25, "t2": 0.10, "flair": 0.10}
_TISSUE_LABEL = {6: 1, 7: 2, 8: 4}


@dataclass
class BrainPhantomConfig:
    """Geometry and appearance of one synthetic case; arrays are (z, y, x)."""

    shape: tuple[int, int, int] = (24, 64, 64)
    spacing: tuple[float, float, float] = (5.0, 3.0, 3.0)  # mm, (z, y, x)
    noise: float = 0.03  # Rician noise SD relative to white matter
    bias: bool = True
    skull_strip: bool = True
    tumour_core_mm: tuple[float, float] = (15.0, 24.0)  # radius range of necrosis + enhancing
    rim_mm: tuple[float, float] = (5.0, 7.5)  # enhancing rim thickness range
    edema_mm: tuple[float, float] = (8.0, 16.0)  # edema thickness range beyond the core


@dataclass
class BrainCase:
    images: dict[str, np.ndarray]  # modality -> float32 (z, y, x)
    label: np.ndarray  # uint8 (z, y, x), Havaei / BraTS-2021 labels
    brain_mask: np.ndarray  # bool
    spacing: tuple[float, float, float]


def _smooth_field(
    rng: np.random.Generator, shape: tuple[int, ...], sigma_vox: tuple[float, ...]
) -> np.ndarray:
    """Zero-mean, unit-max smooth random field."""
    f = ndi.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma_vox, mode="wrap")
    return f / (np.abs(f).max() + 1e-8)


def make_brain_case(seed: int, config: BrainPhantomConfig | None = None) -> BrainCase:
    """Generate one case from ``seed`` (same seed, same case)."""
    cfg = config or BrainPhantomConfig()
    rng = np.random.default_rng(seed)
    nz, ny, nx = cfg.shape
    sz, sy, sx = cfg.spacing
    z, y, x = np.meshgrid(
        (np.arange(nz) - (nz - 1) / 2) * sz,
        (np.arange(ny) - (ny - 1) / 2) * sy,
        (np.arange(nx) - (nx - 1) / 2) * sx,
        indexing="ij",
    )
    fov = np.array([nz * sz, ny * sy, nx * sx]) / 2
    semi = np.array([min(fov[0] * 1.15, 75.0), fov[1] * 0.92, fov[2] * 0.8]) * rng.uniform(0.94, 1.02, 3)
    head_d = np.sqrt((z / semi[0]) ** 2 + (y / semi[1]) ** 2 + (x / semi[2]) ** 2)
    sigma_vox = tuple(12.0 / s for s in cfg.spacing)
    wobble = 0.03 * _smooth_field(rng, cfg.shape, sigma_vox)
    d = head_d + wobble

    tissue = np.zeros(cfg.shape, np.uint8)
    tissue[d < 1.0] = 1
    tissue[d < 0.93] = 2
    tissue[d < 0.87] = 3
    brain = d < 0.83
    cortex = 0.70 + 0.05 * _smooth_field(rng, cfg.shape, tuple(6.0 / s for s in cfg.spacing))
    tissue[brain] = 4
    tissue[brain & (d < cortex)] = 5
    for side in (-1, 1):  # lateral ventricles
        vd = np.sqrt((z / 18.0) ** 2 + ((y + 5.0) / 22.0) ** 2 + ((x - side * 9.0) / 6.0) ** 2)
        tissue[vd < 1.0] = 3

    # tumour: centre inside one hemisphere, nested irregular shells
    centre = np.array(
        [
            rng.uniform(-0.25, 0.25) * semi[0],
            rng.uniform(-0.35, 0.35) * semi[1],
            rng.choice([-1, 1]) * rng.uniform(0.25, 0.45) * semi[2],
        ]
    )
    r = np.sqrt((z - centre[0]) ** 2 + (y - centre[1]) ** 2 + (x - centre[2]) ** 2)
    r = r * (1.0 + 0.22 * _smooth_field(rng, cfg.shape, tuple(9.0 / s for s in cfg.spacing)))
    r_core = rng.uniform(*cfg.tumour_core_mm)
    r_nec = r_core - rng.uniform(*cfg.rim_mm)
    r_edema = r_core + rng.uniform(*cfg.edema_mm)
    edema_shape = r * (1.0 + 0.25 * _smooth_field(rng, cfg.shape, tuple(8.0 / s for s in cfg.spacing)))
    tissue[brain & (edema_shape < r_edema)] = 7
    tissue[brain & (r < r_core)] = 8
    tissue[brain & (r < r_nec)] = 6

    label = np.zeros(cfg.shape, np.uint8)
    for t, lab in _TISSUE_LABEL.items():
        label[tissue == t] = lab
    brain_mask = d < 0.87  # brain + CSF: what skull stripping keeps

    images: dict[str, np.ndarray] = {}
    for m_idx, mod in enumerate(MODALITIES):
        img = _TISSUE_INTENSITY[tissue, m_idx].copy()
        img *= 1.0 + 0.04 * _smooth_field(rng, cfg.shape, tuple(3.0 / s for s in cfg.spacing))  # texture
        img = ndi.gaussian_filter(img, (0.5, 0.6, 0.6))  # partial volume
        if cfg.bias:
            zz, yy, xx = (z / fov[0], y / fov[1], x / fov[2])
            c = rng.normal(0, 1, 6)
            poly = c[0] * xx + c[1] * yy + c[2] * zz + c[3] * xx * yy + c[4] * xx**2 + c[5] * yy**2
            poly /= np.abs(poly).max() + 1e-8
            img *= np.exp(_BIAS_AMPLITUDE[mod] * poly)
        sigma = cfg.noise * _TISSUE_INTENSITY[5, m_idx]
        img = np.sqrt((img + rng.normal(0, sigma, img.shape)) ** 2 + rng.normal(0, sigma, img.shape) ** 2)
        img = (img * _GAIN[mod]).astype(np.float32)
        if cfg.skull_strip:
            img[~brain_mask] = 0.0
        images[mod] = img
    if cfg.skull_strip:
        label[~brain_mask] = 0
    return BrainCase(images=images, label=label, brain_mask=brain_mask, spacing=cfg.spacing)


# BraTS 2021 file naming: <case>/<case>_<suffix>.nii.gz
BRATS2021_SUFFIX = {"t1": "t1", "t1c": "t1ce", "t2": "t2", "flair": "flair", "seg": "seg"}


def write_brain_case(case: BrainCase, out_dir: str | Path, *, name: str) -> Path:
    """Write ``case`` as a BraTS-2021-named case folder of NIfTI files (atomically per file)."""
    from medseg.io.volume import VolumeMeta, write_volume_sitk

    out = Path(out_dir) / name
    out.mkdir(parents=True, exist_ok=True)
    nz, ny, nx = case.label.shape
    sz, sy, sx = case.spacing
    meta = VolumeMeta(
        spacing=case.spacing,
        origin=(-(nx - 1) / 2 * sx, -(ny - 1) / 2 * sy, -(nz - 1) / 2 * sz),
        direction=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0),
        source="synthetic",
        path="",
    )
    for mod, img in case.images.items():
        write_volume_sitk(out / f"{name}_{BRATS2021_SUFFIX[mod]}.nii.gz", img, meta, dtype=np.float32)
    write_volume_sitk(out / f"{name}_seg.nii.gz", case.label, meta, dtype=np.uint8)
    return out
