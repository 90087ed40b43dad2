"""``brain-segment``: cases in, label maps and volumes in mL out, post-processed.

Because every layer of the Havaei nets is a valid convolution or a stride-1 pool, running the patch
classifier on a zero-padded slice yields, in one pass, exactly the class scores the patch-by-patch
classifier gives at each centre pixel (:func:`predict_patches` is that baseline, kept for tests and
the benchmark). The nets' loops and loading live in :mod:`medseg.brain.inference` (re-exported
here); by default two nets run and their region probabilities are averaged (the InputCascadeCNN
and a 3-D SegResNet, chosen on the real validation cases: docs/brain.md).

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

from medseg.brain.checks import partial_coverage_warning
from medseg.brain.inference import (  # noqa: F401 (re-exported: the names scripts and tests use)
    MODEL_PREFIX,
    TASK,
    BrainNet,
    load_brain_model,
    load_brain_nets,
    make_predictor,
    mean_regions,
    predict_in_brain,
    predict_patches,
    predict_volume,
)
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
from medseg.brain.orientation import to_training_orientation
from medseg.brain.postprocess import PostprocessConfig, postprocess  # noqa: F401 (re-exported)
from medseg.brain.preprocess import PreprocessConfig, preprocess
from medseg.brain.sampling import brain_boxes  # noqa: F401 (re-exported)
from medseg.brain.spacing import predict_in_brain_resampled
from medseg.brain.volume3d import regions_to_labels
from medseg.errors import InputError
from medseg.results import FAILED, ItemResult, RunResult

if TYPE_CHECKING:
    from medseg.engine.predictor import Predictor
    from medseg.scale.items import Mapper

log = logging.getLogger("medseg.brain")

DEMO_WEIGHTS = (
    "brain/brain_input_cascade_brats2018.safetensors"  # relative to the shipped demo weights folder
)
DEMO_SEGRESNET = "brain/brain_segresnet_brats2018.safetensors"
# the default: both nets, region probabilities averaged (validation Dice, docs/brain.md)
DEMO_ENSEMBLE = (DEMO_WEIGHTS, DEMO_SEGRESNET)
REGIONS = ("WT", "TC", "ET")  # whole tumour, tumour core, enhancing tumour
VOLUME_COLUMNS = ("case", "status", "WT_ml", "TC_ml", "ET_ml", "seconds", "output", "reason")


def region_masks(seg: np.ndarray) -> dict[str, np.ndarray]:
    """WT / TC / ET masks from internal (Havaei) labels."""
    return {"WT": seg > 0, "TC": np.isin(seg, (1, 3, 4)), "ET": seg == 4}


def region_volumes_ml(seg: np.ndarray, spacing: tuple[float, float, float]) -> dict[str, float]:
    voxel_ml = float(np.prod(spacing)) / 1000.0
    return {f"{k}_ml": round(float(m.sum()) * voxel_ml, 4) for k, m in region_masks(seg).items()}


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


def segment_with_nets(
    nets: list[BrainNet],
    stack_raw: np.ndarray,
    geo: Geometry,
    *,
    prep: PreprocessConfig,
    batch_size: int = 8,
    post: bool = True,
    native: bool = False,
    progress: bool = False,
    desc: str = "",
    tta: bool = False,
) -> np.ndarray:
    """Raw (4, z, y, x) intensities -> internal label map (z, y, x) from one or several nets.

    One slice net: the argmax of its five classes, exactly :func:`segment_array` without ``tta``;
    with ``tta``, of its softmax averaged over the test-time views. Several nets, or a 3-D net: the mean of the
    nets' TC / WT / ET probabilities (with ``tta`` each slice net's averaged over its views),
    thresholded at 0.5 into nested labels. Each net runs at its training spacing unless ``native``
    (probabilities brought back to the case's grid).
    """
    opts = dict(native=native, batch_size=batch_size, progress=progress, desc=desc, tta=tta)
    if len(nets) == 1 and not nets[0].is_volume and tta:
        norm, mask = preprocess(stack_raw, geo.spacing, prep)
        seg = nets[0].class_probabilities(norm, mask, geo.spacing, **opts).argmax(0).astype(np.uint8)
        seg[~mask] = 0
        return postprocess(seg, geo.spacing, mask=mask) if post else seg
    if len(nets) == 1 and not nets[0].is_volume:
        net = nets[0]
        zoom = net.zoom(geo.spacing, native=native)
        return segment_array(
            net.predictor,
            stack_raw,
            geo,
            arch=net.arch,
            prep=prep,
            batch_size=batch_size,
            post=post,
            progress=progress,
            desc=desc,
            zoom=zoom,  # type: ignore[arg-type]
        )
    norm, mask = preprocess(stack_raw, geo.spacing, prep)
    regions = mean_regions(nets, norm, mask, geo.spacing, **opts)
    seg = regions_to_labels(regions)
    del regions
    seg[~mask] = 0
    return postprocess(seg, geo.spacing, mask=mask) if post else seg


@dataclass
class SegmentConfig:
    """Everything ``brain-segment`` needs besides the inputs and ``--out``."""

    # one file, several (their region probabilities averaged), or None: the demo ensemble
    # (InputCascadeCNN + SegResNet, 9 real BraTS 2018 cases)
    weights: str | Path | list[str | Path] | tuple[str | Path, ...] | None = None
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
    # slice nets also run on the case rotated 180 degrees in-plane, views averaged (docs/brain.md)
    tta: bool = True


def _case_name(case: CaseFiles | Path) -> str:
    return case.name


def plan_outputs(cases: list[CaseFiles | Path], out: Path) -> tuple[list[dict[str, Path]], Path | None]:
    """Output files per case and the batch table (or None): ``--out`` is a file for one case (named
    ``.nii.gz`` ... and not an existing folder), else a folder."""
    from medseg.io.volume import VOLUME_OUTPUT_SUFFIXES, has_volume_suffix

    # an existing folder is a folder whatever its name ("results.nii.gz/"): never replaced by a file
    file_like = has_volume_suffix(out, VOLUME_OUTPUT_SUFFIXES) and not out.is_dir()
    single_file = len(cases) == 1 and file_like
    if len(cases) > 1 and file_like:
        raise InputError(
            f"--out names one label-map file but {len(cases)} cases were given; give a folder for a batch",
            path=out,
        )
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
    check_apart(out, [*_weights_list(cfg.weights), *(p for c in cases for p in _case_inputs(c))])
    for plan in plans:
        for path in plan.values():
            check_output(path, overwrite=cfg.overwrite)
    if table is not None:
        check_output(table, overwrite=cfg.overwrite)
    result = RunResult(command="brain-segment")
    found: list[CaseFiles | ItemResult] = []
    for case in cases:  # input pre-flight: cheap (file names only)
        try:
            found.append(case if isinstance(case, CaseFiles) else find_case_files(case, need_seg=False))
        except InputError as exc:
            if len(cases) == 1:
                raise
            found.append(ItemResult(name=case.name, status=FAILED, reason=error_reason(exc)))
    paths, is_demo = _resolve_brain_weights(cfg.weights)
    nets, prep = load_brain_nets(paths, device=cfg.device, amp=cfg.amp)
    for net in nets:
        trained_on = net.meta.training_data
        if is_demo:
            kind = (
                "synthetic data only" if "synthetic" in trained_on.lower() else "a few real BraTS 2018 cases"
            )
            result.warnings.append(f"demo weights {net.path.name}: trained on {kind}, not for clinical use")
        elif "synthetic" in trained_on.lower():
            result.warnings.append(
                f"{net.path.name} was trained on synthetic data only: a demo, not for clinical use"
            )
            log.warning(result.warnings[-1])
    if cfg.n4 is not None:
        prep.n4 = cfg.n4
    arch = "+".join(net.arch for net in nets)
    rows = []
    todo = [(i, c, p) for i, (c, p) in enumerate(zip(found, plans), start=1) if isinstance(c, CaseFiles)]
    run_one = functools.partial(
        _segment_item, nets, prep=prep, cfg=cfg, total=len(found), strict=len(cases) == 1
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
        "weights": str(paths[0]) if len(paths) == 1 else [str(p) for p in paths],
        "demo_weights": is_demo,
        "arch": arch,
        "ensemble": "mean of the nets' TC/WT/ET probabilities" if len(nets) > 1 else None,
        "labels": cfg.labels,
        **nets[0].predictor.describe(),
        "resample_to": cfg.resample_to,
        "batch_size": cfg.batch_size,
        "n4": prep.n4,
        "postprocess": cfg.postprocess,
        "train_spacing_mm": [list(n.trained) if n.trained else None for n in nets]
        if len(nets) > 1
        else (list(nets[0].trained) if nets[0].trained else None),
        "native_spacing": cfg.native_spacing,
        "tta": "slice nets averaged with the case rotated 180 degrees in-plane"
        if cfg.tta and any(not n.is_volume for n in nets)
        else None,
    }
    return result


def _weights_list(weights) -> list[str | Path]:
    if weights is None:
        return []
    return [weights] if isinstance(weights, (str, Path)) else list(weights)


def _resolve_brain_weights(weights) -> tuple[list[Path], bool]:
    """The weights files to run and whether they are the demo ones (None: the demo ensemble)."""
    from medseg.engine.weights import resolve_weights

    given = _weights_list(weights)
    if given:
        return [resolve_weights(w, demo=DEMO_WEIGHTS)[0] for w in given], False
    return [resolve_weights(None, demo=d)[0] for d in DEMO_ENSEMBLE], True


def _segment_item(
    nets: list[BrainNet],
    item: tuple[int, CaseFiles, dict[str, Path]],
    *,
    prep: PreprocessConfig,
    cfg: SegmentConfig,
    total: int,
    strict: bool,
) -> ItemResult:
    """:func:`_segment_one` for one (index, case, plan) item: what a mapper runs, here or on Ray."""
    i, case, plan = item
    desc = f"{case.name} ({i}/{total})"
    return _segment_one(nets, case, plan, prep=prep, cfg=cfg, desc=desc, strict=strict)


def _segment_one(
    nets: list[BrainNet],
    case: CaseFiles,
    plan: dict[str, Path],
    *,
    prep: PreprocessConfig,
    cfg: SegmentConfig,
    desc: str,
    strict: bool,
) -> ItemResult:
    """One case -> label map and volumes; input and write problems become a failed item (raised if ``strict``)."""
    t0 = time.perf_counter()
    warnings: list[str] = []
    try:
        stack, input_geo = load_case(case, resample_to_modality=cfg.resample_to, warnings=warnings)
        stripped = skull_strip_warning(stack, name=case.name)
        if stripped:
            log.warning(stripped)
            warnings.append(stripped)
        # sagittal/coronal or flipped storage: the nets see the axes they were trained on
        stack, geo, to_input_grid = to_training_orientation(stack, input_geo)
        partial = partial_coverage_warning(stack, geo.spacing, name=case.name)
        if partial:
            log.warning(partial)
            warnings.append(partial)
        first = nets[0]
        zoom = first.zoom(geo.spacing, native=cfg.native_spacing)
        resampled = any(n.zoom(geo.spacing, native=cfg.native_spacing) is not None for n in nets)
        run_yx = [round(float(s), 4) for s in ((first.trained or ())[-2:] if zoom else geo.spacing[1:])]
        log.info(
            "%s: in-plane spacing %.3g x %.3g mm; nets run at %s",
            case.name,
            geo.spacing[1],
            geo.spacing[2],
            "their training spacing (probabilities resampled back)"
            if resampled
            else "the case's own spacing"
            + (" (--native-spacing)" if cfg.native_spacing and first.trained else ""),
        )
        seg = segment_with_nets(
            nets,
            stack,
            geo,
            prep=prep,
            batch_size=cfg.batch_size,
            post=cfg.postprocess,
            native=cfg.native_spacing,
            progress=cfg.progress,
            desc=desc,
            tta=cfg.tta,
        )
        seg = to_input_grid(seg)
        volumes = region_volumes_ml(seg, input_geo.spacing)
        record = {
            "case": case.name,
            "status": "ok",
            **volumes,
            "seconds": round(time.perf_counter() - t0, 3),
            "output": str(plan["seg"]),
            "labels": cfg.labels,
            "arch": "+".join(n.arch for n in nets),
            "inference_spacing_mm": run_yx,
            "resampled_to_training_spacing": resampled,
        }
        _write_case(plan, seg, input_geo, record, cfg.labels)
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
            "resampled_to_training_spacing": resampled,
        },
        warnings=warnings,
    )
