"""What the brain method assumes of its input, checked before any work and refused in words.

The nets segment four *different* skull-stripped MRI sequences of one human head. Input that breaks
this gives confident nonsense rather than an error, so it is refused with the reason (exit 2; a
failed item in a batch):

- one file (or one image) given for two or more of the four modalities;
- a modality whose values are CT Hounsfield units (air at about -1000), not MRI;
- an image whose non-zero region is far too large for a head (a whole-body scan) or far too small
  for a brain (a near-empty image, or a spacing in the wrong units).

The thresholds are loose on purpose: real BraTS cases (1 mm, 240 x 240 x 155, skull-stripped) and
the synthetic phantoms pass with a wide margin (tested in ``tests/brain/test_input_checks.py``).
"""

from __future__ import annotations

import filecmp
import logging
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from medseg.errors import InputError

log = logging.getLogger("medseg.brain")

# CT: air is -1000 HU (-1024 in most scanners' stored range). Magnitude MRI is never negative, so
# more than 1 % of the field of view at air's value is a CT (a head CT has ~30-60 % air around it).
CT_AIR_HU = (-1100.0, -850.0)
CT_AIR_MIN_FRACTION = 0.01
# A head is ~150-200 mm in every direction; a whole-body or torso field of view is several times that.
MAX_EXTENT_MM = 400.0
# An adult brain is ~1000-1600 mL (BraTS 2018: 1084-1608 mL); even a neonate's is > 300 mL.
MIN_BRAIN_ML = 5.0


def _join(names: list[str]) -> str:
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def _same_file(a: Path, b: Path) -> bool:
    """Same path after resolving symlinks, or two files with byte-identical content."""
    try:
        if a.resolve() == b.resolve():
            return True
        if a.is_file() and b.is_file() and a.stat().st_size == b.stat().st_size:
            return filecmp.cmp(a, b, shallow=False)
    except OSError:
        return False  # unreadable: the reader names the problem
    return False


def _groups(keys: list[str], same) -> list[list[str]]:
    """Keys grouped by ``same(a, b)`` (each key in the first group it matches)."""
    groups: list[list[str]] = []
    for k in keys:
        for g in groups:
            if same(g[0], k):
                g.append(k)
                break
        else:
            groups.append([k])
    return [g for g in groups if len(g) > 1]


def refuse_same_files(modalities: Mapping[str, Path]) -> None:
    """Two or more modalities given by one file (same path, a link to it, or a byte-identical copy).

    The method reads four different sequences; one image four times has no T2/FLAIR contrast and
    gives a meaningless segmentation with exit 0.
    """
    paths = {m: Path(p) for m, p in modalities.items()}
    dup = _groups(list(paths), lambda a, b: _same_file(paths[a], paths[b]))
    if dup:
        mods = dup[0]
        targets = {paths[m].resolve() for m in mods}
        names = sorted({paths[m].name for m in mods})
        how = next(iter(targets)).name if len(targets) == 1 else f"{_join(names)} have identical bytes"
        raise InputError(
            f"{_join(mods)} are the same file ({how}): the method needs a different image for each of "
            "T1, T1c, T2 and FLAIR",
            path=paths[mods[-1]],
        )


def refuse_same_voxels(arrays: Mapping[str, np.ndarray], paths: Mapping[str, Path]) -> None:
    """Two or more modalities with identical voxel data (one image saved under several names)."""
    sig = {m: (a.shape, float(np.sum(a, dtype=np.float64))) for m, a in arrays.items()}
    dup = _groups(list(arrays), lambda a, b: sig[a] == sig[b] and np.array_equal(arrays[a], arrays[b]))
    if dup:
        mods = dup[0]
        raise InputError(
            f"{_join(mods)} hold identical voxel data: the same image was given for "
            f"{'both' if len(mods) == 2 else 'all of them'}; the method needs a different image for each "
            "of T1, T1c, T2 and FLAIR",
            path=Path(paths[mods[-1]]),
        )


def refuse_ct(array: np.ndarray, *, what: str, path: Path) -> None:
    """A modality in CT Hounsfield units (a large share of voxels at air's -1000), not MRI."""
    lo, hi = CT_AIR_HU
    air = float(np.count_nonzero((array >= lo) & (array <= hi))) / max(array.size, 1)
    if air < CT_AIR_MIN_FRACTION:
        return
    vmin, vmax = float(array.min()), float(array.max())
    bone = " and bone above 1000" if vmax > 1000 else ""
    raise InputError(
        f"{what}: values look like CT Hounsfield units ({vmin:g} to {vmax:g}; {air:.0%} of the voxels at "
        f"air's -1000{bone}), not MRI: brain segmentation needs skull-stripped T1, T1c, T2 and FLAIR MRI",
        path=path,
    )


def refuse_implausible_extent(
    stack: np.ndarray, spacing: tuple[float, float, float], *, path: Path | None = None
) -> None:
    """A non-zero region far larger than a head, or far smaller than a brain, at the file's spacing.

    ``stack`` is (4, z, y, x); the brain mask of the method is "any modality non-zero".
    """
    mask = np.any(stack != 0, axis=0)
    n = int(np.count_nonzero(mask))
    voxel_ml = float(np.prod(spacing)) / 1000.0
    if n == 0:
        raise InputError("no brain: every modality is zero everywhere", path=path)
    extent = []
    for axis in range(3):
        hit = np.flatnonzero(np.any(mask, axis=tuple(a for a in range(3) if a != axis)))
        extent.append((hit[-1] - hit[0] + 1) * float(spacing[axis]))
    names = ("z (slices)", "y (rows)", "x (columns)")
    longest = int(np.argmax(extent))
    if extent[longest] > MAX_EXTENT_MM:
        raise InputError(
            f"the image content is {extent[longest]:.0f} mm long along {names[longest]}: more than any head "
            f"(at most ~250 mm; limit {MAX_EXTENT_MM:.0f} mm); this looks like a whole-body or torso scan, "
            "or the voxel spacing is wrong, not brain MRI",
            path=path,
        )
    volume = n * voxel_ml
    if volume < MIN_BRAIN_ML:
        raise InputError(
            f"the non-zero region holds only {volume:.3g} mL ({n} voxels of "
            f"{' x '.join(f'{s:g}' for s in spacing)} mm): too small for a brain (an adult brain is "
            "~1000-1600 mL); the image is nearly empty or its voxel spacing is not in mm",
            path=path,
        )


# A whole skull-stripped adult brain spans ~130-180 mm along each axis (BraTS 2018: >= 128 mm); even a
# neonate's ~70 mm. Less is a slab or crop: the tumour volumes then count only the covered part.
MIN_EXTENT_MM = 60.0
ANATOMICAL_AXES = ("superior-inferior", "anterior-posterior", "left-right")


def partial_coverage_warning(
    stack: np.ndarray, spacing: tuple[float, float, float], *, name: str = ""
) -> str | None:
    """A warning when the brain region spans less than :data:`MIN_EXTENT_MM` along an axis.

    ``stack`` (4, z, y, x) in the training voxel order (:mod:`medseg.brain.orientation`): axes
    superior-inferior, anterior-posterior, left-right. The case is still segmented (crops are
    legitimate test inputs), but its WT/TC/ET volumes are those of the covered part only.
    """
    mask = np.any(stack != 0, axis=0)
    short = []
    for axis in range(3):
        hit = np.flatnonzero(np.any(mask, axis=tuple(a for a in range(3) if a != axis)))
        extent = (hit[-1] - hit[0] + 1) * float(spacing[axis]) if hit.size else 0.0
        if extent < MIN_EXTENT_MM:
            short.append(f"{extent:.0f} mm {ANATOMICAL_AXES[axis]}")
    if not short:
        return None
    return (
        f"{name + ': ' if name else ''}the brain region spans only {', '.join(short)} (a whole brain: "
        "~130-180 mm): the images cover part of the brain (a slab or crop), so the WT/TC/ET volumes count "
        "only the covered part and tumour outside it is missed"
    )


# MRI magnitudes take hundreds of values inside the brain (uint8 exports still tens); a label map or a
# binary mask given as a modality takes a handful (BraTS labels: 0, 1, 2, 4).
MAX_LABEL_VALUES = 8
_SAMPLE = 1 << 20


def refuse_label_map(array: np.ndarray, *, what: str, path: Path) -> None:
    """A modality holding only a few distinct integer values: a segmentation or mask, not MRI."""
    nonzero = array[array != 0]
    if nonzero.size == 0:
        return
    step = max(1, nonzero.size // _SAMPLE)
    values = np.unique(nonzero[::step])
    if values.size > MAX_LABEL_VALUES:
        return
    values = np.unique(nonzero)  # the sample said few: confirm on every voxel
    if values.size > MAX_LABEL_VALUES or not np.all(values == np.rint(values)):
        return
    shown = ", ".join(f"{v:g}" for v in values)
    raise InputError(
        f"{what}: holds only {values.size} distinct non-zero value(s) ({shown}): a label map or mask, not an "
        "MRI image; give the T1, T1c, T2 and FLAIR images (the segmentation is not an input)",
        path=path,
    )
