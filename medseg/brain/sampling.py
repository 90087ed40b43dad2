"""Patch sampling for the two training phases (Havaei et al. section 3.2).

Phase 1 draws patch centres *equiprobably per class* (healthy tissue is ~98 % of the brain, so
uniform sampling would teach the net to answer "healthy"); phase 2 draws them from the *natural*
distribution inside the brain, to recalibrate the output layer's class priors.

For a cascade the first stage is frozen, so its class maps do not change during second-stage
training: they are computed once per volume, fully convolutionally (:class:`TrainingCase`), and the
training patches read windows of them instead of rerunning the first net on 65x65 patches.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from medseg.brain.models import CASCADE_GEOMETRY, N_CLASSES


def slice_padding(arch: str) -> tuple[int, int]:
    """Zero padding (before, after) per side that makes the output slice the size of the input slice."""
    _patch, before, after = CASCADE_GEOMETRY[arch]
    return 16 + before, 16 + after


def windows(padded: np.ndarray, coords: np.ndarray, size: int) -> np.ndarray:
    """(n, C, size, size) windows of a (C, z, Y, X) array starting at (y, x) on slice z."""
    z, y, x = coords[:, 0], coords[:, 1], coords[:, 2]
    iy = y[:, None] + np.arange(size)[None, :]
    ix = x[:, None] + np.arange(size)[None, :]
    return padded[:, z[:, None, None], iy[:, :, None], ix[:, None, :]].transpose(1, 0, 2, 3).copy()


def pad_slices(stack: np.ndarray, before: int, after: int) -> np.ndarray:
    return np.pad(stack, ((0, 0), (0, 0), (before, after), (before, after)))


def extract_patches(stack: np.ndarray, coords: np.ndarray, *, arch: str) -> np.ndarray:
    """(n, 4, P, P) patches centred on (z, y, x), zero outside the volume (as in whole-slice inference)."""
    before, after = slice_padding(arch)
    return windows(pad_slices(stack, before, after), coords, before + after + 1)


def class_balanced_coords(labels: np.ndarray, mask: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` centres, equally many from each class present (healthy counted inside the brain only)."""
    pools = []
    for c in range(N_CLASSES):
        where = np.flatnonzero(((labels == c) & mask).ravel()) if c == 0 else np.flatnonzero((labels == c).ravel())
        if where.size:
            pools.append(where)
    if not pools:
        return np.empty((0, 3), np.int64)
    per = np.full(len(pools), n // len(pools))
    per[: n - per.sum()] += 1
    flat = np.concatenate([rng.choice(p, size=k, replace=True) for p, k in zip(pools, per)])
    return np.stack(np.unravel_index(flat, labels.shape), axis=1)


def natural_coords(mask: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` centres uniformly inside the brain (the natural class distribution)."""
    flat = rng.choice(np.flatnonzero(mask.ravel()), size=n, replace=True)
    return np.stack(np.unravel_index(flat, mask.shape), axis=1)


@dataclass
class TrainingCase:
    """One preprocessed case, padded once for patch extraction (and first-stage maps for cascades)."""

    name: str
    padded: np.ndarray  # (4, z, Y+32, X+32): the second stage's / TwoPath's 33-patch source
    labels: np.ndarray  # (z, y, x) internal labels
    mask: np.ndarray  # brain mask
    probs: np.ndarray | None = None  # (5, z, ., .) first-stage maps aligned so windows start at (y, x)

    @classmethod
    def build(cls, name: str, stack: np.ndarray, labels: np.ndarray, mask: np.ndarray) -> TrainingCase:
        return cls(name=name, padded=pad_slices(stack, 16, 16), labels=labels, mask=mask)

    def set_first_stage(self, first, arch: str, *, device=None, batch_size: int = 8) -> None:
        """Compute the frozen first stage's softmax maps over every slice (fully convolutionally)."""
        import torch

        before, after = slice_padding(arch)
        stack = self.padded[:, :, 16:-16, 16:-16]
        src = pad_slices(stack, before, after)
        maps = []
        with torch.inference_mode():
            for s in range(0, src.shape[1], batch_size):
                x = torch.from_numpy(np.ascontiguousarray(src[:, s:s + batch_size].transpose(1, 0, 2, 3)))
                maps.append(torch.softmax(first(x.to(device or "cpu")), 1).float().cpu().numpy())
        self.probs = np.concatenate(maps).transpose(1, 0, 2, 3).copy()

    def batch(self, coords: np.ndarray, *, probs_size: int | None) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
        """(patches, first-stage windows or None, centre labels) for ``coords``."""
        x = windows(self.padded, coords, 33)
        p = windows(self.probs, coords, probs_size) if probs_size else None
        return x, p, self.labels[coords[:, 0], coords[:, 1], coords[:, 2]].astype(np.int64)


def sample_batch(cases: list[TrainingCase], n: int, rng: np.random.Generator, *, balanced: bool,
                 probs_size: int | None = None) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """A mixed batch from randomly chosen cases (phase 1: balanced, phase 2: natural)."""
    picks = np.bincount(rng.integers(0, len(cases), n), minlength=len(cases))
    xs, ps, ys = [], [], []
    for case, k in zip(cases, picks):
        if not k:
            continue
        coords = (class_balanced_coords(case.labels, case.mask, int(k), rng) if balanced
                  else natural_coords(case.mask, int(k), rng))
        x, p, y = case.batch(coords, probs_size=probs_size)
        xs.append(x)
        ys.append(y)
        if p is not None:
            ps.append(p)
    return np.concatenate(xs), (np.concatenate(ps) if ps else None), np.concatenate(ys)
