"""Regenerate sample_data/pathology: a small synthetic C4d slide + demo detector weights.

    python scripts/make_sample_data_pathology.py            # slide + weights (10-20 min on 1 CPU core)
    python scripts/make_sample_data_pathology.py --slide-only

The weights are trained on synthetic slides (seeds 1000-1005) only: demo use, not for clinical use.
Tests score slides from other seeds, which the weights never saw.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "sample_data" / "pathology"
TRAIN_SEEDS = (1000, 1001, 1002, 1003, 1004, 1005)
TRAIN_FRACTIONS = (0.05, 0.2, 0.35, 0.5, 0.7, 0.9)
SAMPLE_SEED = 7


def make_slide() -> None:
    from medseg.synthetic.slides import SlideSpec, write_slide

    OUT.mkdir(parents=True, exist_ok=True)
    write_slide(OUT / "sample_slide.tiff", SlideSpec(width=4096, height=3072, seed=SAMPLE_SEED, positive_fraction=0.3),
                geojson=OUT / "sample_slide.geojson")


def make_weights(epochs: int, work: Path) -> None:
    import torch

    from medseg.pathology.prepare import PrepareConfig, prepare_slides
    from medseg.pathology.train import TrainConfig, train
    from medseg.synthetic.slides import SlideSpec, write_slide

    torch.set_num_threads(1)
    pairs = []
    for seed, frac in zip(TRAIN_SEEDS, TRAIN_FRACTIONS):
        slide, ann = work / f"train_{seed}.tiff", work / f"train_{seed}.geojson"
        write_slide(slide, SlideSpec(width=3072, height=3072, seed=seed, positive_fraction=frac), geojson=ann)
        pairs.append((slide, ann))
    prepare_slides(pairs, work / "dataset", config=PrepareConfig(tile=512, overlap=192), overwrite=True)
    summary = train(work / "dataset", work / "run", config=TrainConfig(
        epochs=epochs, batch_size=4, lr=3e-3, seed=0, device="cpu",
        training_data=f"synthetic C4d slides, seeds {TRAIN_SEEDS} (medseg.synthetic.slides); not for clinical use"),
        overwrite=True)
    shutil.copyfile(work / "run" / "weights.safetensors", OUT / "c4d_light_demo.safetensors")
    logging.getLogger("medseg").info("weights: best val %.3f in %.0f s", summary["best_val"], summary["seconds"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slide-only", action="store_true")
    parser.add_argument("--epochs", type=int, default=14)
    parser.add_argument("--work", type=Path, default=None, help="keep intermediate files here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    make_slide()
    if not args.slide_only:
        if args.work:
            args.work.mkdir(parents=True, exist_ok=True)
            make_weights(args.epochs, args.work)
        else:
            with tempfile.TemporaryDirectory() as tmp:
                make_weights(args.epochs, Path(tmp))


if __name__ == "__main__":
    main()
