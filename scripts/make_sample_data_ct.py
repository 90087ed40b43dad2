"""Regenerate the CT sample exam (sample_data/ct/exam01) and the CT demo weights (medseg/weights/ct).

One synthetic chest exam with four kernels as DICOM, and one converter per direction trained with
``medseg ct-train``'s library call on synthetic phantoms (seeds 100-109; validation on two of
them, held out). The weights are package data, NOT for clinical use; tests evaluate them on
phantoms from other seeds. Takes a few minutes on 2 CPU cores:

    python scripts/make_sample_data_ct.py [--epochs 12] [--out sample_data/ct] [--weights-out medseg/weights/ct]
"""

from __future__ import annotations

import argparse
import logging
import shutil
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SAMPLE_SEED = 7
TRAIN_SEEDS = list(range(100, 110))
DIRECTIONS = [("B50f", "B30f"), ("B30f", "B50f")]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=ROOT / "sample_data" / "ct", help="sample exam folder")
    parser.add_argument(
        "--weights-out",
        type=Path,
        default=ROOT / "medseg" / "weights" / "ct",
        help="where the demo weights go (package data)",
    )
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    import torch

    from medseg.ct.models import demo_file_name
    from medseg.ct.train import CTTrainConfig, train
    from medseg.synthetic.ct_phantom import make_exam, write_cohort, write_exam_dicom

    torch.set_num_threads(args.threads)
    exam_dir = args.out / "exam01"
    if exam_dir.exists():
        shutil.rmtree(exam_dir)
    write_exam_dicom(make_exam(SAMPLE_SEED), exam_dir, seed=SAMPLE_SEED, name="exam01")

    with tempfile.TemporaryDirectory() as tmp:
        cohort = Path(tmp) / "cohort"
        write_cohort(cohort, TRAIN_SEEDS, kernels=("B30f", "B50f"))
        for source, target in DIRECTIONS:
            run_dir = Path(tmp) / f"{source}_{target}"
            cfg = CTTrainConfig(
                source_kernel=source,
                target_kernel=target,
                epochs=args.epochs,
                batch_size=8,
                lr=1e-3,
                lr_step_epochs=max(1, int(args.epochs * 0.75)),
                crop=64,
                steps_per_epoch=args.steps,
                split=(0.8, 0.2, 0.0),
                seed=0,
                training_data=(
                    f"SYNTHETIC chest phantoms (medseg.synthetic.ct_phantom, seeds "
                    f"{TRAIN_SEEDS[0]}-{TRAIN_SEEDS[-1]}); demo weights, NOT FOR CLINICAL USE"
                ),
                extra={
                    "recipe": "lr 1e-3 and 64 px crops instead of the paper's 1e-4 / whole slices, "
                    "to train in minutes on a CPU"
                },
            )
            result = train([cohort], run_dir, cfg, device="cpu", overwrite=True)
            logging.info(
                "%s->%s: best validation RMSE %.2f HU (unconverted %.2f HU) at epoch %d",
                source,
                target,
                result.best_metric,
                result.extra["input_rmse_hu"],
                result.best_epoch,
            )
            args.weights_out.mkdir(parents=True, exist_ok=True)
            shutil.copy(result.best_weights, args.weights_out / demo_file_name(source, target))


if __name__ == "__main__":
    main()
