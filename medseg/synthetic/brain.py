"""Synthetic 4-modality brain MRI (T1, T1c, T2, FLAIR) with a labelled tumour.

Why this model: the Havaei CNNs learn from the *contrast pattern across modalities* in a 33-65
voxel neighbourhood, so the phantom reproduces the per-sequence appearance of normal tissue as well
as of the tumour. Trained on a phantom where only the tumour was bright on FLAIR, the demo weights
called normal tissue edema on real BraTS scans; here "bright on FLAIR" or "bright on T1c" is not
enough to be tumour:

* head ellipsoid with scalp, skull, a grey-matter cortex (wavy, with sulcal CSF clefts), white
  matter, deep grey matter (thalami), lateral ventricles with an enhancing choroid plexus;
* per-sequence contrast ordered as in real MRI (relative intensities after the published T1/T2
  relaxation times at 1.5-3 T): T1 and T1c WM > GM > CSF; T2 CSF > GM > WM; FLAIR GM > WM > CSF
  (CSF suppressed), each tissue jittered per case;
* normal structures that mimic tumour, all *labelled healthy*: periventricular FLAIR caps at the
  ventricular horns and small white-matter hyperintensities (bright on FLAIR and T2, like edema),
  enhancing vessels / dural sinus at the brain surface and the choroid plexus (bright on T1c, like
  enhancing tumour);
* a tumour with irregular (smooth random field) boundaries: necrotic core (dark on T1/T1c,
  bright on T2), an enhancing ring (bright on T1c), and edema (bright on T2 and FLAIR) extending
  further along white matter than into the cortex, never into CSF;
* partial volume (sub-voxel blur: boundary voxels mix their neighbours' tissues), a smooth
  multiplicative inhomogeneity field per sequence (stronger on T1/T1c, which is why N4 runs on
  those), Rician noise, arbitrary per-sequence scanner gain;
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

# tissue index: 0 bg, 1 scalp, 2 skull, 3 csf, 4 gm, 5 wm, 6 necrosis, 7 edema, 8 enhancing,
# 9 FLAIR-bright normal white matter (periventricular caps, small hyperintensities),
# 10 enhancing normal structure (choroid plexus, vessels, dural sinus), 11 deep grey matter
_TISSUE_INTENSITY = np.array(
    [
        # t1    t1c   t2    flair
        [0.00, 0.00, 0.00, 0.00],  # background
        [0.90, 0.90, 0.50, 0.55],  # scalp / fat
        [0.08, 0.08, 0.08, 0.08],  # skull
        [0.22, 0.22, 1.00, 0.10],  # CSF: dark on T1, bright on T2, suppressed on FLAIR
        [0.55, 0.56, 0.66, 0.66],  # grey matter: darker than WM on T1, brighter on T2 and FLAIR
        [0.80, 0.80, 0.42, 0.48],  # white matter
        [0.28, 0.30, 0.95, 0.45],  # necrosis
        [0.50, 0.50, 0.85, 0.95],  # edema
        [0.58, 1.25, 0.68, 0.78],  # enhancing tumour
        [0.66, 0.66, 0.72, 0.88],  # FLAIR-bright normal WM (healthy)
        [0.50, 1.30, 0.55, 0.55],  # enhancing normal structure (healthy)
        [0.64, 0.64, 0.55, 0.58],  # deep grey matter
    ],
    dtype=np.float32,
)
_GAIN = {"t1": 800.0, "t1c": 900.0, "t2": 1200.0, "flair": 600.0}
_BIAS_AMPLITUDE = {"t1": 0.25, "t1c": 0.25, "t2": 0.10, "flair": 0.10}
_TISSUE_LABEL = {6: 1, 7: 2, 8: 4}
_JITTER = 0.05  # per-case relative SD of each tissue's intensity per sequence


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
    tissue: np.ndarray | None = None  # uint8 tissue index (see _TISSUE_INTENSITY), for tests and QA
    anatomy: np.ndarray | None = None  # the tissue index before the tumour was drawn in


def _smooth_field(
    rng: np.random.Generator, shape: tuple[int, ...], sigma_vox: tuple[float, ...]
) -> np.ndarray:
    """Zero-mean, unit-max smooth random field."""
    f = ndi.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma_vox, mode="wrap")
    return f / (np.abs(f).max() + 1e-8)


def _blobs(
    rng: np.random.Generator,
    coords: tuple[np.ndarray, np.ndarray, np.ndarray],
    candidates: np.ndarray,
    n: int,
    radius_mm: tuple[float, float],
) -> np.ndarray:
    """Union of ``n`` balls centred on random voxels of ``candidates``."""
    out = np.zeros(candidates.shape, bool)
    idx = np.flatnonzero(candidates)
    if idx.size == 0 or n == 0:
        return out
    z, y, x = coords
    for i in rng.choice(idx, size=n):
        r = rng.uniform(*radius_mm)
        c = [a.flat[i] for a in coords]
        out |= (z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2 < r * r
    return out


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
    mm = lambda s: tuple(s / v for v in cfg.spacing)  # noqa: E731 - a smoothing scale in voxels
    fov = np.array([nz * sz, ny * sy, nx * sx]) / 2
    semi = np.array([min(fov[0] * 1.15, 75.0), fov[1] * 0.92, fov[2] * 0.8]) * rng.uniform(0.94, 1.02, 3)
    head_d = np.sqrt((z / semi[0]) ** 2 + (y / semi[1]) ** 2 + (x / semi[2]) ** 2)
    d = head_d + 0.03 * _smooth_field(rng, cfg.shape, mm(12.0))

    tissue = np.zeros(cfg.shape, np.uint8)
    tissue[d < 1.0] = 1
    tissue[d < 0.93] = 2
    tissue[d < 0.87] = 3
    brain = d < 0.83
    cortex = 0.70 + 0.05 * _smooth_field(rng, cfg.shape, mm(6.0))
    tissue[brain] = 4
    wm = brain & (d < cortex)
    tissue[wm] = 5
    sulci = _smooth_field(rng, cfg.shape, mm(3.0))  # sulcal CSF clefts in the outer cortex
    tissue[brain & ~wm & (sulci > 0.35) & (d > cortex + 0.04)] = 3
    vscale = rng.uniform(0.8, 1.3)  # ventricle size varies (age, atrophy)
    horns = np.zeros(cfg.shape, bool)
    for side in (-1, 1):
        th = np.sqrt((z / 14.0) ** 2 + ((y + 8.0) / 12.0) ** 2 + ((x - side * 20.0) / 8.0) ** 2)
        tissue[(th < 1.0) & wm] = 11  # thalamus / deep grey matter
        vd = np.sqrt(
            (z / (16.0 * vscale)) ** 2
            + ((y + 5.0) / (24.0 * vscale)) ** 2
            + ((x - side * 8.0) / (6.0 * vscale)) ** 2
        )
        # periventricular caps at the frontal and occipital horns: FLAIR-bright, healthy
        cap = rng.uniform(0.25, 0.6)
        horns |= (vd >= 1.0) & (vd < 1.0 + cap) & (np.abs(y + 5.0) > 14.0 * vscale)
        tissue[vd < 1.0] = 3
        plexus = np.sqrt(
            (z / 5.0) ** 2 + ((y + 5.0 - 12.0 * vscale) / 6.0) ** 2 + ((x - side * 8.0) / 3.0) ** 2
        )
        tissue[(vd < 1.0) & (plexus < 1.0)] = 10  # choroid plexus: enhances, healthy
    if rng.random() < 0.85:
        tissue[horns & (tissue == 5)] = 9
    n_wmh = int(rng.integers(0, 8))
    tissue[_blobs(rng, (z, y, x), wm & (d < cortex - 0.05), n_wmh, (3.0, 7.0)) & (tissue == 5)] = 9
    # enhancing normal vessels: the superior sagittal sinus on the midline and a few cortical veins
    tissue[brain & (np.abs(x) < 3.5) & (d > 0.75) & (np.abs(y) > 0.5 * semi[1])] = 10
    tissue[_blobs(rng, (z, y, x), brain & (d > 0.74), int(rng.integers(2, 6)), (2.0, 4.0)) & brain] = 10

    anatomy = tissue.copy()
    # tumour: centre inside one hemisphere, nested irregular shells
    centre = np.array(
        [
            rng.uniform(-0.25, 0.25) * semi[0],
            rng.uniform(-0.35, 0.35) * semi[1],
            rng.choice([-1, 1]) * rng.uniform(0.25, 0.45) * semi[2],
        ]
    )
    r = np.sqrt((z - centre[0]) ** 2 + (y - centre[1]) ** 2 + (x - centre[2]) ** 2)
    r = r * (1.0 + 0.22 * _smooth_field(rng, cfg.shape, mm(9.0)))
    r_core = rng.uniform(*cfg.tumour_core_mm)
    r_nec = r_core - rng.uniform(*cfg.rim_mm)
    edema_mm = rng.uniform(*cfg.edema_mm)
    edema_shape = r * (1.0 + 0.25 * _smooth_field(rng, cfg.shape, mm(8.0)))
    # edema spreads along white matter (further than the drawn thickness), barely into the cortex,
    # not into CSF
    in_wm = np.isin(tissue, (5, 9, 11))
    edema = brain & (
        (in_wm & (edema_shape < r_core + 1.5 * edema_mm))
        | (tissue == 4) & (edema_shape < r_core + 0.3 * edema_mm)
    )
    tissue[edema] = 7
    tissue[brain & (r < r_core)] = 8
    tissue[brain & (r < r_nec)] = 6

    label = np.zeros(cfg.shape, np.uint8)
    for t, lab in _TISSUE_LABEL.items():
        label[tissue == t] = lab
    brain_mask = d < 0.87  # brain + CSF: what skull stripping keeps

    images: dict[str, np.ndarray] = {}
    for m_idx, mod in enumerate(MODALITIES):
        levels = _TISSUE_INTENSITY[:, m_idx] * (1.0 + _JITTER * rng.standard_normal(len(_TISSUE_INTENSITY)))
        img = levels.astype(np.float32)[tissue]
        img *= 1.0 + 0.04 * _smooth_field(rng, cfg.shape, mm(3.0))  # texture
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
    return BrainCase(
        images=images, label=label, brain_mask=brain_mask, spacing=cfg.spacing, tissue=tissue, anatomy=anatomy
    )


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
