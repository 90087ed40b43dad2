"""Whole-slide C4d scoring commands: slide-score, slide-prepare, slide-train, slide-eval."""

from __future__ import annotations

from pathlib import Path

import click
from medseg_cli.options import amp_option, batch_size_option, common_options, emit, overwrite_option

SAMPLE = "sample_data/pathology"


def _score_human(s: dict) -> str:
    lines = []
    for r in s["slides"]:
        if r.get("status") == "failed":
            lines.append(f"{r['slide']}: FAILED: {r.get('reason')}")
        else:
            lines.append(f"{r['slide']}: {r.get('banff_category')}  C4d+ {r.get('c4d_pos')}  C4d- {r.get('c4d_neg')}  "
                         f"({r.get('percent_positive')} %)  {r.get('status')}")
    lines.append(f"{s['ok']} scored, {s['failed']} failed, {s['skipped']} skipped -> {s['csv']}")
    return "\n".join(lines)


@click.command("slide-score", epilog=f"""\b
Examples:
  medseg slide-score {SAMPLE}/sample_slide.tiff --out results/        # demo detector
  medseg slide-score slides/ batch.csv --weights model.safetensors --out results/ --resume
  medseg slide-score scan.svs --weights model.safetensors --out results/ --slide-mpp 0.25 --json
""")
@click.argument("slides", nargs=-1, required=True)
@click.option("--out", "out", type=click.Path(path_type=Path), required=True, help="Output folder of the batch.")
@click.option("--weights", type=click.Path(path_type=Path), default=None,
              help="Detector weights (.safetensors); default: the demo detector (synthetic data, not clinical).")
@click.option("--mpp", "target_mpp", type=float, default=0.5, show_default=True,
              help="Target microns per pixel (0.5 ~ one 400x field per 1024 px tile).")
@click.option("--slide-mpp", type=float, default=None, help="Level-0 microns per pixel when the slide lacks it.")
@click.option("--tile", type=click.IntRange(16), default=1024, show_default=True, help="Tile size at --mpp.")
@click.option("--overlap", type=click.IntRange(0), default=160, show_default=True,
              help="Tile overlap (px at --mpp); >= an enlarged PTC box so border PTCs are seen whole.")
@batch_size_option(4)
@click.option("--workers", type=click.IntRange(1), default=2, show_default=True, help="Tile reader threads.")
@click.option("--min-score", type=click.FloatRange(0, 1), default=0.5, show_default=True)
@click.option("--feasibility", default="default", show_default=True,
              help="Feasible-ROI filter: default (heuristic), none, or module:function.")
@click.option("--resume", is_flag=True, help="Skip slides whose outputs are complete.")
@click.option("--no-report", is_flag=True, help="Do not write report.html.")
@overwrite_option
@amp_option
@common_options
def slide_score(slides, out, weights, target_mpp, slide_mpp, tile, overlap, batch_size, workers, min_score,
                feasibility, resume, no_report, overwrite, amp, device, quiet, as_json):
    """Score C4d in peritubular capillaries of one or many whole slides.

    SLIDES are slide files, folders of slides, or CSV lists (column path). Per slide: summary.json,
    detections.geojson (QuPath), overlay.png; per batch: scores.csv and report.html. A slide that
    cannot be read is recorded as failed and the batch goes on (exit code 5).
    """
    import logging

    from medseg.errors import BatchFailures, ModelError
    from medseg.pathology.detector import DEMO_WEIGHTS
    from medseg.pathology.score import ScoreConfig, score_slides

    if weights is None:
        if not DEMO_WEIGHTS.is_file():
            raise ModelError("no --weights given and the demo detector is not in this installation", path=DEMO_WEIGHTS)
        logging.getLogger("medseg.pathology").warning(
            "using the demo detector (trained on synthetic slides only, not for clinical use)")
        weights = DEMO_WEIGHTS
    cfg = ScoreConfig(target_mpp=target_mpp, tile=tile, overlap=overlap, batch_size=batch_size, workers=workers,
                      min_score=min_score, slide_mpp=slide_mpp, feasibility=feasibility, device=device, amp=amp)
    summary = score_slides(slides, out, weights=weights, config=cfg, resume=resume, overwrite=overwrite,
                           report=not no_report)
    emit(summary, as_json=as_json, human=_score_human)
    if summary["failed"]:
        raise BatchFailures(f"{summary['failed']} of {len(summary['slides'])} slides failed (see {summary['csv']})")


@click.command("slide-prepare", epilog="""\b
Examples:
  medseg slide-prepare slide1.tiff slide2.svs --out dataset/      # slideN.geojson next to each slide
  medseg slide-prepare slide.svs --annotations qupath/ --out dataset/ --margin-pos 50 --margin-neg 40
  medseg slide-prepare --masks tiles/ --out dataset/              # X.png + X_mask.png (1 C4d+, 2 C4d-)
""")
@click.argument("slides", nargs=-1)
@click.option("--out", type=click.Path(path_type=Path), required=True)
@click.option("--annotations", type=click.Path(path_type=Path), default=None,
              help="GeoJSON file or folder (<slide>.geojson); default: next to each slide.")
@click.option("--masks", type=click.Path(path_type=Path), default=None, help="Folder of tiles with label masks.")
@click.option("--margin-pos", type=click.IntRange(0), default=50, show_default=True, help="C4d+ mask enlargement (px).")
@click.option("--margin-neg", type=click.IntRange(0), default=40, show_default=True, help="C4d- mask enlargement (px).")
@click.option("--mpp", "target_mpp", type=float, default=0.5, show_default=True)
@click.option("--slide-mpp", type=float, default=None)
@click.option("--tile", type=click.IntRange(16), default=512, show_default=True)
@click.option("--overlap", type=click.IntRange(0), default=0, show_default=True)
@overwrite_option
@common_options
def slide_prepare(slides, out, annotations, masks, margin_pos, margin_neg, target_mpp, slide_mpp, tile, overlap,
                  overwrite, device, quiet, as_json):
    """Turn C4d+/C4d- PTC annotations into detector training tiles and enlarged, clipped boxes."""
    from medseg.errors import InputError
    from medseg.pathology.prepare import PrepareConfig, prepare_masks, prepare_slides

    cfg = PrepareConfig(margins={"C4d+": margin_pos, "C4d-": margin_neg}, target_mpp=target_mpp, tile=tile,
                        overlap=overlap, slide_mpp=slide_mpp)
    if masks is not None:
        summary = prepare_masks(masks, out, config=cfg, overwrite=overwrite)
    else:
        if not slides:
            raise InputError("give SLIDES (with GeoJSON annotations) or --masks FOLDER")
        pairs = []
        for s in map(Path, slides):
            stem = s.name.split(".")[0]
            ann = (annotations if annotations and annotations.is_file()
                   else (annotations or s.parent) / f"{stem}.geojson")
            if not ann.is_file():
                raise InputError(f"no annotations {ann}", path=s)
            pairs.append((s, ann))
        summary = prepare_slides(pairs, out, config=cfg, overwrite=overwrite)
    emit(summary, as_json=as_json,
         human=lambda s: f"{s['images']} tiles, boxes {s['boxes']} (margins {s['margins']}) -> {s['out']}")


@click.command("slide-train", epilog="""\b
Examples:
  medseg slide-train dataset/ --out run/ --arch light --epochs 20
  medseg slide-train dataset/ --out run/ --resume
  medseg slide-train dataset/ --out run_r50/ --arch resnet50-fpn --device cuda --batch-size 8
""")
@click.argument("dataset", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), required=True)
@click.option("--arch", type=click.Choice(["light", "resnet50-fpn"]), default="light", show_default=True)
@click.option("--epochs", type=click.IntRange(1), default=20, show_default=True)
@batch_size_option(4)
@click.option("--lr", type=float, default=2e-3, show_default=True)
@click.option("--val-fraction", type=click.FloatRange(0, 0.9), default=0.15, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--max-minutes", type=float, default=None, help="Stop (checkpointed) after this long.")
@click.option("--resume", is_flag=True, help="Continue from out/train_state.pt.")
@overwrite_option
@amp_option
@common_options
def slide_train(dataset, out, arch, epochs, batch_size, lr, val_fraction, seed, max_minutes, resume, overwrite,
                amp, device, quiet, as_json):
    """Train the Faster R-CNN PTC detector on a slide-prepare dataset (checkpoints, resume, validation)."""
    from medseg.pathology.detector import DetectorConfig, resnet50_config
    from medseg.pathology.train import TrainConfig, train

    det = DetectorConfig() if arch == "light" else resnet50_config()
    cfg = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, val_fraction=val_fraction, seed=seed,
                      device=device, amp=amp, max_minutes=max_minutes, detector=det)
    summary = train(dataset, out, config=cfg, resume=resume, overwrite=overwrite)
    emit(summary, as_json=as_json, human=lambda s: f"best validation F1 {s['best_val']:.3f} -> {s['weights']}")


@click.command("slide-eval", epilog="""\b
Examples:
  medseg slide-eval results/ truth/sample_slide.geojson
  medseg slide-eval results/ truth/*.geojson --json
""")
@click.argument("results", type=click.Path(path_type=Path))
@click.argument("truth", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--iou", type=click.FloatRange(0.05, 0.95), default=0.5, show_default=True)
@common_options
def slide_eval(results, truth, iou, device, quiet, as_json):
    """Precision, recall, F1 per class at IoU 0.5 and Banff category agreement against annotations.

    TRUTH files are GeoJSON named like the slides (<slide>.geojson); detection metrics count truth
    PTCs inside the scored tiles, category agreement uses all of them.
    """
    from medseg.pathology.evaluate import evaluate_results

    summary = evaluate_results(results, list(truth), iou=iou)

    def human(s: dict) -> str:
        o = s["overall"]
        lines = [f"{c}: precision {o[f'{c}_precision']:.3f} recall {o[f'{c}_recall']:.3f} F1 {o[f'{c}_f1']:.3f}"
                 for c in ("C4d+", "C4d-")]
        lines += [f"{r['slide']}: truth {r['truth_category']} predicted {r['predicted_category']}" for r in s["slides"]]
        lines.append(f"category agreement {o['category_agreement']:.0%} of {o['slides']} slides")
        return "\n".join(lines)

    emit(summary, as_json=as_json, human=human)


commands = [slide_score, slide_prepare, slide_train, slide_eval]
