"""Find exams and their per-kernel series on disk (shared by ct-train and ct-report).

ct-report: an *exam* folder holds one series per kernel: DICOM series (any layout below it,
identified by their ConvolutionKernel tag) and/or volumes named after the kernel
(``B30f.nii.gz``, ``exam01_B30f.nrrd``). A *cohort* folder holds exam folders. A folder is taken
as a cohort when it contains no volume files and has sub-folders not named after a kernel, unless
its DICOM series, spread over several sub-folders, share one FrameOfReferenceUID (``UB_standard/``
and ``YA_bone/`` of one acquisition are one exam).

ct-train (:func:`find_pairs`): series are paired by acquisition, in any layout: same
FrameOfReferenceUID and geometry, slices matched by position along the slice normal.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medseg.ct import KERNELS
from medseg.ct.hu import read_hu_series, read_hu_volume
from medseg.ct.models import canonical_kernel
from medseg.errors import InputError
from medseg.io.dicom import kernel_of, open_series, scan_dicom
from medseg.io.volume import VOLUME_SUFFIXES, VolumeMeta, is_volume_file, volume_shape
from medseg.io.walk import walk_files

log = logging.getLogger("medseg.ct")


@dataclass
class SeriesRef:
    """Where one kernel's series of an exam lives (a DICOM folder/file or a volume file)."""

    path: Path
    series_uid: str | None = None  # for DICOM

    def shape(self) -> tuple[int, int, int]:
        """(slices, rows, columns) from the headers only: a cheap check that the series is readable."""
        if is_volume_file(self.path):
            return volume_shape(self.path)
        series = open_series(self.path, series_uid=self.series_uid)
        return len(series.files), series.rows, series.columns

    def load(self) -> tuple[np.ndarray, VolumeMeta]:
        if is_volume_file(self.path):
            return read_hu_volume(self.path)
        return read_hu_series(open_series(self.path, series_uid=self.series_uid))


@dataclass
class Exam:
    name: str
    path: Path
    series: dict[str, SeriesRef] = field(default_factory=dict)


def _kernel_from_name(name: str) -> str | None:
    stem = next((name[: -len(s)] for s in VOLUME_SUFFIXES if name.lower().endswith(s)), name)
    for part in reversed(re.split(r"[_\-. ]", stem)):
        k = canonical_kernel(part, strict=False)
        if k and part.lower() in {x.lower() for x in KERNELS}:
            return k
    return None


def scan_exam(folder: Path) -> Exam:
    exam = Exam(folder.name, folder)
    for file in sorted(folder.iterdir()):
        if is_volume_file(file) and (k := _kernel_from_name(file.name)):
            exam.series.setdefault(k, SeriesRef(file))
    groups, _skipped = scan_dicom(folder)
    for uid, headers in groups.items():
        tag = kernel_of(headers[0][1])
        k = canonical_kernel(tag, strict=False) if tag else None
        if k is None:
            k = _kernel_from_name(headers[0][0].parent.name)
        if k is None:
            log.warning("%s: series %s has no recognisable kernel (tag %r); ignored", folder, uid, tag)
            continue
        if k in exam.series:
            log.warning("%s: several %s series; using the first", folder, k)
            continue
        exam.series[k] = SeriesRef(headers[0][0].parent, uid)
    return exam


def _is_cohort(folder: Path) -> bool:
    subdirs = [p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")]
    if any(is_volume_file(p) for p in folder.iterdir()):
        return False
    if not subdirs or all(_kernel_from_name(p.name) is not None for p in subdirs):
        return False
    # sub-folders not named after a kernel (UB_standard/, YA_bone/, series numbers): still one exam
    # when all its CT series share one FrameOfReferenceUID (one acquisition reconstructed twice)
    # (series spread over several sub-folders; one exam folder inside a cohort stays a cohort)
    groups, _ = scan_dicom(folder)
    frames = {str(h[0][1].get("FrameOfReferenceUID", "")) for h in groups.values()}
    tops = {f.relative_to(folder).parts[0] for h in groups.values() for f, _ in h}
    return not (len(groups) >= 2 and len(tops) >= 2 and len(frames) == 1 and "" not in frames)


def discover_exams(roots: list[str | Path]) -> list[Exam]:
    """Expand cohort folders into exams; each root may be an exam or a cohort."""
    exams: list[Exam] = []
    for root in map(Path, roots):
        if not root.is_dir():
            raise InputError("expected an exam or cohort folder", path=root)
        folders = (
            sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
            if _is_cohort(root)
            else [root]
        )
        exams += [scan_exam(f) for f in folders]
    if not exams:
        raise InputError("no exams found", path=roots[0] if roots else ".")
    seen: dict[Path, Path] = {}
    for exam in exams:  # an exam counted twice would weigh twice in the agreement statistics
        first = seen.setdefault(exam.path.resolve(), exam.path)
        if first is not exam.path:
            also = "" if first == exam.path else f" (also as {first})"
            raise InputError(
                f"this exam is given twice{also}, e.g. on its own and inside a cohort folder; each exam "
                "counts once in the agreement statistics: give it once",
                path=exam.path,
            )
    _unique_names(exams)
    return exams


def _unique_names(exams: list[Exam]) -> None:
    """Exams of the same folder name in several cohorts (siteA/exam01, siteB/exam01) get their cohort's
    name in front, so report rows and mask files (``safe_name``, any letter case) stay apart."""
    from medseg.io.atomic import safe_name

    def key(name: str) -> str:
        return safe_name(name).casefold()

    counts: dict[str, int] = {}
    for exam in exams:
        counts[key(exam.name)] = counts.get(key(exam.name), 0) + 1
    for exam in exams:
        if counts[key(exam.name)] > 1 and exam.path.parent.name:
            exam.name = f"{exam.path.parent.name}/{exam.name}"
    used: set[str] = set()
    for exam in exams:
        name, n = exam.name, 1
        while key(name) in used:
            n += 1
            name = f"{exam.name} ({n})"
        exam.name = name
        used.add(key(name))


def split_exams(exams: list, fractions: tuple[float, float, float], seed: int) -> dict[str, list[Exam]]:
    """Split by exam (never by slice) into train/val/test; at least one training exam (any items)."""
    order = np.random.default_rng(seed).permutation(len(exams))
    n = len(exams)
    n_val = int(round(fractions[1] * n))
    n_test = int(round(fractions[2] * n))
    if n - n_val - n_test < 1:
        n_test = max(0, n - n_val - 1)
        n_val = min(n_val, n - n_test - 1)
    picked = [exams[i] for i in order]
    return {
        "train": picked[: n - n_val - n_test],
        "val": picked[n - n_val - n_test : n - n_test],
        "test": picked[n - n_test :],
    }


# --- pairing by acquisition (ct-train) -------------------------------------------------------------

SLICE_TOLERANCE = 0.25  # slices match when their positions differ by <= this x the slice spacing
SINGLE_SLICE_TOLERANCE_MM = 0.1  # ... or by <= 0.1 mm when a series has a single slice


def kernel_key(name: str | None) -> str:
    """A kernel name normalised for comparison: the canonical name when known, else the stripped tag.

    Kernel names are opaque (Siemens B30f/Br40, Philips UB/YA, GE STANDARD ...); only case, blanks
    and Siemens spellings are normalised. A multi-valued tag ('B50f\\3') counts by its first value
    when the whole tag is not recognised.
    """
    text = str(name or "").strip()
    if not text:
        return ""
    k = canonical_kernel(text, strict=False)
    if k is None and "\\" in text:
        first = text.split("\\")[0].strip()
        k = canonical_kernel(first, strict=False) or first
    return (k or text).casefold()


def _siemens_family(name: str) -> str | None:
    """'Br50f', 'B50f', 'B50s' -> 'b50' (letter and sharpness number); None for other names."""
    match = re.match(r"^([A-Za-z])[a-z]?(\d{2})[A-Za-z]?$", name.strip())
    return f"{match.group(1)}{match.group(2)}".casefold() if match else None


def which_kernel(tag: str, source: str, target: str) -> str | None:
    """``source`` or ``target`` (as given) when a ConvolutionKernel tag names it, else None.

    An exact match (after normalisation) of any value of a multi-valued tag wins; otherwise a
    Siemens tag matches by sharpness family (``Br50f`` for ``B50f``) when that is not ambiguous.
    """
    values = [v.strip() for v in str(tag or "").split("\\") if v.strip()]
    keys = {kernel_key(v) for v in values} | {kernel_key(tag)}
    exact = [k for k in (source, target) if kernel_key(k) in keys]
    if len(exact) == 1:
        return exact[0]
    if exact:
        return None
    families = {f for v in values if (f := _siemens_family(v))}
    loose = [k for k in (source, target) if _siemens_family(k) in families]
    return loose[0] if len(loose) == 1 and _siemens_family(source) != _siemens_family(target) else None


@dataclass
class SeriesGeometry:
    """What pairing compares: one DICOM series' acquisition and slice geometry (headers only)."""

    uid: str
    path: Path  # the folder holding its files (for messages and loading)
    kernel: str
    frame_of_reference: str
    rows: int
    columns: int
    pixel_spacing: tuple[float, float]
    orientation: tuple[float, ...]  # row and column direction cosines
    in_plane_origin: tuple[float, float]  # ImagePositionPatient projected on the row/column directions
    positions: np.ndarray  # slice positions along the normal (mm), ascending
    thickness: float | None
    description: str = ""
    manufacturer: str = ""  # the DICOM Manufacturer tag (kernel names are per vendor)
    acquisition: str = ""  # AcquisitionDate and AcquisitionTime ('' when absent)
    kvp: str = ""  # KVP

    @property
    def label(self) -> str:
        return f"{self.kernel} series {self.uid} in {self.path}"

    @property
    def spacing(self) -> float | None:
        return float(np.median(np.diff(self.positions))) if len(self.positions) > 1 else None


@dataclass
class SlicePair:
    """One source and one target series of the same acquisition, with their matched slice indices."""

    name: str
    exam_key: str  # slices of one exam (frame of reference) never cross the split
    source: SeriesRef
    target: SeriesRef
    source_index: np.ndarray  # index into the source series (slice order along the normal)
    target_index: np.ndarray
    positions: np.ndarray | None  # matched source positions (mm), ascending; None for volume files
    slice_spacing: float | None
    target_positions: np.ndarray | None = None  # matched target positions (mm)
    manufacturer: str | None = None  # of the source series; None for volume files
    paired_by: str = "frame of reference"  # or how else (acquisition, when the UIDs differ)


def _geometry_from_headers(uid: str, headers: list[tuple[Path, object]]) -> SeriesGeometry | None:
    """Geometry of a classic one-frame-per-file series; None when the headers do not allow it."""
    first = headers[0][1]
    if any(int(ds.get("NumberOfFrames", 1) or 1) > 1 for _, ds in headers):
        return None
    if not all("ImagePositionPatient" in ds and "ImageOrientationPatient" in ds for _, ds in headers):
        return None
    iop = np.array([float(v) for v in first.ImageOrientationPatient])
    row, col = iop[:3], iop[3:]
    normal = np.cross(row, col)
    ipp = np.array([[float(v) for v in ds.ImagePositionPatient] for _, ds in headers])
    order = np.argsort(ipp @ normal, kind="stable")
    ps = [float(v) for v in first.get("PixelSpacing", [1.0, 1.0])]
    thickness = first.get("SliceThickness")
    return SeriesGeometry(
        uid=uid,
        path=Path(os.path.commonpath([str(f.parent) for f, _ in headers])),
        kernel=kernel_of(first),
        frame_of_reference=str(first.get("FrameOfReferenceUID", "")),
        rows=int(first.Rows),
        columns=int(first.Columns),
        pixel_spacing=(ps[0], ps[1]),
        orientation=tuple(iop.tolist()),
        in_plane_origin=(float(ipp[order[0]] @ row), float(ipp[order[0]] @ col)),
        positions=(ipp @ normal)[order],
        thickness=float(thickness) if thickness not in (None, "") else None,
        description=str(first.get("SeriesDescription", "")),
        manufacturer=str(first.get("Manufacturer", "") or ""),
        **_acquisition(first),
    )


def _geometry_from_series(uid: str, headers: list[tuple[Path, object]]) -> SeriesGeometry:
    """Geometry through :func:`medseg.io.dicom.open_series` (multi-frame and other layouts)."""
    folder = Path(os.path.commonpath([str(f.parent) for f, _ in headers]))
    s = open_series(folder, series_uid=uid)
    axes = np.array(s.direction, dtype=float).reshape(3, 3)
    row, col = axes[:, 0], axes[:, 1]
    origin = np.array(s.origin, dtype=float)
    first = headers[0][1]
    thickness = first.get("SliceThickness")
    return SeriesGeometry(
        uid=uid,
        path=folder,
        kernel=s.kernel,
        frame_of_reference=str(first.get("FrameOfReferenceUID", "")),
        rows=s.rows,
        columns=s.columns,
        pixel_spacing=(float(s.spacing[1]), float(s.spacing[2])),
        orientation=tuple(np.concatenate([row, col]).tolist()),
        in_plane_origin=(float(origin @ row), float(origin @ col)),
        positions=np.asarray(s.positions, dtype=float),
        thickness=float(thickness) if thickness not in (None, "") else None,
        description=s.description,
        manufacturer=str(first.get("Manufacturer", "") or ""),
        **_acquisition(first),
    )


def _acquisition(ds) -> dict[str, str]:
    """AcquisitionDate/Time and kVp: what still tells one acquisition apart after separate anonymisation."""
    when = " ".join(str(ds.get(k, "") or "").strip() for k in ("AcquisitionDate", "AcquisitionTime")).strip()
    return {"acquisition": when, "kvp": str(ds.get("KVP", "") or "").strip()}


def same_acquisition(a: SeriesGeometry, b: SeriesGeometry) -> tuple[str | None, str]:
    """(why not, how): are two series one acquisition? By FrameOfReferenceUID; when the UIDs differ
    (reconstructions anonymised separately), by AcquisitionDate/Time and kVp, the pixel grid, the
    orientation and the slice positions being checked by :func:`geometry_mismatch` after this."""
    if a.frame_of_reference == b.frame_of_reference:
        return None, "frame of reference"
    uids = f"different FrameOfReferenceUID ({a.frame_of_reference or 'missing'} vs {b.frame_of_reference or 'missing'})"
    if not (a.acquisition and b.acquisition):
        return f"{uids} and no AcquisitionDate/Time to tell whether they are one acquisition", ""
    if a.acquisition != b.acquisition:
        return (
            f"{uids} and acquisition date/time ({a.acquisition} vs {b.acquisition}): not the same acquisition",
            "",
        )
    if a.kvp and b.kvp and a.kvp != b.kvp:
        return f"{uids} and kVp ({a.kvp} vs {b.kvp}): not the same acquisition", ""
    kvp = f", {a.kvp} kVp" if a.kvp else ""
    return None, (
        f"acquisition (UIDs differ: same AcquisitionDate/Time {a.acquisition}{kvp}, orientation, "
        "pixel grid and slice positions)"
    )


def _is_axial_ct_image(ds) -> bool:
    image_type = [str(v).upper() for v in (ds.get("ImageType") or [])]
    return str(ds.get("Modality", "")) == "CT" and "LOCALIZER" not in image_type


def match_slices(src: np.ndarray, tgt: np.ndarray, tol: float) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the slices of two ascending position lists that lie within ``tol`` mm of each other."""
    if len(src) == 0 or len(tgt) == 0:
        return np.zeros(0, int), np.zeros(0, int)
    j = np.clip(np.searchsorted(tgt, src), 1, len(tgt) - 1) if len(tgt) > 1 else np.zeros(len(src), int)
    if len(tgt) > 1:
        left_closer = np.abs(src - tgt[j - 1]) <= np.abs(src - tgt[j])
        j = np.where(left_closer, j - 1, j)
    ok = np.abs(src - tgt[j]) <= tol
    si, ti = np.flatnonzero(ok), j[ok]
    _, first = np.unique(ti, return_index=True)  # one target slice per source slice
    return si[first], ti[first]


def tolerance_mm(a: SeriesGeometry, b: SeriesGeometry) -> float:
    """Slice-matching tolerance: a quarter of the smaller slice spacing (0.1 mm for single slices)."""
    gaps = [g for g in (a.spacing, b.spacing) if g]
    return SLICE_TOLERANCE * min(gaps) if gaps else SINGLE_SLICE_TOLERANCE_MM


def geometry_mismatch(a: SeriesGeometry, b: SeriesGeometry) -> str | None:
    """Why two series cannot be slice pairs (None when they can), in words a user can act on."""
    why, _how = same_acquisition(a, b)
    if why is not None:
        return why
    if (a.rows, a.columns) != (b.rows, b.columns):
        return f"different matrix ({a.rows}x{a.columns} vs {b.rows}x{b.columns})"
    if not np.allclose(a.pixel_spacing, b.pixel_spacing, rtol=1e-3, atol=1e-4):
        sa, sb = (f"{x[0]:.4g}x{x[1]:.4g} mm" for x in (a.pixel_spacing, b.pixel_spacing))
        return f"different pixel spacing ({sa} vs {sb})"
    if not np.allclose(a.orientation, b.orientation, atol=1e-4):
        return "different ImageOrientationPatient"
    shift = np.abs(np.subtract(a.in_plane_origin, b.in_plane_origin))
    if np.any(shift > 0.5 * np.asarray(a.pixel_spacing)[::-1]):
        return f"different reconstruction field of view (in-plane origin differs by {shift.max():.2f} mm)"
    if a.thickness and b.thickness and abs(a.thickness - b.thickness) > 0.1 * min(a.thickness, b.thickness):
        return f"different slice thickness ({a.thickness:g} vs {b.thickness:g} mm)"
    si, _ = match_slices(a.positions, b.positions, tolerance_mm(a, b))
    if len(si) == 0:
        return (
            f"no common slice positions ({a.positions.min():.2f}..{a.positions.max():.2f} mm vs "
            f"{b.positions.min():.2f}..{b.positions.max():.2f} mm)"
        )
    return None


def _volume_pairs(root: Path, source: str, target: str) -> list[SlicePair]:
    """Volume files named after the kernels (B50f.nii.gz), paired by folder; shapes must agree."""
    out: list[SlicePair] = []
    files = [root] if root.is_file() else walk_files(root)  # linked folders too
    folders = sorted({p.parent for p in files if is_volume_file(p)})
    for folder in folders:
        found: dict[str, Path] = {}
        for file in sorted(folder.iterdir()):
            if not is_volume_file(file):
                continue
            stem = next((file.name[: -len(s)] for s in VOLUME_SUFFIXES if file.name.lower().endswith(s)), "")
            for part in reversed(re.split(r"[_\-. ]", stem)):
                if kernel_key(part) in (source, target):
                    found.setdefault(kernel_key(part), file)
                    break
        if source in found and target in found:
            n_src, n_tgt = volume_shape(found[source]), volume_shape(found[target])
            if n_src != n_tgt:
                raise InputError(
                    f"{found[source].name} {n_src} and {found[target].name} {n_tgt} differ in shape; "
                    "volume files pair slice by slice",
                    path=folder,
                )
            idx = np.arange(n_src[0])
            out.append(
                SlicePair(
                    folder.name,
                    f"volumes:{folder}",
                    SeriesRef(found[source]),
                    SeriesRef(found[target]),
                    idx,
                    idx,
                    None,
                    None,
                )
            )
    return out


def find_pairs(roots: list[str | Path], source: str, target: str) -> list[SlicePair]:
    """Pair the ``source`` and ``target`` kernel series under ``roots`` by acquisition, any folder layout.

    DICOM series are identified by ConvolutionKernel and paired within one FrameOfReferenceUID;
    slices are matched by position along the slice normal (:func:`tolerance_mm`); a pair whose
    geometry differs is refused with the reason (:func:`geometry_mismatch`). Several candidates of
    one kernel in a frame of reference: each source series takes the target with most common
    slices. Volume files pair by folder. InputError when nothing pairs.
    """
    names = {kernel_key(source): source, kernel_key(target): target}
    source, target = kernel_key(source), kernel_key(target)
    paths = [Path(r) for r in roots]
    for p in paths:
        if not p.exists():
            raise InputError("no such file or folder", path=p)
    pairs: list[SlicePair] = []
    geoms: list[tuple[SeriesGeometry, str]] = []
    seen: set[str] = set()
    for root in paths:
        pairs += _volume_pairs(root, source, target)
        groups, _skipped = scan_dicom(root)
        for uid, headers in groups.items():
            headers = [(f, ds) for f, ds in headers if _is_axial_ct_image(ds)]
            seen.update(kernel_of(ds) or "no kernel" for _, ds in headers[:1])
            which = which_kernel(kernel_of(headers[0][1]), names[source], names[target]) if headers else None
            if which is None or any(g.uid == uid for g, _ in geoms):
                continue
            geom = _geometry_from_headers(uid, headers) or _geometry_from_series(uid, headers)
            geoms.append((geom, kernel_key(which)))
    sources = [g for g, k in geoms if k == source]
    targets = [g for g, k in geoms if k == target]
    where = ", ".join(map(str, paths))
    if not pairs and (not sources or not targets):
        missing = " or ".join(names[k] for k, found in ((source, sources), (target, targets)) if not found)
        found = ", ".join(sorted(seen)) or "no CT series"
        raise InputError(f"no {missing} series found (CT series found: {found})", path=where)
    refused: list[str] = []
    used: set[str] = set()
    candidates = []
    for s in sources:
        for t in targets:
            reason = geometry_mismatch(s, t)
            if reason is not None:
                refused.append(f"{s.label} and {t.label}: {reason}")
                continue
            si, ti = match_slices(s.positions, t.positions, tolerance_mm(s, t))
            candidates.append((len(si), s, t, si, ti))
    for n, s, t, si, ti in sorted(candidates, key=lambda c: -c[0]):
        if s.uid in used or t.uid in used:
            continue
        used |= {s.uid, t.uid}
        name = Path(os.path.commonpath([s.path, t.path])).name
        how = same_acquisition(s, t)[1]
        log.info("paired %s with %s by %s: %d common slice(s)", s.label, t.label, how, n)
        pairs.append(
            SlicePair(
                name=name or s.uid[-8:],
                exam_key=s.frame_of_reference or s.uid,
                source=SeriesRef(s.path, s.uid),
                target=SeriesRef(t.path, t.uid),
                source_index=si,
                target_index=ti,
                positions=s.positions[si],
                slice_spacing=s.spacing,
                target_positions=t.positions[ti],
                manufacturer=s.manufacturer,
                paired_by=how,
            )
        )
    for s in sources:
        if s.uid not in used:
            why = [r for r in refused if r.startswith(s.label)]
            log.warning("not used: %s (%s)", s.label, why[0] if why else "its partner is paired with another")
    if not pairs:
        raise InputError(f"no usable {source}/{target} pair: {refused[0]}", path=where)
    return pairs


def _display(key: str, *, roots: list[Path]) -> str:
    return key if not key else canonical_kernel(key, strict=False) or key.upper()
