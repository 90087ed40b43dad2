"""How ct-train holds data out: by exam from 3 exams on, else by contiguous slabs along z with gaps.

Adjacent slices are correlated (overlapping slice profiles, continuous anatomy), so held-out slabs
are separated from the training slab by a gap of max(2 slices, 3 mm).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from medseg.ct.train import PairedSlices


SLAB_GAP_MIN_SLICES = 2  # slices left out between slabs (adjacent slices are correlated) ...
SLAB_GAP_MM = 3.0  # ... or at least this many mm, whichever is more slices
EXAM_SPLIT_MIN = 3  # from this many exams (frames of reference) on, split by exam; below, by slabs


def slab_split(n: int, fractions: tuple[float, float, float], gap: int) -> dict[str, np.ndarray]:
    """Contiguous train | gap | validation | gap | test slabs of ``n`` slices (test at the top in z).

    When the slices cannot hold the held-out slabs and their gaps, everything is training data
    (the trainer then warns that it validates on training data).
    """
    wanted = [part for part, f in zip(("val", "test"), fractions[1:]) if f > 0]
    usable = n - gap * len(wanted)
    empty = np.zeros(0, int)
    if not wanted or usable < 1 + len(wanted):
        return {"train": np.arange(n), "val": empty, "test": empty}
    total = sum(fractions) or 1.0
    sizes = {
        part: max(1, int(round(fractions[i + 1] / total * usable))) for i, part in enumerate(("val", "test"))
    }
    sizes = {part: (sizes[part] if part in wanted else 0) for part in ("val", "test")}
    while usable - sizes["val"] - sizes["test"] < 1:  # keep at least one training slice
        biggest = max(wanted, key=lambda p: sizes[p])
        sizes[biggest] -= 1
    n_train = usable - sizes["val"] - sizes["test"]
    out, start = {"train": np.arange(n_train)}, n_train
    for part in ("val", "test"):
        if sizes[part]:
            start += gap
            out[part] = np.arange(start, start + sizes[part])
            start += sizes[part]
        else:
            out[part] = empty
    return out


def split_slices(
    data: list[PairedSlices], fractions: tuple[float, float, float], seed: int
) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], dict[str, Any]]:
    """Train/val/test stacks: by exam from :data:`EXAM_SPLIT_MIN` exams on, else by slabs along z."""
    from medseg.ct.cohort import split_exams

    keys = list(dict.fromkeys(p.exam_key for p in data))
    parts: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {"train": [], "val": [], "test": []}
    if len(keys) >= EXAM_SPLIT_MIN:
        by_key = split_exams(keys, fractions, seed)
        names = {part: [p.name for p in data if p.exam_key in ks] for part, ks in by_key.items()}
        for part, ks in by_key.items():
            parts[part] = [(p.x, p.y) for p in data if p.exam_key in ks]
        how = (
            f"by exam ({len(keys)} exams: "
            + ", ".join(f"{part} {len(by_key[part])}" for part in ("train", "val", "test"))
            + ")"
        )
        info: dict[str, Any] = {"mode": "exams", "description": how, **names}
    else:
        slabs = []
        for p in data:
            spacing = p.slice_spacing or 1.0
            gap = max(SLAB_GAP_MIN_SLICES, int(np.ceil(SLAB_GAP_MM / spacing - 1e-6)))
            idx = slab_split(len(p.x), fractions, gap)
            for part in parts:
                if len(idx[part]):
                    parts[part].append((p.x[idx[part]], p.y[idx[part]]))
            slabs.append(
                {
                    "exam": p.name,
                    **{
                        part: [int(idx[part][0]), int(idx[part][-1])] if len(idx[part]) else []
                        for part in parts
                    },
                    "gap_slices": gap,
                    "gap_mm": round(gap * spacing, 3),
                }
            )
        counts = {part: sum(len(x) for x, _ in parts[part]) for part in parts}
        gaps = ", ".join(f"{s['gap_slices']} slices = {s['gap_mm']:g} mm" for s in slabs)
        how = (
            f"by contiguous slabs along z ({len(keys)} exam{'s' if len(keys) > 1 else ''}: train "
            f"{counts['train']}, validation {counts['val']}, test {counts['test']} slices; gap of {gaps} "
            "between slabs)"
        )
        if not counts["val"] and not counts["test"] and any(f > 0 for f in fractions[1:]):
            how += "; too few slices for held-out slabs: everything is training data"
        info = {"mode": "slabs", "description": how, "slabs": slabs}
    stacks = {}
    for part, items in parts.items():
        if items:
            stacks[part] = (np.concatenate([x for x, _ in items]), np.concatenate([y for _, y in items]))
    return stacks, info
