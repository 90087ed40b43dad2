"""Whole-slide C4d scoring commands: slide-score, slide-prepare, slide-train, slide-eval."""

from __future__ import annotations

from pathlib import Path

import click
from medseg_cli._types import POSITIVE_FLOAT, FiniteFloatRange
from medseg_cli.options import (
    WEIGHTS_TYPE,
    amp_option,
    batch_size_option,
    common_options,
    finish,
    output_options,
    overwrite_option,
    ray_options,
    runtime_option,
    train_options,
    val_fraction_option,
    weights_option,
)

from medseg.pathology.labels import DEFAULT_MARGINS, DEFAULT_MIN_PTCS, NEGATIVE, POSITIVE

SAMPLE = "sample_data/pathology"
# medseg.pathology.detector.ARCHS, spelt out so that --help imports no model code (a test checks)
DETECTOR_ARCHS = ["light", "resnet50-fpn", "maskrcnn", "yolov3", "cornernet"]


def _score_human(run) -> str:
    from medseg.pathology.score import slide_text

    lines = []
    for i in run.items:
        if i.status == "failed":
            continue
        if i.metrics.get("status") == "qc_failed":
            lines.append(f"{i.name}: not scored: {i.reason}")
        else:
            lines.append(
                f"{i.name}: {slide_text(i.metrics)}"
                + (" (kept from an earlier run)" if i.status == "skipped" else "")
            )
    c = run.counts
    qc = sum(i.metrics.get("status") == "qc_failed" for i in run.items)
    lines.append(
        f"{c['ok']} slide(s) scored, {c['failed']} failed, {qc} not scored (stain QC), "
        f"{c['skipped'] - qc} kept from an earlier run; table: {run.outputs.get('table')}"
        + (f", report: {run.outputs['report']}" if run.outputs.get("report") else "")
    )
    return "\n".join(lines)


def _reader_option(func):
    """--reader for every command that opens slides (names as in medseg.pathology.readers.READERS)."""
    return click.option(
        "--reader",
        type=click.Choice(["auto", "openslide", "tifffile", "dicom"]),
        default="auto",
        show_default=True,
        help="Slide reader backend (auto: OpenSlide, then tifffile, then the DICOM readers).",
    )(func)


def _check_slide_mpp(slide_mpp: float | None, target_mpp: float) -> None:
    """--slide-mpp is the scale of every slide: one no slide could be scored at is a usage error
    before any work (it was a failed item per slide, exit 5, with the ratio written out in 300 digits)."""
    from medseg.pathology.slide import MAX_UPSAMPLE, MIN_PLAUSIBLE_MPP

    if slide_mpp is None:
        return
    if slide_mpp < MIN_PLAUSIBLE_MPP:
        why = f"finer than any slide scanner (about {MIN_PLAUSIBLE_MPP:g} um/px at most)"
    elif slide_mpp > target_mpp * MAX_UPSAMPLE:
        why = f"more than {MAX_UPSAMPLE:g}x coarser than --mpp {target_mpp:g}: capillaries would be blurred"
    else:
        return
    raise click.BadParameter(f"{slide_mpp:g} um/px is {why}", param_hint="'--slide-mpp'")


@click.command(
    "slide-score",
    epilog=f"""\b
Examples:
  medseg slide-score {SAMPLE}/sample_slide.tiff --out results/        # demo detector
  medseg slide-score slides/ batch.csv --weights model.safetensors --out results/ --resume
  medseg slide-score scan.svs --weights model.safetensors --out results/ --slide-mpp 0.25 --json
  medseg slide-score {SAMPLE}/sample_slide.tiff --arch yolov3 --out results/  # demo YOLOv3
""",
)
@click.argument("slides", nargs=-1, required=True)
@click.option(
    "--out", "out", type=click.Path(path_type=Path), required=True, help="Output folder of the batch."
)
@weights_option(
    "Detector weights (.safetensors); default: the demo detector (synthetic slides, not clinical)."
)
@click.option(
    "--arch",
    type=click.Choice(DETECTOR_ARCHS),
    default=None,
    help="Detector architecture: without --weights, its demo weights (light Faster R-CNN, maskrcnn, "
    "yolov3, cornernet ship; not resnet50-fpn); with --weights, they must hold it (refused otherwise). Default: what --weights hold.",
)
@click.option(
    "--mpp",
    "target_mpp",
    type=POSITIVE_FLOAT,
    default=0.5,
    show_default=True,
    help="Target microns per pixel (0.5 ~ one 400x field per 1024 px tile); must be the resolution "
    "the detector was trained at (stored in its weights; refused otherwise).",
)
@click.option(
    "--slide-mpp",
    type=POSITIVE_FLOAT,
    default=None,
    help="Level-0 microns per pixel when the slide lacks it or states a wrong one (a finite number > 0; "
    "a level 0 more than 1.5x coarser than --mpp is refused).",
)
@click.option(
    "--tile",
    type=click.IntRange(16, 4096),
    default=1024,
    show_default=True,
    help="Tile size at --mpp (at most 4096: each tile goes through the detector whole).",
)
@click.option(
    "--overlap",
    type=click.IntRange(0),
    default=160,
    show_default=True,
    help="Tile overlap (px at --mpp); >= an enlarged PTC box so border PTCs are seen whole.",
)
@batch_size_option(4, "Tiles per forward pass.")
@click.option("--workers", type=click.IntRange(1), default=2, show_default=True, help="Tile reader threads.")
@click.option(
    "--min-score",
    type=FiniteFloatRange(0, 1),
    default=0.5,
    show_default=True,
    help="Smallest detector confidence for a PTC to count.",
)
@click.option(
    "--feasibility",
    default="default",
    show_default=True,
    help="Feasible-ROI filter: default (heuristic), none, or module:function.",
)
@_reader_option
@click.option(
    "--min-ptcs",
    type=click.IntRange(1),
    default=DEFAULT_MIN_PTCS,
    show_default=True,
    help="PTCs a slide needs for a Banff category; fewer: 'not assessable (n PTCs)', counts kept.",
)
@click.option(
    "--skip-stain-qc",
    is_flag=True,
    help="Score slides that fail the stain QC (not brightfield DAB IHC) anyway; QC is still recorded.",
)
@click.option(
    "--cascade",
    is_flag=True,
    help="IDK cascade: a tiny tile gate skips the detector on tiles it is sure hold no PTC.",
)
@click.option(
    "--cascade-weights",
    type=WEIGHTS_TYPE,
    default=None,
    help="Gate weights for --cascade; default: the demo gate (synthetic tiles, not clinical).",
)
@click.option("--resume", is_flag=True, help="Keep slides already scored in --out; score the others.")
@click.option("--no-report", is_flag=True, help="Do not write report.html.")
@overwrite_option
@ray_options
@runtime_option
@amp_option
@common_options
def slide_score(
    slides,
    out,
    weights,
    arch,
    target_mpp,
    slide_mpp,
    tile,
    overlap,
    batch_size,
    workers,
    min_score,
    feasibility,
    reader,
    min_ptcs,
    skip_stain_qc,
    cascade,
    cascade_weights,
    resume,
    no_report,
    overwrite,
    ray_address,
    ray_actors,
    priority,
    deadline,
    amp,
    device,
    quiet,
    as_json,
):
    """Score C4d in peritubular capillaries of one or many whole slides.

    SLIDES are slide files, folders of slides, or CSV lists (column path). Per slide: summary.json,
    detections.geojson (QuPath), overlay.png; per batch: scores.csv and report.html (they describe
    this run; with --resume also the slides kept). Stain QC comes first: a slide that is not a
    brightfield DAB IHC (H&E, fluorescence, no tissue) is not scored (status qc_failed, with the
    reason; exit code 0). A slide that cannot be read is recorded as failed and the batch goes on
    (exit code 5). With --cascade the tiles a small gate is sure hold no PTC skip the detector
    (counted per slide in cascade_tiles_skipped).
    """
    from medseg.pathology.batch import score_slides
    from medseg.pathology.detector import weights_for_arch
    from medseg.pathology.score import ScoreConfig

    _check_slide_mpp(slide_mpp, target_mpp)
    cfg = ScoreConfig(
        target_mpp=target_mpp,
        tile=tile,
        overlap=overlap,
        batch_size=batch_size,
        workers=workers,
        min_score=min_score,
        slide_mpp=slide_mpp,
        feasibility=feasibility,
        device=device,
        amp=amp,
        reader=reader,
        min_ptcs=min_ptcs,
        skip_stain_qc=skip_stain_qc,
    )
    detector, demo = None, False
    weights, demo = weights_for_arch(arch, weights)  # --arch without --weights: its demo weights
    if cascade or cascade_weights is not None:
        from medseg.pathology.cascade import load_cascade

        cfg.check()  # bad options before loading anything
        detector, cascade_demo = load_cascade(weights, cascade_weights, device=device, amp=amp)
        demo = demo or cascade_demo
    if ray_address is not None:
        from medseg.scale.slides import score_slides_cli

        result = score_slides_cli(
            slides, out, cfg, ray_address, actors=ray_actors, priority=priority, deadline=deadline,
            weights=weights, cascade=detector is not None, resume=resume, overwrite=overwrite,
            report=not no_report, progress=not quiet,
        )  # fmt: skip
    else:
        if ray_actors is not None or priority or deadline is not None:
            from medseg.errors import InputError

            raise InputError("--ray-actors, --priority and --deadline need --ray")
        result = score_slides(
            slides,
            out,
            cfg,
            weights=weights,
            detector=detector,
            resume=resume,
            overwrite=overwrite,
            report=not no_report,
            progress=not quiet,
        )
    if demo:  # score_slides only knows that it was handed a loaded detector
        result.summary["demo_weights"] = True
        result.warnings.append("demo weights (trained on synthetic slides only, not for clinical use)")
    finish(result, as_json=as_json, human=_score_human)


@click.command(
    "slide-prepare",
    epilog=f"""\b
Examples:
  medseg slide-prepare slide1.tiff slide2.svs --out dataset/      # slideN.geojson next to each slide
  medseg slide-prepare slide.svs --annotations qupath/ --out dataset/ --margin-pos {DEFAULT_MARGINS[POSITIVE]}
  medseg slide-prepare --masks tiles/ --out dataset/              # X.png + X_mask.png (1 C4d+, 2 C4d-)
  medseg slide-prepare s.svs --annotations pts.geojson --class-map Positive=C4d+,Negative=C4d- --out ds/
""",
)
@click.argument("slides", nargs=-1)
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Dataset folder to create.")
@click.option(
    "--annotations",
    type=click.Path(path_type=Path),
    default=None,
    help="GeoJSON file or folder (<slide>.geojson); default: next to each slide.",
)
@click.option(
    "--masks", type=click.Path(path_type=Path), default=None, help="Folder of tiles with label masks."
)
@click.option(
    "--margin-pos",
    type=click.IntRange(0),
    default=DEFAULT_MARGINS[POSITIVE],
    show_default=True,
    help=f"{POSITIVE} mask enlargement (px at --mpp).",
)
@click.option(
    "--margin-neg",
    type=click.IntRange(0),
    default=DEFAULT_MARGINS[NEGATIVE],
    show_default=True,
    help=f"{NEGATIVE} mask enlargement (px at --mpp).",
)
@click.option(
    "--mpp",
    "target_mpp",
    type=POSITIVE_FLOAT,
    default=0.5,
    show_default=True,
    help="Microns per pixel of the tiles (the resolution slide-score will run the detector at).",
)
@click.option(
    "--slide-mpp",
    type=POSITIVE_FLOAT,
    default=None,
    help="Level-0 microns per pixel when the slide lacks it or states a wrong one.",
)
@click.option(
    "--tile", type=click.IntRange(16, 4096), default=512, show_default=True, help="Tile size (px at --mpp)."
)
@click.option(
    "--overlap", type=click.IntRange(0), default=0, show_default=True, help="Tile overlap (px at --mpp)."
)
@click.option(
    "--class-map",
    default=None,
    help=f"Your annotation class names, e.g. 'Positive={POSITIVE},Negative={NEGATIVE}' (any case).",
)
@_reader_option
@click.option(
    "--point-size",
    type=POSITIVE_FLOAT,
    default=15.0,
    show_default=True,
    help="Diameter (um) of the PTC box made from a point annotation (PTC centre), before the margins.",
)
@overwrite_option
@output_options
def slide_prepare(
    slides,
    out,
    annotations,
    masks,
    margin_pos,
    margin_neg,
    target_mpp,
    slide_mpp,
    tile,
    overlap,
    class_map,
    reader,
    point_size,
    overwrite,
    quiet,
    as_json,
):
    """Turn C4d+/C4d- PTC annotations into detector training tiles and enlarged, clipped boxes.

    Annotations are GeoJSON (QuPath export): polygons (PTC outlines) or points (PTC centres, made
    into boxes of --point-size um), classified C4d+/C4d- (also Positive/Negative, or --class-map).
    """
    from medseg.pathology.labels import counts_text, margins_text
    from medseg.pathology.prepare import PrepareConfig, parse_class_map, prepare_dataset

    cfg = PrepareConfig(
        margins={POSITIVE: margin_pos, NEGATIVE: margin_neg},
        target_mpp=target_mpp,
        tile=tile,
        overlap=overlap,
        slide_mpp=slide_mpp,
        point_diameter_um=point_size,
        class_map=parse_class_map(class_map),
        reader=reader,
    )
    result = prepare_dataset(
        slides, out, cfg, annotations=annotations, masks=masks, overwrite=overwrite, progress=not quiet
    )
    finish(
        result,
        as_json=as_json,
        human=lambda r: (
            f"{r.summary['images']} tiles with {counts_text(r.summary['boxes'], 'boxes')} "
            f"(margins {margins_text(r.summary['margins'])}) -> {r.summary['out']}"
            if r.outputs
            else "nothing written"
        ),
    )


def _train_human(r) -> str:
    best = "n/a" if r.best_metric != r.best_metric else f"{r.best_metric:.3f}"
    return (
        f"best validation F1 {best} at epoch {r.best_epoch} of {r.epochs} (on {r.extra.get('validation')}; "
        f"{r.stopped}) -> {r.best_weights}"
    )


@click.command(
    "slide-train",
    epilog="""\b
Examples:
  medseg slide-train dataset/ --out run/ --arch light --epochs 20
  medseg slide-train dataset/ --out run/ --epochs 30 --resume
  medseg slide-train dataset/ --out run_r50/ --arch resnet50-fpn --device cuda --batch-size 8
  medseg slide-train dataset/ --out run_mask/ --arch maskrcnn --init-weights run/best.safetensors
  medseg slide-train dataset/ --out run_yolo/ --arch yolov3 --epochs 30   # anchors: k-means on the boxes
  medseg slide-train dataset/ --out run_corner/ --arch cornernet --epochs 30
""",
)
@click.argument("dataset", type=click.Path(path_type=Path))
@click.option(
    "--out", type=click.Path(path_type=Path), required=True, help="Training folder (best/last weights)."
)
@click.option(
    "--arch",
    type=click.Choice(DETECTOR_ARCHS),
    default="light",
    show_default=True,
    help="light / resnet50-fpn Faster R-CNN (boxes); maskrcnn: the light one + PTC outlines (Mask R-CNN); "
    "yolov3 (one-stage, k-means anchors) or cornernet (anchor-free corners). --init-weights must be "
    "of the same family (light and maskrcnn share theirs); other combinations are refused.",
)
@click.option(
    "--init-weights",
    type=WEIGHTS_TYPE,  # a missing file is a weights problem (exit 4), as for every --weights
    default=None,
    help="Start from these detector weights (matching layers; e.g. light weights for --arch maskrcnn).",
)
@click.option("--epochs", type=click.IntRange(1), default=20, show_default=True, help="Training epochs.")
@batch_size_option(4, "Tiles per training step.", most=1024)
@click.option("--lr", type=POSITIVE_FLOAT, default=2e-3, show_default=True, help="AdamW learning rate.")
@val_fraction_option(0.15, "whole slides when the dataset has two or more, else tiles")
@train_options
@overwrite_option
@amp_option
@common_options
def slide_train(
    dataset,
    out,
    arch,
    init_weights,
    epochs,
    batch_size,
    lr,
    val_fraction,
    max_minutes,
    seed,
    resume,
    overwrite,
    amp,
    device,
    quiet,
    as_json,
):
    """Train the PTC detector (Faster/Mask R-CNN, YOLOv3, CornerNet) on a slide-prepare dataset (best/last weights, resume)."""
    from medseg.pathology.detector import config_for
    from medseg.pathology.train import DetectorTrainConfig, train_detector

    det = config_for(arch)
    cfg = DetectorTrainConfig(
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        val_fraction=val_fraction,
        seed=seed,
        device=device,
        amp=amp,
        max_minutes=max_minutes,
        detector=det,
        init_weights=str(init_weights) if init_weights else None,
    )
    result = train_detector(dataset, out, cfg, resume=resume, overwrite=overwrite, progress=not quiet)
    finish(result, as_json=as_json, human=_train_human)


def _eval_human(run) -> str:
    o = run.summary["overall"]
    lines = [
        f"{c}: precision {o[f'{c}_precision']:.3f}, recall {o[f'{c}_recall']:.3f}, F1 {o[f'{c}_f1']:.3f}"
        for c in (POSITIVE, NEGATIVE)
    ]
    lines += [
        f"{i.name}: truth {i.metrics['truth_category']}, predicted {i.metrics['predicted_category']}"
        for i in run.items
        if i.ok
    ]
    lines += [f"{i.name}: {i.reason}" for i in run.items if i.status == "skipped"]
    if o["slides"]:
        lines.append(f"category agreement {o['category_agreement']:.0%} of {o['slides']} slide(s)")
    return "\n".join(lines)


@click.command(
    "slide-eval",
    epilog="""\b
Examples:
  medseg slide-eval results/ truth/sample_slide.geojson
  medseg slide-eval results/ truth/*.geojson --json
  medseg slide-eval results/ truth/                # every .geojson in the folder
  medseg slide-eval results/ points/ --class-map Positive=C4d+,Negative=C4d- --point-size 15
""",
)
@click.argument("results", type=click.Path(path_type=Path))
@click.argument("truth", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--iou",
    type=FiniteFloatRange(0.05, 0.95),
    default=0.5,
    show_default=True,
    help="Box IoU for a detection to match a truth PTC.",
)
@click.option(
    "--point-size",
    type=POSITIVE_FLOAT,
    default=15.0,
    show_default=True,
    help="Diameter (um) of the truth PTC box made from a point annotation (as in slide-prepare).",
)
@click.option(
    "--class-map",
    default=None,
    help=f"Your truth class names, e.g. 'Positive={POSITIVE},Negative={NEGATIVE}' (any case).",
)
@output_options
def slide_eval(results, truth, iou, point_size, class_map, quiet, as_json):
    """Precision, recall, F1 per class at IoU 0.5 and Banff category agreement against annotations.

    TRUTH files (or folders of them) are GeoJSON named like the slides (<slide>.geojson or
    <slide>.svs.geojson); detection metrics count truth PTCs inside the scored tiles, category
    agreement uses all of them.
    """
    from medseg.pathology.evaluate import EvalConfig, evaluate_results
    from medseg.pathology.prepare import parse_class_map

    cfg = EvalConfig(iou=iou, point_diameter_um=point_size, class_map=parse_class_map(class_map))
    finish(evaluate_results(results, list(truth), cfg), as_json=as_json, human=_eval_human)


commands = [slide_score, slide_prepare, slide_train, slide_eval]
