"""Whole-volume inference: fully convolutional batched slices, post-processing, volumes in mL.

Because every layer is a valid convolution or a stride-1 pool, running the patch classifier on a
zero-padded slice yields, in one pass, exactly the class scores the patch-by-patch classifier
gives at each centre pixel (:func:`predict_patches` is that baseline, kept for tests and the
benchmark). Memory is bounded by ``batch_size`` slices, whatever the number of slices.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from medseg.brain.io import (
    LABEL_CONVENTIONS,
    VOLUME_SUFFIXES,
    CaseFiles,
    Geometry,
    find_case_files,
    labels_from_internal,
    load_case,
    write_seg,
)
from medseg.brain.models import BrainNetConfig, build_model
from medseg.brain.preprocess import PreprocessConfig, preprocess
from medseg.brain.sampling import extract_patches, slice_padding
from medseg.engine.checkpoint import sample_data_path
from medseg.errors import BatchFailures, InputError, ModelError

log = logging.getLogger("medseg.brain")

MODEL_PREFIX = "brain-"
TASK = "brain-tumour-segmentation"
DEMO_DIR = sample_data_path("brain")
DEMO_WEIGHTS = DEMO_DIR / "brain_input_cascade_demo.safetensors"
REGIONS = ("WT", "TC", "ET")  # whole tumour, tumour core, enhancing tumour


def region_masks(seg: np.ndarray) -> dict[str, np.ndarray]:
    """WT / TC / ET masks from internal (Havaei) labels."""
    return {"WT": seg > 0, "TC": np.isin(seg, (1, 3, 4)), "ET": seg == 4}


def region_volumes_ml(seg: np.ndarray, spacing: tuple[float, float, float]) -> dict[str, float]:
    voxel_ml = float(np.prod(spacing)) / 1000.0
    return {f"{k}_ml": round(float(m.sum()) * voxel_ml, 4) for k, m in region_masks(seg).items()}


def load_brain_model(weights: str | Path, *, device=None):
    """Rebuild a brain network from self-describing weights; returns (model, meta, preprocess config)."""
    import torch

    from medseg.engine.checkpoint import load_weights

    state, meta = load_weights(weights)
    if not meta.model.startswith(MODEL_PREFIX) or meta.task != TASK:
        raise ModelError(f"weights are for {meta.model!r} / {meta.task!r}, not a brain tumour model", path=weights)
    net_cfg = BrainNetConfig.from_dict(meta.config.get("net", {}))
    model = build_model(config=net_cfg)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise ModelError(f"weights do not fit {net_cfg.arch}: {str(exc).splitlines()[0]}", path=weights) from None
    model.eval().to(device or torch.device("cpu"))
    return model, meta, PreprocessConfig.from_dict(meta.config.get("preprocess", {}))


def predict_volume(model, stack: np.ndarray, *, arch: str, device=None, batch_size: int = 8, amp_dtype=None,
                   return_logits: bool = False) -> np.ndarray:
    """Fully convolutional inference over all axial slices of a (4, z, y, x) normalised stack.

    Returns the class map (z, y, x) (or float32 logits (5, z, y, x) with ``return_logits``).
    """
    import torch

    from medseg.engine.runtime import autocast

    device = device or torch.device("cpu")
    before, after = slice_padding(arch)
    nz = stack.shape[1]
    out = np.empty((5, *stack.shape[1:]) if return_logits else stack.shape[1:], np.float32 if return_logits else np.uint8)
    with torch.inference_mode():
        for start in range(0, nz, batch_size):
            chunk = torch.from_numpy(np.ascontiguousarray(stack[:, start:start + batch_size].transpose(1, 0, 2, 3)))
            chunk = torch.nn.functional.pad(chunk.to(device), (before, after, before, after))
            with autocast(device, amp_dtype):
                logits = model(chunk).float()
            if return_logits:
                out[:, start:start + batch_size] = logits.permute(1, 0, 2, 3).cpu().numpy()
            else:
                out[start:start + batch_size] = logits.argmax(1).to(torch.uint8).cpu().numpy()
    return out


def predict_patches(model, stack: np.ndarray, coords: np.ndarray, *, arch: str, device=None, batch_size: int = 256,
                    return_logits: bool = False) -> np.ndarray:
    """Patch-by-patch baseline: classify the centre pixel of one patch per coordinate."""
    import torch

    device = device or torch.device("cpu")
    outs = []
    with torch.inference_mode():
        for start in range(0, len(coords), batch_size):
            patches = torch.from_numpy(extract_patches(stack, coords[start:start + batch_size], arch=arch)).to(device)
            logits = model(patches)[:, :, 0, 0].float().cpu()
            outs.append(logits.numpy() if return_logits else logits.argmax(1).numpy().astype(np.uint8))
    return np.concatenate(outs) if outs else np.empty((0, 5) if return_logits else (0,))


@dataclass
class PostprocessConfig:
    """Connected components of the whole tumour smaller than this are removed (false-positive blobs)."""

    min_component_ml: float = 0.2
    min_component_fraction: float = 0.1  # of the largest component


def postprocess(seg: np.ndarray, spacing: tuple[float, float, float], config: PostprocessConfig | None = None,
                mask: np.ndarray | None = None) -> np.ndarray:
    """Remove tumour labels outside the brain and small 3D connected components of the whole tumour."""
    from scipy import ndimage as ndi

    cfg = config or PostprocessConfig()
    seg = seg.copy()
    if mask is not None:
        seg[~mask] = 0
    comps, n = ndi.label(seg > 0, structure=ndi.generate_binary_structure(3, 2))
    if n == 0:
        return seg
    sizes = np.bincount(comps.ravel())[1:]
    voxel_ml = float(np.prod(spacing)) / 1000.0
    keep = (sizes * voxel_ml >= cfg.min_component_ml) & (sizes >= cfg.min_component_fraction * sizes.max())
    seg[~np.concatenate([[True], keep])[comps]] = 0
    return seg


@dataclass
class SegmentOptions:
    labels: str = "brats2021"
    resample_to: str | None = None
    batch_size: int = 8
    n4: bool | None = None  # None: as the weights' preprocessing config
    postprocess: bool = True


def segment_array(model, stack_raw: np.ndarray, geo: Geometry, *, arch: str, prep: PreprocessConfig, device=None,
                  batch_size: int = 8, amp_dtype=None, post: bool = True) -> np.ndarray:
    """Raw (4, z, y, x) intensities -> internal label map (z, y, x)."""
    norm, mask = preprocess(stack_raw, geo.spacing, prep)
    # Outside the brain the normalised input is 0, like the padding: predicting on the brain's
    # bounding box only gives identical labels inside it, and skips empty slices and margins.
    box = tuple(slice(int(i.min()), int(i.max()) + 1) for i in np.nonzero(mask))
    seg = np.zeros(mask.shape, np.uint8)
    seg[box] = predict_volume(model, norm[(slice(None), *box)], arch=arch, device=device, batch_size=batch_size,
                              amp_dtype=amp_dtype)
    seg[~mask] = 0
    return postprocess(seg, geo.spacing, mask=mask) if post else seg


def _write_volumes(base: Path, record: dict) -> None:
    from medseg.io.atomic import write_text

    write_text(base.with_name(base.name + "_volumes.json"), json.dumps(record, indent=2) + "\n")
    cols = ["case", "WT_ml", "TC_ml", "ET_ml"]
    write_text(base.with_name(base.name + "_volumes.csv"),
               ",".join(cols) + "\n" + ",".join(str(record[c]) for c in cols) + "\n")


def segment_cases(cases: list[CaseFiles | Path], outputs: list[Path], *, weights: str | Path | None = None,
                  options: SegmentOptions | None = None, device: str = "auto", amp: str | None = "auto",
                  overwrite: bool = False) -> dict:
    """Segment each case into its output path (+ ``<stem>_volumes.json/.csv``); one bad case is skipped.

    A case is a :class:`CaseFiles` or a case folder (found by BraTS naming inside the per-case guard,
    so a folder with a missing modality is recorded as failed and the batch goes on).

    Returns a summary: per-case records (volumes in mL, seconds) and failures.
    """
    import time

    from medseg.engine.runtime import resolve_amp_dtype, select_device
    from medseg.io.atomic import check_output, write_text

    opts = options or SegmentOptions()
    if opts.labels not in LABEL_CONVENTIONS:
        raise InputError(f"unknown label convention {opts.labels!r}; choose {', '.join(LABEL_CONVENTIONS)}")
    for out in outputs:
        check_output(out, overwrite=overwrite)
    dev = select_device(device)
    amp_dtype = resolve_amp_dtype(dev, amp)
    weights = Path(weights) if weights else DEMO_WEIGHTS
    model, meta, prep = load_brain_model(weights, device=dev)
    if weights == DEMO_WEIGHTS or "synthetic" in meta.training_data.lower():
        log.warning("using weights trained on synthetic data (%s): a demo, not for clinical use", weights.name)
    if opts.n4 is not None:
        prep.n4 = opts.n4
    arch = BrainNetConfig.from_dict(meta.config["net"]).arch
    records, failures = [], []
    for case, out in zip(cases, outputs):
        t0 = time.perf_counter()
        try:
            if not isinstance(case, CaseFiles):
                case = find_case_files(case)
            stack, geo = load_case(case, resample_to_modality=opts.resample_to)
            seg = segment_array(model, stack, geo, arch=arch, prep=prep, device=dev, batch_size=opts.batch_size,
                                amp_dtype=amp_dtype, post=opts.postprocess)
        except InputError as exc:
            name = case.name
            log.error("%s: skipped: %s", name, exc)
            failures.append({"case": name, "reason": str(exc)})
            continue
        write_seg(out, labels_from_internal(seg, labels=opts.labels), geo)
        stem = next((out.name[: -len(x)] for x in VOLUME_SUFFIXES if out.name.lower().endswith(x)), out.name)
        record = {"case": case.name, "output": str(out), "labels": opts.labels, "arch": arch,
                  **region_volumes_ml(seg, geo.spacing), "seconds": round(time.perf_counter() - t0, 3)}
        _write_volumes(out.with_name(stem), record)
        records.append(record)
        log.info("%s: WT %.2f mL, TC %.2f mL, ET %.2f mL (%.1f s)", case.name, record["WT_ml"], record["TC_ml"],
                 record["ET_ml"], record["seconds"])
    summary = {"weights": str(weights), "arch": arch, "labels": opts.labels, "cases": records, "failures": failures,
               "options": asdict(opts)}
    if len(outputs) > 1:
        csv = "case,WT_ml,TC_ml,ET_ml,seconds\n" + "".join(
            f"{r['case']},{r['WT_ml']},{r['TC_ml']},{r['ET_ml']},{r['seconds']}\n" for r in records)
        write_text(outputs[0].parent / "volumes.csv", csv)
    if failures:
        err = BatchFailures(f"{len(failures)} of {len(cases)} case(s) failed: "
                            + "; ".join(f"{f['case']}: {f['reason']}" for f in failures))
        err.summary = summary  # type: ignore[attr-defined]
        if len(cases) == 1:
            raise InputError(failures[0]["reason"])
        raise err
    return summary
