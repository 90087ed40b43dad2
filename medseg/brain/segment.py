"""Whole-volume inference: fully convolutional batched slices, post-processing, volumes in mL.

Because every layer is a valid convolution or a stride-1 pool, running the patch classifier on a
zero-padded slice yields, in one pass, exactly the class scores the patch-by-patch classifier
gives at each centre pixel (:func:`predict_patches` is that baseline, kept for tests and the
benchmark). Every network call runs through the engine
:class:`~medseg.engine.predictor.Predictor` (device, AMP, channels_last, inference mode).
Memory is bounded by ``batch_size`` slices, whatever the number of slices.

:func:`segment_cases` is the public entry of ``brain-segment``: case folders (or explicit files)
-> one label map and volumes per case, a :class:`~medseg.results.RunResult` with one item per case.
"""

from __future__ import annotations

import functools
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from medseg.brain.io import (
    LABEL_CONVENTIONS,
    CaseFiles,
    Geometry,
    error_reason,
    find_case_files,
    labels_from_internal,
    load_case,
    skull_strip_warning,
    write_seg,
)
from medseg.brain.models import BrainNetConfig, build_model
from medseg.brain.postprocess import PostprocessConfig, postprocess  # noqa: F401 (re-exported)
from medseg.brain.preprocess import PreprocessConfig, preprocess
from medseg.brain.sampling import extract_patches, predict_slices, slice_padding
from medseg.brain.spacing import inference_zoom, predict_in_brain_resampled, train_spacing
from medseg.errors import InputError, ModelError
from medseg.results import FAILED, ItemResult, RunResult

if TYPE_CHECKING:
    from medseg.engine.predictor import Predictor
    from medseg.scale.items import Mapper

log = logging.getLogger("medseg.brain")

MODEL_PREFIX = "brain-"
TASK = "brain-tumour-segmentation"
DEMO_WEIGHTS = (
    "brain/brain_input_cascade_brats2018.safetensors"  # relative to the shipped demo weights folder
)
REGIONS = ("WT", "TC", "ET")  # whole tumour, tumour core, enhancing tumour
VOLUME_COLUMNS = ("case", "status", "WT_ml", "TC_ml", "ET_ml", "seconds", "output", "reason")


def region_masks(seg: np.ndarray) -> dict[str, np.ndarray]:
    """WT / TC / ET masks from internal (Havaei) labels."""
    return {"WT": seg > 0, "TC": np.isin(seg, (1, 3, 4)), "ET": seg == 4}


def region_volumes_ml(seg: np.ndarray, spacing: tuple[float, float, float]) -> dict[str, float]:
    voxel_ml = float(np.prod(spacing)) / 1000.0
    return {f"{k}_ml": round(float(m.sum()) * voxel_ml, 4) for k, m in region_masks(seg).items()}


def load_brain_model(weights: str | Path):
    """Rebuild a brain network from self-describing weights; returns (model, meta, preprocess config)."""
    from medseg.engine.checkpoint import load_state_into, load_weights

    state, meta = load_weights(weights)
    if not meta.model.startswith(MODEL_PREFIX) or meta.task != TASK:
        raise ModelError(
            f"weights are for {meta.model} / {meta.task}, not a brain tumour model", path=weights
        )
    net_cfg = BrainNetConfig.from_dict(meta.config.get("net", {}))
    model = load_state_into(
        build_model(config=net_cfg),
        state,
        path=weights,
        message=f"weights do not fit {net_cfg.arch}: {{error}}",
    )
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


def predict_in_brain(
    predictor: Predictor,
    norm: np.ndarray,
    mask: np.ndarray,
    *,
    arch: str,
    batch_size: int = 8,
    progress: bool = False,
    desc: str = "",
) -> np.ndarray:
    """Class map (z, y, x) computed only on the brain's slices, each batch cropped to its brain box.

    Outside the brain the normalised input is 0, exactly like the slice padding, so the labels
    inside the brain equal full-grid inference (tested); voxels outside every box are 0.
    """
    from medseg.engine.progress import progress_bar

    seg = np.zeros(mask.shape, np.uint8)
    pad = slice_padding(arch)
    boxes = brain_boxes(mask, batch_size)
    for box in progress_bar(boxes, total=len(boxes), desc=desc, enabled=progress, unit="batch"):
        seg[box] = predict_slices(predictor, norm[(slice(None), *box)], pad=pad, batch_size=batch_size)
    return seg


def segment_array(
    predictor: Predictor,
    stack_raw: np.ndarray,
    geo: Geometry,
    *,
    arch: str,
    prep: PreprocessConfig,
    batch_size: int = 8,
    post: bool = True,
    progress: bool = False,
    desc: str = "",
    zoom: tuple[float, float] | None = None,
) -> np.ndarray:
    """Raw (4, z, y, x) intensities -> internal label map (z, y, x), with an ``argmax`` predictor.

    ``zoom`` (from :func:`inference_zoom`): run the net on a grid resampled in-plane by it, labels
    back on the case's grid; None runs at the case's own spacing.
    """
    norm, mask = preprocess(stack_raw, geo.spacing, prep)
    if zoom is None:
        seg = predict_in_brain(
            predictor, norm, mask, arch=arch, batch_size=batch_size, progress=progress, desc=desc
        )
    else:
        seg = predict_in_brain_resampled(
            predictor, norm, mask, zoom, arch=arch, batch_size=batch_size, progress=progress, desc=desc
        )
    seg[~mask] = 0
    return postprocess(seg, geo.spacing, mask=mask) if post else seg


@dataclass
class SegmentConfig:
    """Everything ``brain-segment`` needs besides the inputs and ``--out``."""

    weights: str | Path | None = None  # None: the demo InputCascadeCNN (9 real BraTS 2018 cases)
    labels: str = "brats2021"
    resample_to: str | None = None
    batch_size: int = 8
    n4: bool | None = None  # None: as the weights' preprocessing config
    postprocess: bool = True
    device: str = "auto"
    amp: str = "auto"
    overwrite: bool = False
    progress: bool = False
    native_spacing: bool = False  # True: run the nets at the case's spacing even if trained at another


def _case_name(case: CaseFiles | Path) -> str:
    return case.name


def plan_outputs(cases: list[CaseFiles | Path], out: Path) -> tuple[list[dict[str, Path]], Path | None]:
    """Output files per case and the batch table (or None): ``--out`` is a file for one case, else a folder."""
    from medseg.io.volume import VOLUME_OUTPUT_SUFFIXES, has_volume_suffix

    single_file = len(cases) == 1 and has_volume_suffix(out, VOLUME_OUTPUT_SUFFIXES)
    segs = [out] if single_file else [out / f"{_case_name(c)}_seg.nii.gz" for c in cases]
    plans = []
    for seg in segs:
        stem = next(seg.name[: -len(s)] for s in VOLUME_OUTPUT_SUFFIXES if seg.name.lower().endswith(s))
        plans.append(
            {
                "seg": seg,
                "volumes_json": seg.with_name(f"{stem}_volumes.json"),
                "volumes_csv": seg.with_name(f"{stem}_volumes.csv"),
            }
        )
    return plans, (out / "volumes.csv" if len(cases) > 1 else None)


def _volumes_csv(rows: list[dict]) -> str:
    def cell(value) -> str:
        text = "" if value is None else str(value)
        return f'"{text}"' if ("," in text or '"' in text) else text

    return (
        ",".join(VOLUME_COLUMNS)
        + "\n"
        + "".join(",".join(cell(r.get(c)) for c in VOLUME_COLUMNS) + "\n" for r in rows)
    )


def _write_case(plan: dict[str, Path], seg: np.ndarray, geo: Geometry, record: dict, labels: str) -> None:
    """Label map + volumes JSON/CSV; on any failure, remove what this case wrote (no half outputs)."""
    from medseg.io.atomic import write_text

    try:
        write_seg(plan["seg"], labels_from_internal(seg, labels=labels), geo)
        write_text(plan["volumes_json"], json.dumps(record, indent=2) + "\n")
        write_text(plan["volumes_csv"], _volumes_csv([record]))
    except BaseException:
        for path in plan.values():
            path.unlink(missing_ok=True)
        raise


def _case_inputs(case: CaseFiles | Path) -> list[Path | None]:
    return [*case.modalities.values(), case.seg] if isinstance(case, CaseFiles) else [Path(case)]


def segment_cases(
    cases: list[CaseFiles | Path],
    out: str | Path,
    config: SegmentConfig | None = None,
    *,
    mapper: Mapper | None = None,
) -> RunResult:
    """Segment each case (a :class:`CaseFiles` or a case folder) into ``out``; one item per case.

    Pre-flight, before any work: every output is checked (exists -> exit 3 unless ``overwrite``;
    not writable -> exit 2) and every case folder is searched for its four modalities. In a batch a
    case that cannot be read or segmented is recorded as failed (reason in words) and the batch
    goes on; a single case that fails raises :class:`InputError` instead (exit 2). A failed case
    leaves no output; ``volumes.csv`` (batch) lists this run's cases only and is written when at
    least one case succeeded. ``mapper`` decides where each case runs (default: here, in
    order; :class:`medseg.scale.items.RayMapper` for ``--ray``); rows and the table are recorded
    here either way.
    """
    from medseg.engine.weights import resolve_weights
    from medseg.io.atomic import check_apart, check_output, write_text
    from medseg.scale.items import local_map

    cfg = config or SegmentConfig()
    out = Path(out)
    if not cases:
        raise InputError("nothing to segment: give case folders or --t1 --t1c --t2 --flair")
    if cfg.labels not in LABEL_CONVENTIONS:
        raise InputError(f"unknown label convention {cfg.labels}; choose {', '.join(LABEL_CONVENTIONS)}")
    names = [_case_name(c) for c in cases]
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise InputError(f"several cases are named {', '.join(dup)}: their outputs would collide")
    plans, table = plan_outputs(cases, out)
    check_apart(out, [cfg.weights, *(p for c in cases for p in _case_inputs(c))])  # never write a case
    for plan in plans:
        for path in plan.values():
            check_output(path, overwrite=cfg.overwrite)
    if table is not None:
        check_output(table, overwrite=cfg.overwrite)
    result = RunResult(command="brain-segment")
    found: list[CaseFiles | ItemResult] = []
    for case in cases:  # input pre-flight: cheap (file names only)
        try:
            found.append(case if isinstance(case, CaseFiles) else find_case_files(case))
        except InputError as exc:
            if len(cases) == 1:
                raise
            found.append(ItemResult(name=case.name, status=FAILED, reason=error_reason(exc)))
    weights, is_demo = resolve_weights(cfg.weights, demo=DEMO_WEIGHTS)
    model, meta, prep = load_brain_model(weights)
    if is_demo:
        trained_on = (
            "trained on synthetic data only"
            if "synthetic" in meta.training_data.lower()
            else "trained on a few real BraTS 2018 cases (research use)"
        )
        result.warnings.append(f"demo weights {weights.name}: {trained_on}, not for clinical use")
    elif "synthetic" in meta.training_data.lower():
        result.warnings.append(
            f"{weights.name} was trained on synthetic data only: a demo, not for clinical use"
        )
        log.warning(result.warnings[-1])
    if cfg.n4 is not None:
        prep.n4 = cfg.n4
    arch = BrainNetConfig.from_dict(meta.config["net"]).arch
    predictor = make_predictor(model, device=cfg.device, amp=cfg.amp, postprocess="argmax")
    rows = []
    todo = [(i, c, p) for i, (c, p) in enumerate(zip(found, plans), start=1) if isinstance(c, CaseFiles)]
    trained = train_spacing(meta)
    run_one = functools.partial(
        _segment_item,
        predictor,
        arch=arch,
        prep=prep,
        cfg=cfg,
        total=len(found),
        strict=len(cases) == 1,
        trained=trained,
    )
    outcomes = (mapper or local_map)(run_one, todo)
    for case in found:
        if isinstance(case, ItemResult):
            item = result.add(case)
        else:
            outcome = next(outcomes)
            if isinstance(outcome, Exception):  # strict (single case) or a bug: as the local loop
                raise outcome
            item = result.add(outcome)
        rows.append(
            {
                "case": item.name,
                "status": item.status,
                **item.metrics,
                "output": item.outputs.get("seg"),
                "reason": item.reason,
            }
        )
        if not item.ok:
            log.error("%s: failed: %s", item.name, item.reason)
    if table is not None and any(item.ok for item in result.items):
        result.outputs["volumes_csv"] = str(write_text(table, _volumes_csv(rows)))
    result.summary = {
        "weights": str(weights),
        "demo_weights": is_demo,
        "arch": arch,
        "labels": cfg.labels,
        **predictor.describe(),
        "resample_to": cfg.resample_to,
        "batch_size": cfg.batch_size,
        "n4": prep.n4,
        "postprocess": cfg.postprocess,
        "train_spacing_mm": list(trained) if trained else None,
        "native_spacing": cfg.native_spacing,
    }
    return result


def _segment_item(
    predictor: Predictor,
    item: tuple[int, CaseFiles, dict[str, Path]],
    *,
    arch: str,
    prep: PreprocessConfig,
    cfg: SegmentConfig,
    total: int,
    strict: bool,
    trained: tuple[float, float] | None = None,
) -> ItemResult:
    """:func:`_segment_one` for one (index, case, plan) item: what a mapper runs, here or on Ray."""
    i, case, plan = item
    desc = f"{case.name} ({i}/{total})"
    return _segment_one(
        predictor, case, plan, arch=arch, prep=prep, cfg=cfg, desc=desc, strict=strict, trained=trained
    )


def _segment_one(
    predictor: Predictor,
    case: CaseFiles,
    plan: dict[str, Path],
    *,
    arch: str,
    prep: PreprocessConfig,
    cfg: SegmentConfig,
    desc: str,
    strict: bool,
    trained: tuple[float, float] | None = None,
) -> ItemResult:
    """One case -> label map and volumes; input and write problems become a failed item (raised if ``strict``)."""
    t0 = time.perf_counter()
    warnings: list[str] = []
    try:
        stack, geo = load_case(case, resample_to_modality=cfg.resample_to, warnings=warnings)
        stripped = skull_strip_warning(stack, name=case.name)
        if stripped:
            log.warning(stripped)
            warnings.append(stripped)
        zoom = None if cfg.native_spacing else inference_zoom(geo.spacing, trained)
        run_yx = [round(float(s), 4) for s in (trained if zoom else geo.spacing[1:])]
        log.info(
            "%s: in-plane spacing %.3g x %.3g mm; nets run at %s",
            case.name,
            geo.spacing[1],
            geo.spacing[2],
            f"the training spacing {run_yx[0]:.3g} x {run_yx[1]:.3g} mm (probabilities resampled back)"
            if zoom
            else "the case's own spacing" + (" (--native-spacing)" if cfg.native_spacing and trained else ""),
        )
        seg = segment_array(
            predictor,
            stack,
            geo,
            arch=arch,
            prep=prep,
            batch_size=cfg.batch_size,
            post=cfg.postprocess,
            progress=cfg.progress,
            desc=desc,
            zoom=zoom,
        )
        volumes = region_volumes_ml(seg, geo.spacing)
        record = {
            "case": case.name,
            "status": "ok",
            **volumes,
            "seconds": round(time.perf_counter() - t0, 3),
            "output": str(plan["seg"]),
            "labels": cfg.labels,
            "arch": arch,
            "inference_spacing_mm": run_yx,
            "resampled_to_training_spacing": zoom is not None,
        }
        _write_case(plan, seg, geo, record, cfg.labels)
    except (InputError, OSError) as exc:
        if strict:
            raise
        return ItemResult(name=case.name, status=FAILED, reason=error_reason(exc))
    log.info(
        "%s: WT %.2f mL, TC %.2f mL, ET %.2f mL (%.1f s)",
        case.name,
        volumes["WT_ml"],
        volumes["TC_ml"],
        volumes["ET_ml"],
        record["seconds"],
    )
    return ItemResult(
        name=case.name,
        outputs={k: str(v) for k, v in plan.items()},
        metrics={
            **volumes,
            "seconds": record["seconds"],
            "inference_spacing_mm": run_yx,
            "resampled_to_training_spacing": zoom is not None,
        },
        warnings=warnings,
    )
