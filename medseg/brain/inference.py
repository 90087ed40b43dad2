"""Brain nets at inference: loading any brain weights, the slice nets' loops, and the ensemble.

The Havaei slice nets (:mod:`medseg.brain.models`) label whole axial slices fully convolutionally;
the 3-D region net (:mod:`medseg.brain.volume3d`) predicts tumour-core / whole-tumour / enhancing
sigmoid maps. :func:`load_brain_nets` loads one or several weights files (their preprocessing must
agree: each net is fed the same normalised stack) and :func:`mean_regions` averages the nets'
region probabilities, the ensemble ``brain-segment`` runs by default (docs/brain.md). Every network
call runs through the engine :class:`~medseg.engine.predictor.Predictor`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from medseg.brain.models import REGION_ORDER, BrainNetConfig, build_model, softmax_regions
from medseg.brain.preprocess import PreprocessConfig
from medseg.brain.sampling import brain_boxes, extract_patches, predict_slices, slice_padding
from medseg.brain.spacing import (
    check_output_kind,
    inference_zoom,
    predict_in_brain_resampled,
    train_spacing,
    training_zoom,
)
from medseg.brain.volume3d import (
    REGION_THRESHOLD,
    VOLUME_ARCHS,
    Volume3DConfig,
    build_segresnet,
    predict_regions_volume,
)
from medseg.errors import ModelError

if TYPE_CHECKING:
    from medseg.engine.checkpoint import CheckpointMeta
    from medseg.engine.predictor import Predictor

log = logging.getLogger("medseg.brain")

MODEL_PREFIX = "brain-"
TASK = "brain-tumour-segmentation"
# Test-time augmentation of the slice nets: each is also run on the case rotated 180 degrees in-plane
# (both in-plane axes flipped) and the two views' region probabilities averaged. Chosen on the real
# validation cases against no augmentation, the left-right mirror and all four flips (docs/brain.md);
# the 3-D net gained nothing from flips, so it runs once.
SLICE_TTA_AXES: tuple[tuple[int, ...], ...] = ((), (1, 2))


def load_brain_model(weights: str | Path):
    """Rebuild a brain network from self-describing weights; returns (model, meta, preprocess config)."""
    from medseg.engine.checkpoint import load_state_into, load_weights

    state, meta = load_weights(weights)
    if not meta.model.startswith(MODEL_PREFIX) or meta.task != TASK:
        raise ModelError(
            f"weights are for {meta.model} / {meta.task}, not a brain tumour model", path=weights
        )
    net = meta.config.get("net", {})
    if net.get("arch") in VOLUME_ARCHS:
        arch, built = net["arch"], build_segresnet(config=Volume3DConfig.from_dict(net))
    else:
        net_cfg = BrainNetConfig.from_dict(net)
        arch, built = net_cfg.arch, build_model(config=net_cfg)
    model = load_state_into(built, state, path=weights, message=f"weights do not fit {arch}: {{error}}")
    return model.eval(), meta, PreprocessConfig.from_dict(meta.config.get("preprocess", {}))


def make_predictor(
    model, *, device: str = "auto", amp: str = "auto", postprocess: str = "argmax", runtime: str | None = None
) -> Predictor:
    """The engine predictor for a brain network (channels_last on CPU and CUDA; None: --runtime / auto).

    OpenVINO converts the net at 160^2 so that the output layer takes its row-split form (outputs
    of 4096 px and more): OpenVINO then runs InputCascadeCNN 1.46x faster than with the direct 21x21
    convolution (docs/benchmarks.md).
    """
    from medseg.brain.models import N_MODALITIES
    from medseg.engine.predictor import Predictor

    return Predictor(
        model,
        device=device,
        amp=amp,
        channels_last=True,
        postprocess=postprocess,
        runtime=runtime,
        example_shape=(1, N_MODALITIES, 160, 160),
    )


def predict_volume(
    predictor: Predictor,
    stack: np.ndarray,
    *,
    arch: str,
    batch_size: int = 8,
    progress: bool = False,
    desc: str = "",
) -> np.ndarray:
    """Fully convolutional inference over all axial slices of a (4, z, y, x) normalised stack.

    Returns the class map (z, y, x) for an ``argmax`` predictor, or (5, z, y, x) logits/probabilities
    for a ``float``/``softmax`` one.
    """
    return predict_slices(
        predictor, stack, pad=slice_padding(arch), batch_size=batch_size, progress=progress, desc=desc
    )


def predict_patches(
    predictor: Predictor, stack: np.ndarray, coords: np.ndarray, *, arch: str, batch_size: int = 256
) -> np.ndarray:
    """Patch-by-patch baseline: classify the centre pixel of one patch per coordinate.

    Returns (n,) classes for an ``argmax`` predictor, (n, 5) scores for a ``float``/``softmax`` one.
    """
    outs = []
    for start in range(0, len(coords), batch_size):
        y = predictor(extract_patches(stack, coords[start : start + batch_size], arch=arch))
        outs.append(y[:, :, 0, 0] if y.ndim == 4 else y[:, 0, 0])
    return np.concatenate(outs) if outs else np.empty((0,))


def predict_in_brain(
    predictor: Predictor,
    norm: np.ndarray,
    mask: np.ndarray,
    *,
    arch: str,
    batch_size: int = 8,
    progress: bool = False,
    desc: str = "",
    output: str = "labels",
    rows: np.ndarray | None = None,
) -> np.ndarray:
    """Class map (z, y, x) computed only on the brain's slices, each batch cropped to its brain box.

    Outside the brain the normalised input is 0, exactly like the slice padding, so the labels
    inside the brain equal full-grid inference (tested); voxels outside every box are 0.
    ``output``: see :data:`~medseg.brain.spacing.OUTPUTS` (probabilities are 0 outside the boxes).
    ``rows``: a (z,) bool mask; only the batches of slices holding one of them run (the others stay 0).
    """
    import copy

    from medseg.engine.progress import progress_bar

    channels = check_output_kind(output)
    if channels:
        predictor = copy.copy(predictor)  # same model, probabilities instead of classes
        predictor.postprocess = "softmax"
        out = np.zeros((channels, *mask.shape), np.float32)
    else:
        out = np.zeros(mask.shape, np.uint8)
    pad = slice_padding(arch)
    boxes = brain_boxes(mask, batch_size)
    if rows is not None:  # only the boxes holding a wanted slice (the same boxes as a full run)
        boxes = [b for b in boxes if rows[b[0]].any()]
    for box in progress_bar(boxes, total=len(boxes), desc=desc, enabled=progress, unit="batch"):
        y = predict_slices(predictor, norm[(slice(None), *box)], pad=pad, batch_size=batch_size)
        if output == "regions":
            out[(slice(None), *box)] = softmax_regions(y)
        elif output == "softmax":
            out[(slice(None), *box)] = y
        else:
            out[box] = y
    return out


def make_volume_predictor(
    model, *, config: Volume3DConfig, device: str = "auto", amp: str = "auto", runtime: str | None = None
) -> Predictor:
    """The engine predictor for a 3-D region net: raw logits (windows are blended before the sigmoid)."""
    from medseg.brain.models import N_MODALITIES
    from medseg.engine.predictor import Predictor

    return Predictor(
        model,
        device=device,
        amp=amp,
        channels_last=False,
        postprocess="none",
        runtime=runtime,
        example_shape=(1, N_MODALITIES, config.roi, config.roi, config.roi),
    )


@dataclass
class BrainNet:
    """One loaded brain network, ready to predict: what :func:`load_brain_nets` returns."""

    path: Path
    meta: CheckpointMeta
    arch: str
    predictor: Predictor

    @property
    def is_volume(self) -> bool:
        return self.arch in VOLUME_ARCHS

    @property
    def trained(self) -> tuple[float, ...] | None:
        """Training spacing: (row, col) mm for slice nets, (z, y, x) mm for 3-D nets."""
        return train_spacing(self.meta, dims=3 if self.is_volume else 2)

    def zoom(self, spacing: tuple[float, float, float], *, native: bool = False) -> tuple[float, ...] | None:
        """Zoom to the training grid for a case of ``spacing`` (None: the case's own grid)."""
        if native:
            return None
        return (
            training_zoom(spacing, self.trained) if self.is_volume else inference_zoom(spacing, self.trained)
        )

    def regions(
        self,
        norm: np.ndarray,
        mask: np.ndarray,
        spacing: tuple[float, float, float],
        *,
        native: bool = False,
        tta: bool = False,
        **options,
    ) -> np.ndarray:
        """(3, z, y, x) TC / WT / ET probabilities of a normalised stack (0 outside the brain).

        ``tta``: a slice net's probabilities are the mean over the views :data:`SLICE_TTA_AXES`;
        a 3-D net runs once either way. ``options`` (slice nets) as :meth:`view`.
        """
        if self.is_volume:
            cfg = Volume3DConfig.from_dict(self.meta.config["net"])
            zoom = self.zoom(spacing, native=native)
            return predict_regions_volume(self.predictor, norm, mask, config=cfg, zoom=zoom)
        return self._mean_views(norm, mask, spacing, "regions", tta=tta, native=native, **options)

    def class_probabilities(
        self,
        norm: np.ndarray,
        mask: np.ndarray,
        spacing: tuple[float, float, float],
        *,
        tta: bool = False,
        **options,
    ) -> np.ndarray:
        """(5, z, y, x) softmax of a slice net (0 outside the brain's boxes), averaged over the TTA views;
        ``options`` as :meth:`view`."""
        if self.is_volume:
            raise ModelError(f"{self.path.name} is a region net: it has no per-class softmax", path=self.path)
        return self._mean_views(norm, mask, spacing, "softmax", tta=tta, **options)

    def view(
        self,
        norm: np.ndarray,
        mask: np.ndarray,
        spacing: tuple[float, float, float],
        axes: tuple[int, ...] = (),
        output: str = "regions",
        *,
        native: bool = False,
        batch_size: int = 8,
        progress: bool = False,
        desc: str = "",
        rows: np.ndarray | None = None,
    ) -> np.ndarray:
        """A slice net's ``output`` maps of the case flipped along the grid ``axes`` (z=0, y=1, x=2),
        flipped back onto the case's grid. ``rows``: a (z,) bool mask; only the batches of slices
        holding one run (the same batches as a full run, so those slices are exactly its values)."""
        zoom = self.zoom(spacing, native=native)
        label = desc if not axes else f"{desc} (rotated view)".strip()
        if rows is not None and 0 in axes:
            rows = rows[::-1]
        kw = dict(
            arch=self.arch, batch_size=batch_size, progress=progress, desc=label, output=output, rows=rows
        )
        n, m = _flip(norm, axes, lead=1), _flip(mask, axes)
        if zoom is None:
            r = predict_in_brain(self.predictor, n, m, **kw)
        else:
            r = predict_in_brain_resampled(self.predictor, n, m, zoom, **kw)
        return _flip(r, axes, lead=1 if output != "labels" else 0)

    def _mean_views(self, norm, mask, spacing, output: str, *, tta: bool, **options) -> np.ndarray:
        views = SLICE_TTA_AXES if tta else ((),)
        total: np.ndarray | None = None
        for axes in views:
            r = self.view(norm, mask, spacing, axes, output, **options)
            total = r if total is None else np.add(total, r, out=total)
        assert total is not None
        return total / len(views) if len(views) > 1 else total


def _flip(array: np.ndarray, axes: tuple[int, ...], *, lead: int = 0) -> np.ndarray:
    """``array`` flipped along the grid ``axes`` (z=0, y=1, x=2) after ``lead`` channel axes; contiguous."""
    if not axes:
        return array
    return np.ascontiguousarray(np.flip(array, tuple(a + lead for a in axes)))


def brain_amp(amp: str | bool | None, device: str) -> str | bool | None:
    """``--amp auto`` for the brain nets: bf16 on a CPU whose OpenVINO plugin computes bf16 natively.

    Chosen on the real validation cases: the default ensemble's labels gave the same mean Dice in bf16
    as in fp32 (0.841 / 0.693 / 0.647) at 1.5x the cascade's speed (docs/brain.md). Only the labels
    are outputs here, thresholded probabilities; other pipelines keep fp32 (CT writes HU). Anything
    but ``auto`` (and a runtime other than OpenVINO) is left as asked.
    """
    from medseg.engine.openvino_runtime import cpu_has_bf16, default_runtime

    if amp not in (None, "auto") or str(device) not in ("auto", "cpu") or default_runtime() == "torch":
        return amp
    if str(device) == "auto":
        import torch

        if torch.cuda.is_available():
            return amp
    return "bf16" if cpu_has_bf16() else amp


def load_brain_nets(
    paths: list[Path], *, device: str = "auto", amp: str = "auto"
) -> tuple[list[BrainNet], PreprocessConfig]:
    """Load each weights file; their preprocessing must agree (every net gets the same input).

    ``amp`` ``auto``: see :func:`brain_amp`.
    """
    amp = brain_amp(amp, device)  # type: ignore[assignment]
    nets: list[BrainNet] = []
    prep: PreprocessConfig | None = None
    for path in paths:
        model, meta, this_prep = load_brain_model(path)
        arch = meta.config["net"]["arch"]
        if arch in VOLUME_ARCHS:
            cfg = Volume3DConfig.from_dict(meta.config["net"])
            predictor = make_volume_predictor(model, config=cfg, device=device, amp=amp)
        else:
            predictor = make_predictor(model, device=device, amp=amp, postprocess="argmax")
        if prep is not None and this_prep.to_dict() != prep.to_dict():
            raise ModelError(
                f"{Path(path).name} was trained with other preprocessing than {nets[0].path.name} "
                f"({this_prep.to_dict()} vs {prep.to_dict()}): these nets cannot be averaged",
                path=path,
            )
        prep = this_prep
        nets.append(BrainNet(path=Path(path), meta=meta, arch=arch, predictor=predictor))
    if prep is None:
        raise ModelError("no brain weights given")
    return nets, prep


def mean_regions(
    nets: list[BrainNet],
    norm: np.ndarray,
    mask: np.ndarray,
    spacing: tuple[float, float, float],
    *,
    tta: bool = False,
    threshold: float = REGION_THRESHOLD,
    **options,
) -> np.ndarray:
    """Mean of the nets' (3, z, y, x) region probabilities (the ensemble ``brain-segment`` runs);
    ``options`` as :meth:`BrainNet.regions` (native, batch_size, progress, desc).

    ``tta``: each slice net's probabilities are the mean of its plain and rotated views
    (:data:`SLICE_TTA_AXES`). The rotated view runs only on the batches of slices where it can change
    the labels: a slice on which the whole-tumour mean stays below ``threshold`` even if every rotated
    view said 1 everywhere keeps the plain view (labels thresholded at ``threshold`` are exactly those
    of the full average; the probabilities there are the plain views').
    """
    total: np.ndarray | None = None
    plains: list[tuple[BrainNet, np.ndarray]] = []
    for net in nets:
        r = net.regions(norm, mask, spacing, **options)
        if tta and not net.is_volume:
            plains.append((net, r.copy()))
        total = r if total is None else np.add(total, r, out=total)
    assert total is not None
    if plains:
        wt = REGION_ORDER.index("WT")
        # the mean's whole tumour if every rotated view were 1: sum - plain/2 + 1/2 per slice net
        bound = total[wt] - sum(p[wt] for _, p in plains) / 2 + len(plains) / 2
        rows = ((bound >= threshold * len(nets)) & mask).any(axis=(1, 2))
        log.debug("rotated views on %d of %d slices", int(rows.sum()), int(mask.any(axis=(1, 2)).sum()))
        if rows.any():
            axes = next(a for a in SLICE_TTA_AXES if a)
            for net, plain in plains:
                rotated = net.view(norm, mask, spacing, axes, "regions", rows=rows, **options)
                total[:, rows] += (rotated[:, rows] - plain[:, rows]) / 2
    return total / len(nets)
