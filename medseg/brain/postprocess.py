"""Post-processing of a brain-tumour label map (internal Havaei labels), each rule switchable.

In order: tumour outside the brain removed; the core rule and the size rule on the whole tumour's 3D
components; enhancing tumour below a total volume relabelled as core; holes of the core filled with
necrosis. The defaults are the rules that improved the mean validation Dice of the shipped weights
(docs/brain.md, "Post-processing").
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class PostprocessConfig:
    """Post-processing rules (``docs/brain.md``, "Post-processing").

    Core rule: a whole-tumour component must hold tumour core (edema surrounds a core; a
    FLAIR-bright component without one is most often normal tissue - periventricular caps, CSF
    flow, white-matter lesions). Size rule: small components are false-positive blobs.
    """

    min_component_ml: float = 0.2
    min_component_fraction: float = 0.1  # of the largest component
    require_core: bool = True  # drop whole-tumour components without tumour core (when any has one)
    min_core_ml: float = 0.1  # tumour core a component needs to count as holding one
    et_min_ml: float = (
        0.0  # enhancing tumour totalling less is relabelled necrosis/core (0: off; no gain on validation)
    )
    fill_core_holes: bool = (
        True  # holes of the tumour core (per axial slice) become necrosis (validation: TC +0.012)
    )

    @classmethod
    def from_dict(cls, data: dict) -> PostprocessConfig:
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


def _drop_coreless(seg: np.ndarray, comps: np.ndarray, n: int, voxel_ml: float, min_core_ml: float) -> int:
    """Zero the whole-tumour components holding less than ``min_core_ml`` of tumour core (in place).

    Only when at least one component holds that much core: with no core anywhere the prediction
    is left to the size rule (an edema-only call cannot be told from a missed core). Returns how
    many components were dropped.
    """
    core = np.isin(seg, (1, 3, 4))
    core_voxels = np.bincount(comps[core], minlength=n + 1)
    min_core = max(1, int(np.ceil(min_core_ml / voxel_ml - 1e-9)))
    keep = core_voxels >= min_core
    keep[0] = True
    if not keep[1:].any() or keep.all():
        return 0
    seg[~keep[comps]] = 0
    return int((~keep).sum())


def postprocess(
    seg: np.ndarray,
    spacing: tuple[float, float, float],
    config: PostprocessConfig | None = None,
    mask: np.ndarray | None = None,
) -> np.ndarray:
    """Remove tumour labels outside the brain, core-less and small 3D components of the whole tumour;
    then, when switched on, relabel a small enhancing tumour as core and fill holes in the core.

    Components are 18-connected. Core rule (``require_core``): when some component holds at least
    ``min_core_ml`` of tumour core (necrosis, non-enhancing, enhancing), the components holding less
    are removed. Size rule, then: a component is kept when it holds at least ``min_component_ml``
    and at least ``min_component_fraction`` of the largest remaining component's voxels.
    ``et_min_ml`` and ``fill_core_holes``: :func:`relabel_small_et`, :func:`fill_core_holes`.
    """
    from scipy import ndimage as ndi

    cfg = config or PostprocessConfig()
    seg = seg.copy()
    if mask is not None:
        seg[~mask] = 0
    structure = ndi.generate_binary_structure(3, 2)
    comps, n = ndi.label(seg > 0, structure=structure)
    if n == 0:
        return seg
    seg = _components(seg, comps, n, spacing, cfg, structure)
    if cfg.et_min_ml > 0:
        seg = relabel_small_et(seg, spacing, cfg.et_min_ml)
    return fill_core_holes(seg) if cfg.fill_core_holes else seg


def _components(
    seg: np.ndarray,
    comps: np.ndarray,
    n: int,
    spacing: tuple[float, float, float],
    cfg: PostprocessConfig,
    structure: np.ndarray,
) -> np.ndarray:
    """The core rule and the size rule on the whole tumour's components (in place)."""
    from scipy import ndimage as ndi
    from skimage.morphology import remove_small_objects

    voxel_ml = float(np.prod(spacing)) / 1000.0
    if cfg.require_core and n > 1 and _drop_coreless(seg, comps, n, voxel_ml, cfg.min_core_ml):
        comps, n = ndi.label(seg > 0, structure=structure)
    largest = int(np.bincount(comps.ravel())[1:].max())
    min_voxels = max(
        int(np.ceil(cfg.min_component_ml / voxel_ml - 1e-9)),
        int(np.ceil(cfg.min_component_fraction * largest - 1e-9)),
    )
    if n == 1:  # one component (skimage warns on a single label): kept unless below the volume floor
        return seg if largest >= min_voxels else np.zeros_like(seg)
    if min_voxels > 1:
        kept = remove_small_objects(comps, max_size=min_voxels - 1)  # labelled input: sizes per label
        seg[kept == 0] = 0
    return seg


def relabel_small_et(seg: np.ndarray, spacing: tuple[float, float, float], min_ml: float) -> np.ndarray:
    """Enhancing tumour totalling less than ``min_ml`` becomes necrosis (still tumour core).

    BraTS practice (e.g. Isensee et al. 2018): a few enhancing voxels are most often a false call in
    a non-enhancing (low-grade) tumour, and BraTS scores a false ET on a case without ET as Dice 0.
    """
    et = seg == 4
    if 0 < et.sum() * float(np.prod(spacing)) / 1000.0 < min_ml:
        seg = seg.copy()
        seg[et] = 1
    return seg


def fill_core_holes(seg: np.ndarray) -> np.ndarray:
    """Holes of the tumour core in each axial slice (edema or healthy enclosed by core) become necrosis.

    Necrosis is enclosed by an enhancing rim; a net calling its centre edema leaves such holes.
    """
    from scipy import ndimage as ndi

    core = np.isin(seg, (1, 3, 4))
    seg = seg.copy()
    for z in np.flatnonzero(core.any(axis=(1, 2))):
        holes = ndi.binary_fill_holes(core[z]) & ~core[z]
        seg[z][holes] = 1
    return seg
