"""Regenerate the pathology sample data and demo detector.

    python scripts/make_sample_data_pathology.py            # slide + weights (10-20 min on 1 CPU core)
    python scripts/make_sample_data_pathology.py --slide-only
    python scripts/make_sample_data_pathology.py --weights-only --epochs 1 --weights-out /tmp/try.safetensors

Writes ``sample_data/pathology/sample_slide.{tiff,geojson}`` and the demo weights shipped inside the
package, ``medseg/weights/pathology/c4d_light_demo.safetensors`` (the ``best.safetensors`` of a
``slide-train`` run through the engine trainer, validated on a held-out slide). The weights are
trained on synthetic slides (seeds 1000-1005) only: demo use, not for clinical use. Tests score
slides from other seeds, which the weights never saw.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "sample_data" / "pathology"
WEIGHTS_OUT = (
    ROOT / "medseg" / "weights" / "pathology" / "c4d_light_demo.safetensors"
)  # = demo_weights_path(DEMO_WEIGHTS)
TRAIN_SEEDS = (1000, 1001, 1002, 1003, 1004, 1005)
TRAIN_FRACTIONS = (0.05, 0.2, 0.35, 0.5, 0.7, 0.9)
SAMPLE_SEED = 7


def make_slide() -> None:
    from medseg.synthetic.slides import SlideSpec, write_slide

    OUT.mkdir(parents=True, exist_ok=True)
    write_slide(
        OUT / "sample_slide.tiff",
        SlideSpec(width=4096, height=3072, seed=SAMPLE_SEED, positive_fraction=0.3),
        geojson=OUT / "sample_slide.geojson",
    )


def make_weights(epochs: int, work: Path, weights_out: Path) -> None:
    import torch

    from medseg.pathology.prepare import PrepareConfig, prepare_dataset
    from medseg.pathology.train import DetectorTrainConfig, train_detector
    from medseg.synthetic.slides import SlideSpec, write_slide

    torch.set_num_threads(1)
    slides = []
    for seed, frac in zip(TRAIN_SEEDS, TRAIN_FRACTIONS):
        slide, ann = work / f"train_{seed}.tiff", work / f"train_{seed}.geojson"
        write_slide(slide, SlideSpec(width=3072, height=3072, seed=seed, positive_fraction=frac), geojson=ann)
        slides.append(slide)
    prepared = prepare_dataset(slides, work / "dataset", PrepareConfig(tile=512, overlap=192), overwrite=True)
    if prepared.exit_code:
        raise SystemExit("; ".join(prepared.failure_lines()))
    result = train_detector(
        work / "dataset",
        work / "run",
        DetectorTrainConfig(
            epochs=epochs,
            batch_size=4,
            lr=3e-3,
            seed=0,
            device="cpu",
            training_data=f"synthetic C4d slides, seeds {', '.join(map(str, TRAIN_SEEDS))} (medseg.synthetic.slides); "
            "not for clinical use",
        ),
        overwrite=True,
    )
    weights_out.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(result.best_weights, weights_out)
    logging.getLogger("medseg").info(
        "weights: best validation F1 %.3f (epoch %d, %s) in %.0f s -> %s",
        result.best_metric,
        result.best_epoch,
        result.extra["validation"],
        result.seconds,
        weights_out,
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--slide-only", action="store_true")
    parser.add_argument("--weights-only", action="store_true", help="do not rewrite the sample slide")
    parser.add_argument("--epochs", type=int, default=14)
    parser.add_argument("--work", type=Path, default=None, help="keep intermediate files here")
    parser.add_argument("--weights-out", type=Path, default=WEIGHTS_OUT, help="where the demo weights go")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if not args.weights_only:
        make_slide()
    if not args.slide_only:
        if args.work:
            args.work.mkdir(parents=True, exist_ok=True)
            make_weights(args.epochs, args.work, args.weights_out)
        else:
            with tempfile.TemporaryDirectory() as tmp:
                make_weights(args.epochs, Path(tmp), args.weights_out)


if __name__ == "__main__":
    main()
