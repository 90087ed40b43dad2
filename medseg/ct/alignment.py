"""Do two CT series cover the same voxels? The check before any voxel-by-voxel QA comparison.

Why: the QA numbers (RMSE against the reference, LAA-950 in the reference's lung mask) compare the
converted series with the reference voxel by voxel. Two series of the same size are not the same
slices when one starts 10 mm further, has another field of view (pixel size), or is stored flipped
(a NIfTI exported with another slice order); the numbers would then compare different anatomy,
with no warning. The grid (first voxel's position, voxel size, orientation) of both is compared
first, within half a voxel.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medseg.errors import InputError

ORIGIN_TOL_VOXELS = 0.5
SPACING_TOL = 0.01  # relative
DIRECTION_TOL = 1e-3


@dataclass
class Grid:
    """Where a (z, y, x) volume's voxels lie: first voxel (x, y, z mm, LPS), spacing (z, y, x) mm,
    direction (3x3, column i = axis i: x, y, slice normal) and number of slices."""

    origin: np.ndarray
    spacing_zyx: tuple[float, float, float]
    direction: np.ndarray
    slices: int
    uid: str = ""  # SeriesInstanceUID of a DICOM series
    positions: np.ndarray | None = None  # each slice along the normal (mm): DICOM may be uneven
    planar: bool = False  # a 2D image file: no position along the normal

    def slice_positions(self) -> np.ndarray:
        if self.positions is not None and len(self.positions) == self.slices:
            return self.positions
        return float(self.direction[:, 2] @ self.origin) + self.spacing_zyx[0] * np.arange(self.slices)


def grid_from_meta(meta, slices: int) -> Grid:
    """The grid of a volume read with its :class:`medseg.io.volume.VolumeMeta`."""
    return Grid(
        np.asarray(meta.origin, dtype=float),
        tuple(float(v) for v in meta.spacing),
        np.asarray(meta.direction, dtype=float).reshape(3, 3),
        slices,
        str(meta.series_uid or ""),
        np.asarray(meta.extra["positions"], dtype=float) if "positions" in meta.extra else None,
    )


def volume_file_grid(path: Path) -> Grid:
    """The grid of a NIfTI/NRRD/MHA file from its header (a 2D image is one axial slice)."""
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    size, spacing, origin = reader.GetSize(), reader.GetSpacing(), reader.GetOrigin()
    if len(size) == 2:  # as read_volume_sitk's JoinSeries: one slice, identity orientation
        return Grid(np.array([*origin, 0.0]), (1.0, spacing[1], spacing[0]), np.eye(3), 1, planar=True)
    direction = np.asarray(reader.GetDirection(), dtype=float).reshape(3, 3)
    return Grid(np.asarray(origin, dtype=float), (spacing[2], spacing[1], spacing[0]), direction, size[2])


def series_grid(path: Path, series_uid: str | None = None) -> tuple[tuple[int, int, int], Grid]:
    """(slices, rows, columns) and grid of a DICOM series or volume file, from the headers only."""
    from medseg.io.dicom import open_series
    from medseg.io.volume import is_volume_file, volume_shape

    if is_volume_file(path):
        shape = volume_shape(path)  # checks the header first
        return shape, volume_file_grid(path)
    series = open_series(path, series_uid=series_uid)
    return (len(series.files), series.rows, series.columns), series_grid_of(series)


def series_grid_of(series) -> Grid:
    """The grid of an open :class:`medseg.io.dicom.DicomSeries`, with each slice's position."""
    grid = grid_from_meta(series.meta(), len(series.files))
    grid.positions = np.asarray(series.positions, dtype=float)
    return grid


def _mm(values) -> str:
    return " x ".join(f"{v:.3g}" for v in values) + " mm"


def grid_mismatch(ours: Grid, theirs: Grid, ours_name: str = "the input") -> str | None:
    """Why ``theirs`` does not cover the voxels of ``ours`` (called ``ours_name``), in words that follow
    'the reference ...', or None when it does."""
    if np.abs(ours.direction - theirs.direction).max() > DIRECTION_TOL:
        return (
            "is oriented differently (another slice order or axis flip, e.g. a volume exported "
            "with another orientation)"
        )
    axes = [1, 2] + ([0] if min(ours.slices, theirs.slices) > 1 else [])  # (z, y, x) indices compared
    for i in axes:
        a, b = ours.spacing_zyx[i], theirs.spacing_zyx[i]
        if abs(a - b) > SPACING_TOL * max(a, b):
            return (
                f"has voxels of {_mm(theirs.spacing_zyx)} (slice, row, column), {ours_name} "
                f"{_mm(ours.spacing_zyx)}: another field of view or slice spacing"
            )
    spacing_xyz = np.array(ours.spacing_zyx[::-1])
    offset = ours.direction.T @ (theirs.origin - ours.origin)  # along x, y, slice normal (mm)
    if ours.slices == 1 and theirs.slices == 1:
        spacing_xyz[2] = max(spacing_xyz[2], 1.0)
    if ours.planar or theirs.planar:  # a 2D image file keeps no position: its pixel size is all to compare
        return None
    if np.any(np.abs(offset) > ORIGIN_TOL_VOXELS * spacing_xyz):
        return (
            f"starts at another place: its first voxel is {np.linalg.norm(offset):.1f} mm from that of "
            f"{ours_name} (offset {offset[0]:+.1f}, {offset[1]:+.1f} mm in-plane, {offset[2]:+.1f} mm "
            "along the slices)"
        )
    ours_z, theirs_z = ours.slice_positions(), theirs.slice_positions()
    if len(ours_z) == len(theirs_z) and len(ours_z) > 1:
        off = np.abs(ours_z - theirs_z)
        i = int(np.argmax(off))
        if off[i] > ORIGIN_TOL_VOXELS * spacing_xyz[2]:
            return (
                f"has its slice {i + 1} at {theirs_z[i]:.1f} mm along the slices, {ours_name} at "
                f"{ours_z[i]:.1f} mm (a missing or extra slice?)"
            )
    return None


def check_reference(shape: tuple[int, int, int], ours: Grid, reference: Path, input_path: Path) -> None:
    """The reference series/volume at ``reference`` is another series than the input, has ``shape``
    and covers the grid ``ours`` (ct-convert --reference), else an InputError naming it."""
    from medseg.ct.report import _shape

    ref_shape, ref_grid = series_grid(reference)
    if reference.resolve() == input_path.resolve() or (ours.uid and ours.uid == ref_grid.uid):
        raise InputError(
            "the reference is the input series itself: give the same scan reconstructed with the "
            "target kernel",
            path=reference,
        )
    if ref_shape != shape:
        raise InputError(
            f"the reference has {_shape(ref_shape)}, the input {_shape(shape)}: not the same scan",
            path=reference,
        )
    problem = grid_mismatch(ours, ref_grid)
    if problem:
        raise InputError(
            f"the reference {problem}: not the same slices of the same scan, so the QA would compare "
            "different anatomy",
            path=reference,
        )


def check_planes(series) -> None:
    """Every slice (file, or frame of a multi-frame file) of a DICOM ``series`` states its plane
    (ImagePositionPatient and ImageOrientationPatient), as one multi-frame Enhanced CT output must for
    each frame; else an InputError naming the first without (classic output keeps each header)."""
    import pydicom

    from medseg.io.dicom import frame_headers

    keywords = ("ImagePositionPatient", "ImageOrientationPatient")
    for file in dict.fromkeys(series.files):
        if series.frames:  # the frames' planes come from their functional groups
            headers = frame_headers(pydicom.dcmread(file, stop_before_pixels=True))
        else:
            headers = [pydicom.dcmread(file, stop_before_pixels=True, specific_tags=list(keywords))]
        for number, ds in enumerate(headers, start=1):
            missing = [k for k in keywords if not ds.get(k)]
            if missing:
                frame = f"frame {number}: " if series.frames else ""
                raise InputError(
                    f"{frame}no {' or '.join(missing)}: an Enhanced CT output (--dicom-format enhanced) "
                    "states each frame's plane, which this slice does not give; use --dicom-format classic",
                    path=file,
                )


def check_study(series) -> None:
    """A derived DICOM series joins its source's study: a source without StudyInstanceUID (Type 1)
    would give output files without one; InputError naming the first file without it."""
    import pydicom

    for file in dict.fromkeys(series.files):
        ds = pydicom.dcmread(file, stop_before_pixels=True, specific_tags=["StudyInstanceUID"])
        if not str(ds.get("StudyInstanceUID", "") or "").strip():
            raise InputError(
                "no StudyInstanceUID (0020,000D): a derived DICOM series cannot join the study of a "
                "slice without one; fix the export, or write a volume file (--format nifti)",
                path=file,
            )
