"""Cases stored in another voxel order than the nets were trained on: reoriented, without interpolation.

The brain nets were trained on BraTS volumes, stored axially with the voxel axes along the
patient's left, posterior and superior (SimpleITK direction = identity, "LPS"); the slice nets run
on the array's axial slices. A case stored sagittally or coronally (common for 3-D T1/FLAIR
acquisitions), or with flipped axes (RAS-stored NIfTI), would show the slice nets sagittal or
coronal slices and the 3-D net a mirrored head. :func:`to_training_orientation` permutes and flips
the array axes (no resampling: every voxel keeps its value) so that each axis runs along the
anatomical axis closest to it in the training orientation; the labels are brought back with the
returned inverse and written on the input grid. An oblique acquisition keeps its tilt (the axes
are only matched to the nearest anatomical axis).
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable

import numpy as np

from medseg.brain.io import Geometry

log = logging.getLogger("medseg.brain")

_WORLD = "LPS"  # world axis letters for +x, +y, +z (DICOM/ITK patient coordinates)
_OPPOSITE = {"L": "R", "P": "A", "S": "I"}


def axis_codes(direction: tuple[float, ...]) -> str:
    """Anatomical direction of the index axes x, y, z (e.g. ``"LPS"`` for BraTS, ``"PSL"`` sagittal)."""
    d = np.asarray(direction, float).reshape(3, 3)
    world, signs = _match(d)
    return "".join(_WORLD[w] if s > 0 else _OPPOSITE[_WORLD[w]] for w, s in zip(world, signs))


def _match(d: np.ndarray) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """World axis and sign for each index axis (column of ``d``): the permutation closest to ``d``."""
    best = max(itertools.permutations(range(3)), key=lambda p: sum(abs(d[p[j], j]) for j in range(3)))
    signs = tuple(1 if d[best[j], j] >= 0 else -1 for j in range(3))
    return best, signs


def to_training_orientation(
    stack: np.ndarray, geo: Geometry
) -> tuple[np.ndarray, Geometry, Callable[[np.ndarray], np.ndarray]]:
    """``stack`` (c, z, y, x) with its voxel axes along S, P, L (the training order), its geometry,
    and the function taking a (z, y, x) map of the reoriented grid back onto ``geo``'s grid.

    A case already in that order is returned as is (same objects, identity inverse).
    """
    d = np.asarray(geo.direction, float).reshape(3, 3)
    world, signs = _match(d)
    if world == (0, 1, 2) and signs == (1, 1, 1):
        return stack, geo, lambda labels: labels
    # array axis a (0 = z, 1 = y, 2 = x) holds index axis 2 - a; new array axis for world w is 2 - w
    index_of_world = {w: j for j, w in enumerate(world)}
    src_axes = [2 - index_of_world[2 - a] for a in range(3)]  # source array axis for each new array axis
    flip = [a for a in range(3) if signs[2 - src_axes[a]] < 0]  # new array axes to reverse
    spacing_xyz = np.asarray(geo.spacing[::-1], float)  # index x, y, z
    shape_xyz = np.asarray(geo.shape[::-1])
    # the new first voxel: the old voxel at the far end of every flipped index axis
    corner = np.array([(shape_xyz[j] - 1) if signs[j] < 0 else 0 for j in range(3)], float)
    origin = np.asarray(geo.origin, float) + d @ (corner * spacing_xyz)
    new_d = np.empty((3, 3))
    for w in range(3):
        j = index_of_world[w]
        new_d[:, w] = d[:, j] * signs[j]
    new_geo = Geometry(
        shape=tuple(int(geo.shape[s]) for s in src_axes),  # type: ignore[arg-type]
        spacing=tuple(float(geo.spacing[s]) for s in src_axes),  # type: ignore[arg-type]
        origin=tuple(float(o) for o in origin),  # type: ignore[arg-type]
        direction=tuple(float(v) for v in new_d.ravel()),
    )
    lead = stack.ndim - 3
    out = np.transpose(stack, [*range(lead), *(lead + s for s in src_axes)])
    if flip:
        out = np.flip(out, [lead + a for a in flip])
    inverse = np.argsort(src_axes)

    def back(labels: np.ndarray) -> np.ndarray:
        arr = np.flip(labels, flip) if flip else labels
        return np.ascontiguousarray(np.transpose(arr, inverse))

    log.info(
        "voxel axes run %s (x, y, z), not LPS as the training cases: reoriented for the nets "
        "(axes permuted/flipped, no resampling); labels are written on the input grid",
        axis_codes(geo.direction),
    )
    return np.ascontiguousarray(out), new_geo, back
