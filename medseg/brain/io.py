"""Four-modality brain MRI input: BraTS case folders, geometry checks, resampling, label conventions.

Input is refused early, with the file named, when it cannot be segmented meaningfully: a missing
modality, a 2D image, NaNs, an all-zero channel, or modalities on different grids (unless
``resample_to`` names the modality whose grid the others are resampled onto); and input that breaks
what the method assumes (:mod:`medseg.brain.checks`): one file for several modalities, CT instead of
MRI, a field of view no head fits.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medseg.brain.checks import (
    refuse_ct,
    refuse_implausible_extent,
    refuse_label_map,
    refuse_same_files,
    refuse_same_voxels,
)
from medseg.errors import InputError

log = logging.getLogger("medseg.brain")

MODALITIES = ("t1", "t1c", "t2", "flair")
VOLUME_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
# File-name tags per modality, matched case-insensitively at the END of the name (after a separator
# ``_ - . space`` or as the whole name): BraTS 2018-2021 (``_t1``, ``_t1ce``, ``_t2``, ``_flair``),
# BraTS 2023+ (``-t1n``, ``-t1c``, ``-t2w``, ``-t2f``) and plain exports of other tools (``t1.nii.gz``,
# ``T1c``, ``T1_post``, ``t1gd``, ``T2-FLAIR`` ...). Separators inside a tag match any separator or none.
MODALITY_TAGS: dict[str, tuple[str, ...]] = {
    "t1": ("t1", "t1n", "t1w", "t1_pre", "t1_native", "t1_precontrast"),
    "t1c": (
        "t1ce",
        "t1c",
        "t1gd",
        "t1_gd",
        "t1_post",
        "t1_postcontrast",
        "t1_contrast",
        "t1_ce",
        "t1_c",
        "t1w_ce",
        "t1w_gd",
        "t1w_post",
        "t1_gad",
        "t1gad",
    ),
    "t2": ("t2", "t2w"),
    "flair": ("flair", "t2f", "t2_flair", "t2w_flair"),
    "seg": ("seg", "segmentation", "label", "labels"),
}


def _tag_pattern(tag: str) -> str:
    return r"[_\-. ]?".join(re.escape(part) for part in tag.split("_"))


# longest tags first, so "t2_flair" wins over "flair"... and "t1_post" is not read as "t1"
_TAG_RES = [
    (mod, re.compile(rf"(?:^|[_\-. ]){_tag_pattern(tag)}$"))
    for mod, tag in sorted(
        ((m, t) for m, ts in MODALITY_TAGS.items() for t in ts), key=lambda mt: -len(mt[1])
    )
]
LABEL_CONVENTIONS = ("brats2021", "brats2023", "havaei")
# internal (Havaei) label -> label written in each convention; NCR and NET merge in BraTS
_TO_CONVENTION = {
    "havaei": np.array([0, 1, 2, 3, 4], np.uint8),
    "brats2021": np.array([0, 1, 2, 1, 4], np.uint8),
    "brats2023": np.array([0, 1, 2, 1, 3], np.uint8),
}
_FROM_CONVENTION = {
    "havaei": {0: 0, 1: 1, 2: 2, 3: 3, 4: 4},
    "brats2021": {0: 0, 1: 1, 2: 2, 4: 4},
    "brats2023": {0: 0, 1: 1, 2: 2, 3: 4},
}


@dataclass
class CaseFiles:
    """Where one case's inputs are (files or DICOM series folders)."""

    name: str
    modalities: dict[str, Path]
    seg: Path | None = None


@dataclass
class Geometry:
    """Grid of a volume: arrays are (z, y, x); spacing (z, y, x) in mm; origin/direction as SimpleITK."""

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]
    extra: dict = field(default_factory=dict)

    def same_grid(self, other: Geometry) -> str:
        """'' when grids match, else a short description of the first difference."""
        if self.shape != other.shape:
            return f"shape {self.shape} vs {other.shape}"
        if not np.allclose(self.spacing, other.spacing, rtol=1e-3, atol=1e-4):
            return f"spacing {tuple(round(s, 4) for s in self.spacing)} vs {tuple(round(s, 4) for s in other.spacing)}"
        if not np.allclose(self.origin, other.origin, atol=max(1e-3, 0.01 * min(self.spacing))):
            return f"origin {tuple(round(o, 3) for o in self.origin)} vs {tuple(round(o, 3) for o in other.origin)}"
        if not np.allclose(self.direction, other.direction, atol=1e-4):
            return "direction cosines differ"
        return ""

    def to_volume_meta(self, path: str = ""):
        from medseg.io.volume import VolumeMeta

        return VolumeMeta(
            spacing=self.spacing, origin=self.origin, direction=self.direction, source="brain", path=path
        )


def error_reason(exc: Exception) -> str:
    """A per-case failure in words: the file it concerns (not the case folder, named by the item) and why."""
    if isinstance(exc, InputError):
        return (
            f"{exc.path.name}: {exc.message}" if exc.path is not None and exc.path.is_file() else exc.message
        )
    if isinstance(exc, OSError):
        return f"{exc.filename}: {exc.strerror or exc}" if exc.filename else str(exc.strerror or exc)
    return str(exc)


def _is_volume(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith(VOLUME_SUFFIXES)


def _stem(path: Path) -> str:
    name = path.name.lower()
    for s in VOLUME_SUFFIXES:
        if name.endswith(s):
            return name[: -len(s)]
    return name


def _tag(stem: str) -> str | None:
    """Modality of a file/folder name (case-insensitive), from the tag it ends with; None if none."""
    stem = stem.lower()
    for mod, pattern in _TAG_RES:
        if pattern.search(stem):
            return mod
    return None


# formats a case folder may hold that are not read here: what they are and how to get NIfTI
UNREAD_FORMATS = {
    ".hdr": "Analyze/NIfTI-pair .hdr/.img",
    ".img": "Analyze/NIfTI-pair .hdr/.img",
    ".mgz": "FreeSurfer .mgz",
    ".mgh": "FreeSurfer .mgh",
    ".dcm": "single DICOM files",
}


def _unread_hint(case_dir: Path, missing: list[str]) -> str:
    """Why a modality looked missing: its file is there in a format not read, or DICOM files lie loose."""
    unread: dict[str, list[str]] = {}
    for entry in sorted(case_dir.iterdir()):
        suffix = entry.suffix.lower()
        if not entry.is_file() or suffix not in UNREAD_FORMATS:
            continue
        if suffix == ".img" and entry.with_suffix(".hdr").exists():
            continue  # the pair is named once, by its header
        if suffix == ".dcm" or _tag(entry.name[: -len(suffix)]) in missing:
            unread.setdefault(UNREAD_FORMATS[suffix], []).append(entry.name)
    if not unread:
        return ""
    parts = []
    for kind, names in unread.items():
        shown = ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
        if kind == UNREAD_FORMATS[".dcm"]:
            parts.append(
                f"{len(names)} DICOM file(s) lie loose in the case folder ({shown}): put each series in "
                "its own sub-folder named t1/, t1ce/, t2/, flair/"
            )
        else:
            parts.append(f"{shown} are {kind}, which is not read: convert them to .nii.gz")
    return "; ".join(parts)


def find_case_files(case_dir: str | Path, *, need_seg: bool = True) -> CaseFiles:
    """Find T1/T1c/T2/FLAIR (and seg, if present) in a case folder by name (:data:`MODALITY_TAGS`).

    Files (``<case>_t1.nii.gz``, ``<case>_t1ce.nii.gz``, ``<case>-t2f.nii.gz``, ``T1_post.nii.gz`` ...)
    or one DICOM series folder per modality (``t1/``, ``t1ce/``, ``t2/``, ``flair/``). Each recognised
    file is logged; two candidates for one modality, or a missing one, is an error naming them.
    ``need_seg`` False (brain-segment): several segmentations are ignored rather than ambiguous.
    """
    case_dir = Path(case_dir)
    if not case_dir.is_dir():
        raise InputError("case folder not found", path=case_dir)
    found: dict[str, list[Path]] = {}
    for entry in sorted(case_dir.iterdir()):
        if entry.name.startswith("."):
            continue
        stem = _stem(entry) if _is_volume(entry) else entry.name.lower() if entry.is_dir() else None
        mod = _tag(stem) if stem else None
        if mod:
            found.setdefault(mod, []).append(entry)
    if not need_seg and len(found.get("seg", ())) > 1:
        log.info("%s: %d segmentations, not needed here: ignored", case_dir, len(found.pop("seg")))
    for mod, paths in found.items():
        if len(paths) > 1:
            raise InputError(
                f"ambiguous {mod}: {len(paths)} candidates ({', '.join(p.name for p in paths)}); "
                "keep one per modality in the case folder",
                path=case_dir,
            )
    missing = [m for m in MODALITIES if m not in found]
    if missing:
        hint = _unread_hint(case_dir, missing) or (
            "expected names ending in t1/t1n, t1c/t1ce/t1gd/t1_post, t2/t2w, flair/t2f, e.g. "
            "<case>_t1ce.nii.gz, <case>-t2f.nii.gz or T1c.nii.gz"
        )
        raise InputError(f"missing modality {', '.join(missing)} ({hint})", path=case_dir)
    files = CaseFiles(
        name=case_dir.name,
        modalities={m: found[m][0] for m in MODALITIES},
        seg=found["seg"][0] if "seg" in found else None,
    )
    refuse_same_files(files.modalities)
    log.info(
        "%s: %s%s",
        files.name,
        ", ".join(f"{m}={p.name}" for m, p in files.modalities.items()),
        f", seg={files.seg.name}" if files.seg else "",
    )
    return files


def case_from_paths(
    *,
    t1: str | Path | None,
    t1c: str | Path | None,
    t2: str | Path | None,
    flair: str | Path | None,
    name: str | None = None,
) -> CaseFiles:
    """A case from four explicit paths; a missing one is an InputError naming it."""
    given = {"t1": t1, "t1c": t1c, "t2": t2, "flair": flair}
    missing = [m for m, p in given.items() if p is None]
    if missing:
        raise InputError(
            f"missing modality {', '.join(missing)}: all four of --t1 --t1c --t2 --flair are needed"
        )
    paths = {m: Path(p) for m, p in given.items()}
    for m, p in paths.items():
        if not p.exists():
            raise InputError(f"{m} input not found", path=p)
        if not (p.is_file() or p.is_dir()):  # a pipe (<(zcat ...)), a FIFO or a device: reading could hang
            raise InputError(
                f"{m} input is not a regular file or folder (a pipe or device?); give the image file itself",
                path=p,
            )
    refuse_same_files(paths)
    stem = paths["t1c"].name[: len(_stem(paths["t1c"]))]
    default = (
        re.split(r"[_\-]t1(ce|c|gd)$", stem, flags=re.IGNORECASE)[0] if _tag(stem.lower()) == "t1c" else stem
    )
    return CaseFiles(name=name or default or "case", modalities=paths)


def resolve_cases(
    case_dirs: list[str | Path],
    *,
    t1: str | Path | None = None,
    t1c: str | Path | None = None,
    t2: str | Path | None = None,
    flair: str | Path | None = None,
    exclude: list[str | Path] | tuple = (),
) -> list[CaseFiles | Path]:
    """The cases of one command: four explicit modality paths, or case / cohort folders.

    Folders are only expanded here; their files are found in the pipeline's pre-flight, so a
    case folder with a missing modality fails as that case (in a batch) rather than the whole run.
    ``exclude``: the command's output folder, never taken for a case of a cohort (:func:`expand_case_dirs`).
    """
    explicit = any(v is not None for v in (t1, t1c, t2, flair))
    if explicit and case_dirs:
        raise InputError("give either CASE_DIR arguments or --t1/--t1c/--t2/--flair, not both")
    if explicit:
        return [case_from_paths(t1=t1, t1c=t1c, t2=t2, flair=flair)]
    if not case_dirs:
        raise InputError("nothing to segment: give CASE_DIR(s) or --t1 --t1c --t2 --flair")
    return list(expand_case_dirs(list(case_dirs), exclude=exclude))


def _refuse_4d(path: Path) -> None:
    """A 4D file (time series, several volumes, DTI ...) where one 3D volume is expected: one clear line."""
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return  # unreadable: read_volume_sitk gives the error
    size = reader.GetSize()
    if len(size) > 3 and int(np.prod(size[3:])) > 1:
        raise InputError(
            f"{len(size)}D image ({' x '.join(map(str, size))}) where one 3D volume is expected; "
            "give each modality as its own 3D file",
            path=path,
        )


def read_image(path: Path) -> tuple[np.ndarray, Geometry]:
    """One modality: a volume file via SimpleITK or a DICOM series folder; float32 (z, y, x)."""
    path = Path(path)
    if path.is_dir():
        from medseg.io.dicom import open_series, read_series

        series = open_series(
            path,
            modality=None,
            choose_hint="one modality's folder must hold one series (put each series in its own folder: "
            "t1/, t1ce/, t2/, flair/)",
        )
        array, meta = read_series(series)
    else:
        from medseg.io.volume import read_volume_sitk

        _refuse_4d(path)
        array, meta = read_volume_sitk(path)
    if array.ndim != 3 or min(array.shape) < 2:
        raise InputError(f"2D image (shape {array.shape}) where a 3D volume is expected", path=path)
    return array, Geometry(
        shape=tuple(array.shape),
        spacing=tuple(float(s) for s in meta.spacing),
        origin=tuple(float(o) for o in meta.origin),
        direction=tuple(float(d) for d in meta.direction),
    )


def _to_sitk(array: np.ndarray, geo: Geometry):
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(np.ascontiguousarray(array))
    z, y, x = geo.spacing
    image.SetSpacing((x, y, z))
    image.SetOrigin(geo.origin)
    image.SetDirection(geo.direction)
    return image


def resample_to(array: np.ndarray, geo: Geometry, ref: Geometry, *, nearest: bool = False) -> np.ndarray:
    """Resample ``array`` (on ``geo``) onto the grid ``ref`` (linear, or nearest for labels)."""
    import SimpleITK as sitk

    ref_img = _to_sitk(np.zeros(ref.shape, np.float32), ref)
    out = sitk.Resample(
        _to_sitk(array, geo),
        ref_img,
        sitk.Transform(),
        sitk.sitkNearestNeighbor if nearest else sitk.sitkLinear,
        0.0,
    )
    return sitk.GetArrayFromImage(out).astype(array.dtype, copy=False)


# share of the reference modality's non-zero voxels a resampled modality's field of view must cover
MIN_FOV_COVERAGE = 0.95


def _coverage_warning(
    name: str, mod: str, ref_mod: str, ref_array: np.ndarray, geo: Geometry, ref: Geometry
) -> str | None:
    """A warning when ``mod``'s field of view, resampled onto ``ref``, misses part of the reference's
    non-zero region (a FLAIR slab under a whole-head T1c): resampling fills the rest with 0, so there
    the nets see no ``mod`` and its normalisation counts those zeros as brain."""
    inside = resample_to(np.ones(geo.shape, np.uint8), geo, ref, nearest=True).astype(bool)
    tissue = ref_array != 0
    n = int(np.count_nonzero(tissue))
    covered = int(np.count_nonzero(inside & tissue)) / n if n else 1.0
    if covered >= MIN_FOV_COVERAGE:
        return None
    return (
        f"{name}: {mod}'s field of view covers only {covered:.0%} of the {ref_mod} image's non-zero region: "
        f"outside it {mod} is 0 after resampling and the segmentation there is unreliable"
    )


def check_values(array: np.ndarray, *, what: str, path: Path) -> None:
    if not np.all(np.isfinite(array)):
        raise InputError(f"{what} contains {int(np.sum(~np.isfinite(array)))} NaN/Inf voxels", path=path)
    if not np.any(array):
        raise InputError(f"{what} is all zero (empty or failed export?)", path=path)


# Skull-stripped BraTS-style input is exactly zero outside the brain, which fills ~10-35 % of a
# 240x240x155 field of view; a head with scalp and a noisy (non-zero) background fills nearly all of it.
SKULL_STRIP_MAX_COVERAGE = 0.5


def skull_strip_warning(stack: np.ndarray, *, name: str = "") -> str | None:
    """A warning when the input does not look skull-stripped (non-zero over most of the field of view).

    The brain mask of this method is "any modality non-zero": on a head scan with scalp, skull and
    background signal it covers most of the field of view and the bright tissue outside the brain is
    segmented as if it were brain (typically as edema).
    """
    coverage = float(np.any(stack != 0, axis=0).mean())
    if coverage <= SKULL_STRIP_MAX_COVERAGE:
        return None
    return (
        f"{name + ': ' if name else ''}{coverage:.0%} of the field of view is non-zero: the input does not "
        "look skull-stripped; the method expects skull-stripped BraTS-style input (zero outside the brain), "
        "and tissue outside the brain will be mislabelled - skull-strip first (e.g. HD-BET, SynthStrip)"
    )


def load_case(
    case: CaseFiles, *, resample_to_modality: str | None = None, warnings: list[str] | None = None
) -> tuple[np.ndarray, Geometry]:
    """Read the four modalities as a (4, z, y, x) float32 stack on one grid.

    Grids must agree (shape, spacing, origin, direction within :meth:`Geometry.same_grid`'s
    tolerance); with ``resample_to_modality`` (e.g. ``"t1c"``) the others are resampled (linear,
    SimpleITK) onto that modality's grid instead of failing, with a warning (logged and appended
    to ``warnings``).
    """
    arrays: dict[str, np.ndarray] = {}
    geos: dict[str, Geometry] = {}
    for mod in MODALITIES:
        arrays[mod], geos[mod] = read_image(case.modalities[mod])
        check_values(arrays[mod], what=f"{mod} image", path=case.modalities[mod])
        refuse_ct(arrays[mod], what=f"{mod} image", path=case.modalities[mod])
    refuse_same_voxels(arrays, case.modalities)
    ref_mod = resample_to_modality or "t1c"
    if ref_mod not in MODALITIES:
        raise InputError(f"--resample-to must be one of {', '.join(MODALITIES)}, got {ref_mod!r}")
    ref = geos[ref_mod]
    for mod in MODALITIES:
        diff = geos[mod].same_grid(ref)
        if not diff:
            continue
        if resample_to_modality is None:
            raise InputError(
                f"{mod} and {ref_mod} are on different grids ({diff}); register them first or pass "
                f"--resample-to {ref_mod} to resample onto the {ref_mod} grid",
                path=case.modalities[mod],
            )
        msg = f"{case.name}: {mod} resampled onto the {ref_mod} grid ({diff})"
        log.warning(msg)
        if warnings is not None:
            warnings.append(msg)
        arrays[mod] = resample_to(arrays[mod], geos[mod], ref)
        short = _coverage_warning(case.name, mod, ref_mod, arrays[ref_mod], geos[mod], ref)
        if short:
            log.warning(short)
            if warnings is not None:
                warnings.append(short)
    stack = np.stack([arrays[m] for m in MODALITIES]).astype(np.float32, copy=False)
    refuse_implausible_extent(stack, ref.spacing, path=case.modalities[ref_mod])
    for c, mod in enumerate(MODALITIES):
        refuse_label_map(stack[c], what=f"{mod} image", path=case.modalities[mod])
    return stack, ref


def load_seg(case: CaseFiles, ref: Geometry, *, labels: str = "brats2021") -> np.ndarray:
    """The case's ground truth in internal (Havaei) labels on ``ref``'s grid."""
    if case.seg is None:
        raise InputError(
            "no segmentation (<case>_seg.nii.gz) in case folder", path=case.modalities["t1c"].parent
        )
    seg, geo = read_image(case.seg)
    if geo.same_grid(ref):
        raise InputError(f"segmentation grid differs from the images ({geo.same_grid(ref)})", path=case.seg)
    return labels_to_internal(integer_labels(seg, path=case.seg), labels=labels, path=case.seg)


def integer_labels(array: np.ndarray, *, path: Path | None = None) -> np.ndarray:
    """A label map as integers; fractional values (a map resampled with linear interpolation, a
    probability map) are refused: rounding them would invent labels (between 2 and 4 lies 3)."""
    rounded = np.rint(array)
    off = np.abs(array - rounded) > 1e-3
    if off.any():
        example = float(array[off].flat[0])
        raise InputError(
            f"label map holds {int(off.sum())} non-integer values (e.g. {example:.3g}): not a label map, "
            "or one resampled with linear interpolation (resample labels with nearest neighbour)",
            path=path,
        )
    return rounded.astype(np.int64)


def labels_to_internal(seg: np.ndarray, *, labels: str, path: Path | None = None) -> np.ndarray:
    """Map a label map in ``labels`` convention to internal Havaei labels (0-4)."""
    mapping = _FROM_CONVENTION[labels]
    values = set(np.unique(seg).tolist())
    bad = sorted(values - mapping.keys())
    if bad:
        other = next(
            (
                c
                for c in ("brats2023", "brats2021")
                if c != labels and not values - _FROM_CONVENTION[c].keys()
            ),
            None,
        )
        hint = f" (they fit the {other} convention: --labels {other})" if other else ""
        raise InputError(
            f"label values {bad} are not in the {labels} convention {sorted(mapping)}{hint}", path=path
        )
    lut = np.zeros(max(mapping) + 1, np.uint8)
    for k, v in mapping.items():
        lut[k] = v
    return lut[seg]


def labels_from_internal(seg: np.ndarray, *, labels: str) -> np.ndarray:
    """Internal (Havaei 0-4) labels written in the ``labels`` convention."""
    if labels not in _TO_CONVENTION:
        raise InputError(f"unknown label convention {labels!r}; choose {', '.join(LABEL_CONVENTIONS)}")
    return _TO_CONVENTION[labels][seg]


def write_seg(path: str | Path, seg: np.ndarray, geo: Geometry) -> Path:
    """Write a label map (uint8) on ``geo`` atomically."""
    from medseg.io.volume import write_volume_sitk

    return write_volume_sitk(path, seg, geo.to_volume_meta(str(path)), dtype=np.uint8)


def _holds(folder: Path, paths: list[Path]) -> Path | None:
    """The first of ``paths`` that is ``folder`` or lies inside it (symlinks resolved), else None."""
    try:
        here = folder.resolve()
    except OSError:
        return None
    for path in paths:
        target = path.resolve()
        if target == here or here in target.parents:
            return path
    return None


def expand_case_dirs(paths: list[str | Path], *, exclude: list[str | Path] | tuple = ()) -> list[Path]:
    """Case folders as given, or the case sub-folders of a cohort folder (one level down).

    ``exclude``: this command's own output or prediction folders (``--out``, ``--pred``). A cohort
    sub-folder that is one of them, or holds one, is not a case: ``brain-segment cohort/ --out
    cohort/results`` run a second time, or ``brain-eval cohort/ --pred cohort/results``, would
    otherwise take the results folder for a case (a failed item, or an output refused as an input).
    """
    skip = [Path(e) for e in exclude if e is not None]
    out: list[Path] = []
    for p in map(Path, paths):
        if not p.is_dir():
            raise InputError("not a folder", path=p)
        has_images = any(_is_volume(f) and _tag(_stem(f)) for f in p.iterdir())
        # hidden folders and the __MACOSX folder a zip made on a Mac brings along are never cases
        subs = [d for d in sorted(p.iterdir()) if d.is_dir() and not d.name.startswith((".", "__MACOSX"))]
        # a cohort: no image here and no modality sub-folder (a case of DICOM series folders has them);
        # a "labels"/"seg" folder beside the cases holds segmentations, not a case
        if not has_images and subs and all(_tag(d.name.lower()) in (None, "seg") for d in subs):
            before = len(out)
            for d in subs:
                own = _holds(d, skip)
                if own is not None:
                    log.info("%s: not a case (it holds this command's output or predictions %s)", d, own)
                elif _tag(d.name.lower()) == "seg":
                    log.info("%s: not a case (a folder of segmentations, by its name)", d)
                else:
                    out.append(d)
            if len(out) == before:  # no case left: the folder itself, whose error then names it
                out.append(p)
        else:
            out.append(p)
    return out
