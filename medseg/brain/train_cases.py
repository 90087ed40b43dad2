"""Training cases for brain-train: read, preprocess, crop to the brain, cache; held-out split; spacing.

Split out of ``train.py`` (which owns the phases and the budget) to keep both files readable.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from medseg.brain.io import find_case_files, load_case, load_seg
from medseg.brain.orientation import axis_codes, to_training_orientation
from medseg.brain.preprocess import PreprocessConfig, preprocess
from medseg.brain.sampling import TrainingCase
from medseg.errors import InputError

log = logging.getLogger("medseg.brain")


def split_cases(cases: list[TrainingCase], fraction: float) -> tuple[list[TrainingCase], list[TrainingCase]]:
    """(training, held-out validation) cases: the last ``fraction`` of the cases, at least one when >= 2."""
    if len(cases) < 2 or fraction <= 0:
        return cases, []
    n_val = min(len(cases) - 1, max(1, round(len(cases) * fraction)))
    return cases[:-n_val], cases[-n_val:]


def training_spacing(cases: list[TrainingCase]) -> list[float] | None:
    """Median in-plane (row, col) spacing in mm of the training cases: what brain-segment resamples to.

    The slice nets learn tissue at this scale; a case much finer or coarser is resampled to it.
    """
    spacings = [c.spacing[1:] for c in cases if c.spacing is not None]
    if not spacings:
        return None
    ys, xs = zip(*spacings)
    if max(ys) > 1.15 * min(ys) or max(xs) > 1.15 * min(xs):
        log.warning("training cases have different in-plane spacings; the weights record the median")
    return [round(float(np.median(ys)), 4), round(float(np.median(xs)), 4)]


def brain_box(mask: np.ndarray) -> tuple[slice, slice, slice]:
    """The (z, y, x) bounding box of the brain mask."""
    box = []
    for axis in range(3):
        idx = np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))
        box.append(slice(int(idx[0]), int(idx[-1]) + 1))
    return tuple(box)  # type: ignore[return-value]


def _cache_file(cache_dir: Path, name: str, labels: str, prep: PreprocessConfig) -> Path:
    import hashlib

    key = hashlib.sha1(json.dumps([labels, prep.to_dict()], sort_keys=True).encode()).hexdigest()[:10]
    return cache_dir / f"{name}_{key}.npz"


def load_training_cases(
    case_dirs: list[Path],
    *,
    labels: str,
    prep: PreprocessConfig,
    progress: bool = False,
    cache_dir: Path | None = None,
) -> list[TrainingCase]:
    """Read, preprocess and pad every training case once (a bad case stops training, named).

    Each case is cropped to its brain's bounding box: outside the brain the normalised input is 0,
    exactly like the zero padding of a patch, so the patches are the same and a 1 mm BraTS case
    takes about a third of the memory. ``cache_dir`` keeps the preprocessed crops (keyed by the
    preprocessing and label settings), so a resumed or second run skips reading and N4.
    """
    from medseg.engine.progress import progress_bar

    files = [find_case_files(d) for d in case_dirs]  # pre-flight: every case complete before the slow part
    for f in files:
        if f.seg is None:
            raise InputError(
                "no segmentation (<case>_seg.nii.gz) in training case folder", path=f.modalities["t1c"].parent
            )
    if not files:
        raise InputError("no training cases")
    cases = []
    for f in progress_bar(files, total=len(files), desc="loading cases", enabled=progress, unit="case"):
        cached = _cache_file(cache_dir, f.name, labels, prep) if cache_dir is not None else None
        if cached is not None and cached.is_file():
            with np.load(cached) as z:
                norm, seg, mask, spacing = z["norm"], z["seg"], z["mask"], tuple(z["spacing"].tolist())
        else:
            stack, geo = load_case(f)
            seg = load_seg(f, geo, labels=labels)
            if axis_codes(geo.direction) != "LPS":  # the voxel order brain-segment gives the nets
                both, geo, _ = to_training_orientation(
                    np.concatenate([stack, seg[None].astype(stack.dtype)]), geo
                )
                stack, seg = both[:-1], np.rint(both[-1]).astype(seg.dtype)
            norm, mask = preprocess(stack, geo.spacing, prep)
            box = brain_box(mask)
            norm, seg, mask = norm[(slice(None), *box)], seg[box], mask[box]
            spacing = tuple(float(v) for v in geo.spacing)
            if cached is not None:
                from medseg.io.atomic import atomic_path

                cached.parent.mkdir(parents=True, exist_ok=True)
                with atomic_path(cached) as tmp, open(tmp, "wb") as fh:
                    np.savez(fh, norm=norm, seg=seg, mask=mask, spacing=np.asarray(spacing))
        case = TrainingCase.build(f.name, np.ascontiguousarray(norm), np.ascontiguousarray(seg), mask)
        case.spacing = spacing
        cases.append(case)
    return cases
