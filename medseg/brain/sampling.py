"""Patch sampling for the two training phases (Havaei et al. section 3.2).

Phase 1 draws patch centres *equiprobably per class* (healthy tissue is ~98 % of the brain, so
uniform sampling would teach the net to answer "healthy"); phase 2 draws them from the *natural*
distribution inside the brain, to recalibrate the output layer's class priors.

For a cascade the first stage is frozen, so its class maps do not change during second-stage
training: they are computed once per volume, fully convolutionally (:class:`TrainingCase`), and the
training patches read windows of them instead of rerunning the first net on 65x65 patches.

:func:`predict_slices` is the one slice loop of the pipeline: whole-volume inference
(``segment.predict_volume``) and the first-stage maps both run through it and the engine
:class:`~medseg.engine.predictor.Predictor`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from medseg.brain.models import CASCADE_GEOMETRY, N_CLASSES

if TYPE_CHECKING:
    from medseg.engine.predictor import Predictor


def slice_padding(arch: str) -> tuple[int, int]:
    """Zero padding (before, after) per side that makes the output slice the size of the input slice."""
    _patch, before, after = CASCADE_GEOMETRY[arch]
    return 16 + before, 16 + after


def slice_batches(stack: np.ndarray, *, pad: tuple[int, int], batch_size: int):
    """Zero-padded NCHW slice batches of a (C, z, y, x) stack, as channels_last tensors.

    The batch is padded and laid out NHWC in one NumPy copy; the tensor view is NCHW with
    channels_last strides, which the predictor uses as is (no second layout copy).
    """
    import torch

    before, after = pad
    for start in range(0, stack.shape[1], batch_size):
        chunk = stack[:, start : start + batch_size].transpose(1, 2, 3, 0)  # (b, y, x, C) view
        padded = np.pad(chunk, ((0, 0), (before, after), (before, after), (0, 0)))
        yield start, torch.from_numpy(padded).permute(0, 3, 1, 2)


def predict_slices(
    predictor: Predictor,
    stack: np.ndarray,
    *,
    pad: tuple[int, int],
    batch_size: int = 8,
    progress: bool = False,
    desc: str = "",
) -> np.ndarray:
    """Run ``predictor`` over every axial slice of a (C, z, y, x) stack, zero-padded by ``pad``.

    Returns what the predictor's post-processing gives, slices on axis 1 for maps ((K, z, h, w):
    float, softmax) or axis 0 for class maps ((z, h, w): argmax).
    """
    from medseg.engine.progress import progress_bar

    nz = stack.shape[1]
    out: np.ndarray | None = None
    batches = slice_batches(stack, pad=pad, batch_size=batch_size)
    for start, batch in progress_bar(
        batches, total=-(-nz // batch_size), desc=desc, enabled=progress, unit="batch"
    ):
        y = predictor(batch)
        if out is None:
            shape = (y.shape[1], nz, *y.shape[2:]) if y.ndim == 4 else (nz, *y.shape[1:])
            out = np.empty(shape, y.dtype)
        if y.ndim == 4:
            out[:, start : start + len(y)] = y.transpose(1, 0, 2, 3)
        else:
            out[start : start + len(y)] = y
    if out is None:
        raise ValueError("empty stack: no slices to predict")
    return out


def brain_boxes(mask: np.ndarray, batch_size: int) -> list[tuple[slice, slice, slice]]:
    """Per batch of consecutive brain slices, the (z, y, x) box holding their brain voxels.

    Slices without brain are skipped; each batch is cropped to the union of its slices' in-plane
    extents (an axial brain section shrinks towards the vertex and the skull base, so this is
    tighter than one box for the whole brain).
    """
    zs = np.flatnonzero(mask.any(axis=(1, 2)))
    if zs.size == 0:
        return []
    rows, cols = mask.any(axis=2), mask.any(axis=1)  # (z, y), (z, x)
    boxes = []
    z0, z1 = int(zs[0]), int(zs[-1]) + 1
    for start in range(z0, z1, batch_size):
        zsl = slice(start, min(start + batch_size, z1))
        ys, xs = np.flatnonzero(rows[zsl].any(0)), np.flatnonzero(cols[zsl].any(0))
        if ys.size:
            boxes.append((zsl, slice(int(ys[0]), int(ys[-1]) + 1), slice(int(xs[0]), int(xs[-1]) + 1)))
    return boxes


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


def class_balanced_coords(
    labels: np.ndarray, mask: np.ndarray, n: int, rng: np.random.Generator
) -> np.ndarray:
    """``n`` centres, equally many from each class present (healthy counted inside the brain only)."""
    pools = []
    for c in range(N_CLASSES):
        where = (
            np.flatnonzero(((labels == c) & mask).ravel())
            if c == 0
            else np.flatnonzero((labels == c).ravel())
        )
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
    probs_source: str | None = None  # which first-stage weights made ``probs`` (reused across phases)
    spacing: tuple[float, float, float] | None = None  # mm (z, y, x): the weights record the in-plane one

    @classmethod
    def build(cls, name: str, stack: np.ndarray, labels: np.ndarray, mask: np.ndarray) -> TrainingCase:
        return cls(name=name, padded=pad_slices(stack, 16, 16), labels=labels, mask=mask)

    def rotated(self) -> TrainingCase:
        """This case rotated 180 degrees in-plane (both in-plane axes flipped), first-stage maps unset.

        The slice padding is symmetric, so rotating the padded stack is padding the rotated one.
        """

        def rot(a: np.ndarray) -> np.ndarray:
            return np.ascontiguousarray(a[..., ::-1, ::-1])

        return TrainingCase(
            name=f"{self.name} (rotated)",
            padded=rot(self.padded),
            labels=rot(self.labels),
            mask=rot(self.mask),
            spacing=self.spacing,
        )

    def set_first_stage(self, predictor: Predictor, arch: str, *, batch_size: int = 8) -> None:
        """The frozen first stage's softmax maps over every slice, fully convolutionally.

        ``predictor`` holds the first stage with ``postprocess="softmax"``; the slices are padded
        as for the whole cascade, so the maps extend ``probs_size // 2`` beyond each slice edge and
        a window of them starts at the patch's (y, x).
        """
        stack = self.padded[:, :, 16:-16, 16:-16]
        self.probs = predict_slices(predictor, stack, pad=slice_padding(arch), batch_size=batch_size)

    def batch(
        self, coords: np.ndarray, *, probs_size: int | None
    ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
        """(patches, first-stage windows or None, centre labels) for ``coords``."""
        x = windows(self.padded, coords, 33)
        p = windows(self.probs, coords, probs_size) if probs_size else None
        return x, p, self.labels[coords[:, 0], coords[:, 1], coords[:, 2]].astype(np.int64)


def sample_batch(
    cases: list[TrainingCase],
    n: int,
    rng: np.random.Generator,
    *,
    balanced: bool,
    probs_size: int | None = None,
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """A mixed batch from randomly chosen cases (phase 1: balanced, phase 2: natural)."""
    picks = np.bincount(rng.integers(0, len(cases), n), minlength=len(cases))
    xs, ps, ys = [], [], []
    for case, k in zip(cases, picks):
        if not k:
            continue
        coords = (
            class_balanced_coords(case.labels, case.mask, int(k), rng)
            if balanced
            else natural_coords(case.mask, int(k), rng)
        )
        x, p, y = case.batch(coords, probs_size=probs_size)
        xs.append(x)
        ys.append(y)
        if p is not None:
            ps.append(p)
    return np.concatenate(xs), (np.concatenate(ps) if ps else None), np.concatenate(ys)
