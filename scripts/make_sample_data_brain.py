"""Regenerate the brain sample data and demo weights (synthetic data only).

    python scripts/make_sample_data_brain.py            # cases + TwoPathCNN + InputCascadeCNN (~10-15 min CPU)
    python scripts/make_sample_data_brain.py --cases-only

Writes two small synthetic cases to ``sample_data/brain/`` (seeds 1-2), the demo weights to the
package data folder ``medseg/weights/brain/`` (``brain_twopath_demo.safetensors`` and the default
``brain_input_cascade_demo.safetensors``) and their training logs (``*_train.json``) next to the
sample cases. Training cases use seeds 100-115 (brain-train holds the last 20 % out for
validation); the quality test uses seeds 5001+ (never seen). Networks use reduced widths (16 local /
32 global maps instead of the paper's 64 / 160) so they train on one CPU core in minutes; the
architecture is otherwise the paper's.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "sample_data" / "brain"
WEIGHTS = ROOT / "medseg" / "weights" / "brain"
TRAIN_SEEDS = range(100, 116)
SAMPLE_SEEDS = (1, 2)
TRAINING_DATA = (
    "SYNTHETIC data only (medseg.synthetic.brain seeds 100-112 for training, 113-115 held out for "
    "validation, 64x64x24 at 3x3x5 mm): demo weights, NOT for clinical use"
)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cases-only", action="store_true")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    import torch

    from medseg.synthetic.brain import make_brain_case, write_brain_case

    torch.set_num_threads(args.threads)
    OUT.mkdir(parents=True, exist_ok=True)
    for seed in SAMPLE_SEEDS:
        name = f"SYN_{seed:04d}"
        shutil.rmtree(OUT / name, ignore_errors=True)
        write_brain_case(make_brain_case(seed), OUT, name=name)
    if not args.cases_only:
        _train_demo_weights(train_seeds=TRAIN_SEEDS)
    for f in OUT.rglob("*"):  # temp-file writers create 0600 files; sample data is for everyone
        f.chmod(0o755 if f.is_dir() else 0o644)


def _train_demo_weights(*, train_seeds) -> None:
    import json

    from medseg.brain.models import BrainNetConfig
    from medseg.brain.preprocess import PreprocessConfig
    from medseg.brain.train import BrainTrainConfig, train
    from medseg.synthetic.brain import make_brain_case, write_brain_case

    WEIGHTS.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        train_dirs = [write_brain_case(make_brain_case(s), tmp, name=f"SYN_{s:04d}") for s in train_seeds]
        work = Path(tmp) / "runs"
        prep = PreprocessConfig(n4=True, n4_shrink=2)
        runs = {}
        runs["brain_twopath"] = train(
            train_dirs,
            work / "twopath",
            BrainTrainConfig(
                net=BrainNetConfig(arch="twopath", local_channels=16, global_channels=32),
                preprocess=prep,
                training_data=TRAINING_DATA,
                seed=0,
            ),
            device="cpu",
        )
        runs["brain_input_cascade"] = train(
            train_dirs,
            work / "ic",
            BrainTrainConfig(
                net=BrainNetConfig(arch="input-cascade", local_channels=16, global_channels=32),
                preprocess=prep,
                training_data=TRAINING_DATA,
                seed=1,
            ),
            first_weights=Path(runs["brain_twopath"].best_weights),
            device="cpu",
        )
        for name, result in runs.items():
            shutil.copyfile(result.best_weights, WEIGHTS / f"{name}_demo.safetensors")
            (OUT / f"{name}_train.json").write_text(
                json.dumps(result.to_dict(), indent=2) + "\n", encoding="utf-8"
            )
    for f in WEIGHTS.glob("brain_*"):
        f.chmod(0o644)


if __name__ == "__main__":
    main()
