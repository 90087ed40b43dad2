"""Regenerate the brain demo weights (synthetic data only) and measure them on held-out cases.

    python scripts/train_demo_weights_brain.py                       # train both nets into medseg/weights/brain/
    python scripts/train_demo_weights_brain.py --out /tmp/new        # train elsewhere (to compare first)
    python scripts/train_demo_weights_brain.py --evaluate medseg/weights/brain /tmp/new   # held-out Dice

Training: ``medseg.brain.train.train`` on synthetic cases from ``medseg.synthetic.brain`` (seeds
100-127; ``brain-train`` holds the last 20 % out for validation), a TwoPathCNN first, then the
InputCascadeCNN (the default of ``brain-segment``) on top of it, each in the paper's two phases:
phase 1 on class-balanced patches, phase 2 retraining only the output layer on patches drawn from
the natural label distribution inside the brain (``sampling.natural_coords``), so the softmax learns
the real class priors again. Networks use reduced widths (16 local / 32 global maps instead of the
paper's 64 / 160) so both train in about 15 CPU-minutes on one thread; the architecture is
otherwise the paper's. Training logs go next to the sample cases (``sample_data/brain/*_train.json``).

Evaluation (``--evaluate DIR...``): each folder's ``brain_input_cascade_demo.safetensors`` and
``brain_twopath_demo.safetensors`` segment the same held-out synthetic cases (seeds 6001-6010,
never used for training, validation or the quality test) end to end (preprocessing as the weights
ask, post-processing on); prints mean Dice WT/TC/ET and predicted vs true volumes as JSON.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "sample_data" / "brain"
WEIGHTS = ROOT / "medseg" / "weights" / "brain"
TRAIN_SEEDS = range(100, 128)
EVAL_SEEDS = range(6001, 6011)
TRAINING_DATA = (
    "SYNTHETIC data only (medseg.synthetic.brain with normal-tissue contrasts, seeds 100-121 for "
    "training, 122-127 held out for validation, 64x64x24 at 3x3x5 mm): demo weights, NOT for "
    "clinical use"
)
NETS = ("brain_twopath", "brain_input_cascade")
log = logging.getLogger("train_demo_weights_brain")


def train_demo_weights(out: Path, *, seeds=TRAIN_SEEDS) -> dict:
    """Train TwoPathCNN then InputCascadeCNN; copy both best weights into ``out``."""
    from medseg.brain.models import BrainNetConfig
    from medseg.brain.preprocess import PreprocessConfig
    from medseg.brain.train import BrainTrainConfig, PhaseConfig, train
    from medseg.engine.checkpoint import read_meta
    from medseg.synthetic.brain import BrainPhantomConfig, make_brain_case, write_brain_case

    out.mkdir(parents=True, exist_ok=True)
    prep = PreprocessConfig(n4=True, n4_shrink=2, n4_iterations=[50, 50])

    def config(arch: str, seed: int) -> BrainTrainConfig:
        return BrainTrainConfig(
            net=BrainNetConfig(arch=arch, local_channels=16, global_channels=32),
            preprocess=prep,
            phase1=PhaseConfig(epochs=6, steps_per_epoch=30, lr=0.003),
            phase2=PhaseConfig(epochs=2, steps_per_epoch=20, lr=0.001),
            training_data=TRAINING_DATA,
            seed=seed,
        )

    runs, seconds = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        dirs = [write_brain_case(make_brain_case(s), tmp, name=f"SYN_{s:04d}") for s in seeds]
        work = Path(tmp) / "runs"
        t0, c0 = time.perf_counter(), time.process_time()
        runs["brain_twopath"] = train(dirs, work / "twopath", config("twopath", 0), device="cpu")
        seconds["brain_twopath"] = (time.perf_counter() - t0, time.process_time() - c0)
        t0, c0 = time.perf_counter(), time.process_time()
        runs["brain_input_cascade"] = train(
            dirs,
            work / "ic",
            config("input-cascade", 1),
            first_weights=Path(runs["brain_twopath"].best_weights),
            device="cpu",
        )
        seconds["brain_input_cascade"] = (time.perf_counter() - t0, time.process_time() - c0)
        for name, result in runs.items():
            # brain-train records the phantoms' in-plane spacing; brain-segment resamples other cases to it
            spacing = read_meta(result.best_weights).config.get("train_spacing_mm")
            if spacing != [float(v) for v in BrainPhantomConfig().spacing[1:]]:
                raise RuntimeError(f"{name}: weights record train_spacing_mm={spacing}, not the phantoms'")
            shutil.copyfile(result.best_weights, out / f"{name}_demo.safetensors")
            (out / f"{name}_demo.safetensors").chmod(0o644)
            log_doc = result.to_dict()
            log_doc["wall_s"], log_doc["cpu_s"] = (round(v, 1) for v in seconds[name])
            (out / f"{name}_train.json").write_text(json.dumps(log_doc, indent=2) + "\n", encoding="utf-8")
    log.info("training time (wall s, CPU s): %s", seconds)
    return {k: {"wall_s": round(w, 1), "cpu_s": round(c, 1)} for k, (w, c) in seconds.items()}


def evaluate(folders: list[Path], *, seeds=EVAL_SEEDS) -> dict:
    """Mean Dice and volumes of each folder's demo weights on the same held-out synthetic cases."""
    import numpy as np

    from medseg.brain.evaluate import region_metrics
    from medseg.brain.io import MODALITIES, Geometry
    from medseg.brain.segment import load_brain_model, make_predictor, region_volumes_ml, segment_array
    from medseg.synthetic.brain import make_brain_case

    cases = [make_brain_case(s) for s in seeds]
    report = {"cases": f"synthetic seeds {seeds.start}-{seeds.stop - 1} (held out)"}
    for folder in folders:
        for net in NETS:
            model, meta, prep = load_brain_model(folder / f"{net}_demo.safetensors")
            arch = meta.config["net"]["arch"]
            predictor = make_predictor(model, device="cpu")
            rows = []
            for case in cases:
                geo = Geometry(
                    shape=case.label.shape,
                    spacing=case.spacing,
                    origin=(0.0,) * 3,
                    direction=(1, 0, 0, 0, 1, 0, 0, 0, 1),
                )
                raw = np.stack([case.images[m] for m in MODALITIES])
                pred = segment_array(predictor, raw, geo, arch=arch, prep=prep)
                row = region_metrics(pred, case.label, case.spacing)
                row.update({f"pred_{k}": v for k, v in region_volumes_ml(pred, case.spacing).items()})
                row.update({f"truth_{k}": v for k, v in region_volumes_ml(case.label, case.spacing).items()})
                rows.append(row)
            keys = [f"dice_{r}" for r in ("WT", "TC", "ET")]
            keys += [f"{w}_{r}_ml" for w in ("pred", "truth") for r in ("WT", "TC", "ET")]
            mean = {k: round(float(np.mean([r[k] for r in rows])), 3) for k in keys}
            report[f"{folder}/{net}"] = mean
            log.info("%s/%s: %s", folder, net, mean)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=WEIGHTS, help="where the weights go")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--evaluate", type=Path, nargs="+", default=None, metavar="DIR")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    import torch

    torch.set_num_threads(args.threads)
    if args.evaluate:
        print(json.dumps(evaluate(args.evaluate), indent=1))
        return
    times = train_demo_weights(args.out)
    for name in NETS:  # the training logs live beside the sample cases
        log_file = args.out / f"{name}_train.json"
        if args.out.resolve() == WEIGHTS.resolve():
            shutil.move(log_file, SAMPLE / log_file.name)
    print(json.dumps(times))


if __name__ == "__main__":
    main()
