"""Find exams and their per-kernel series on disk (shared by ct-train and ct-report).

An *exam* folder holds one series per kernel: DICOM series (any layout below it, identified by
their ConvolutionKernel tag) and/or volumes named after the kernel (``B30f.nii.gz``,
``exam01_B30f.nrrd``). A *cohort* folder holds exam folders. A folder is taken as a cohort when
it has sub-folders that are not named after a kernel and contains no volume files itself.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medseg.ct import KERNELS
from medseg.ct.models import canonical_kernel
from medseg.errors import InputError
from medseg.io.dicom import kernel_of, open_series, read_series, scan_dicom
from medseg.io.volume import VOLUME_SUFFIXES, VolumeMeta, is_volume_file, read_volume_sitk, volume_shape

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
            return read_volume_sitk(self.path)
        return read_series(open_series(self.path, series_uid=self.series_uid))


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
    return bool(subdirs) and any(_kernel_from_name(p.name) is None for p in subdirs)


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
    return exams


def split_exams(exams: list[Exam], fractions: tuple[float, float, float], seed: int) -> dict[str, list[Exam]]:
    """Split by exam (never by slice) into train/val/test; at least one training exam."""
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
