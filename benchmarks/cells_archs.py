"""The cell architectures (--arch) side by side: same synthetic training set, same CPU-time budget,
then AP@0.5 on the real DSB 2018 image, parameter count and CPU inference throughput.

    OMP_NUM_THREADS=1 python benchmarks/cells_archs.py                  # ~12 CPU-min on 1 thread
    python benchmarks/cells_archs.py --budget 30 --archs unet2015 hed   # quicker look

Why a time budget, not a step count: the nets differ ~10x in cost per step; "what does each reach
in the same CPU time" is the question a user with a CPU asks. The budget is spent as
``epochs x steps``, with ``steps`` calibrated from the timed first training steps, so every run
finishes its cosine schedule (a cut-off schedule would favour the fast nets twice).

Training data: ``medseg.synthetic.cells.randomised_batch`` (the demo weights' randomised looks),
prepared as ``cells-segment`` prepares images; validation on other seeds. Evaluation: the
``cells-segment`` library path (``CellSegmenter``: stain auto -> fluo, local normalisation, tiled
inference, instance separation) on the real DSB 2018 image, scored by ``cells-eval``'s
``evaluate_labels`` (Hungarian matching). Mpx/s: best of ``--repeats`` timed whole-image predictions
of the 512^2 image (probability only) in CPU seconds of this process (so a shared machine's load
does not count), 1 torch thread unless ``--threads``.
Prints one JSON line per arch and a Markdown table at the end.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DSB = REPO.parent / "shared" / "realdata" / "nuclei_dsb2018"
if not (DSB / "img2d.tif").is_file():
    DSB = REPO / "tests" / "data" / "real" / "nuclei_dsb2018"
ARCHS = ("unet2015", "basicunet", "unet_se", "fcn8s", "deeplabv3", "pspnet", "hed")
STAIN = {"fluorescence": "fluo", "phase": "phase", "he": "he"}


def model_config(arch: str, width: int):
    from medseg.cells.archs import ArchConfig
    from medseg.cells.model import CellModelConfig

    if arch in ("unet2015", "basicunet"):
        return CellModelConfig(arch=arch, base_channels=width, batch_norm=True, dropout=0.1)
    return ArchConfig(arch=arch, width=width)


def prepared(seed: int, count: int) -> list:
    from medseg.cells.stain import prepare_plane
    from medseg.synthetic.cells import randomised_batch

    return [(prepare_plane(im, STAIN[mod])[0], lab) for im, lab, mod in randomised_batch(seed, count)]


def seconds_per_step(config, pairs) -> float:
    """CPU time of one training step (forward, loss, backward, Adam) after a warm-up step: CPU, not
    wall, time, so that the budget means the same on a shared machine as on an idle one."""
    import torch

    from medseg.cells.train import CellsTrainTask, prepare_sample

    task = CellsTrainTask(config, [prepare_sample(i, m, config.weight_map) for i, m in pairs[:4]], [])
    model = task.build_model()
    model.train()
    opt = task.build_optimizer(model)
    rng = np.random.default_rng(0)
    times = []
    for _ in range(3):
        batch = next(iter(task.train_batches(1, rng)))
        t0 = time.process_time()
        opt.zero_grad()
        task.train_step(model, batch, torch.device("cpu")).backward()
        opt.step()
        times.append(time.process_time() - t0)
    return float(min(times[1:]) * 1.15)  # + batch drawing / augmentation


def run_arch(arch: str, args, pairs, val, image, truth) -> dict:
    import torch

    from medseg.cells.evaluate import evaluate_labels, summarise
    from medseg.cells.segment import CellSegmenter, SegmentConfig
    from medseg.cells.train import CellsTrainConfig, train_pairs

    config = CellsTrainConfig(
        model=model_config(arch, args.width),
        epochs=args.epochs,
        steps_per_epoch=1,
        batch_size=4,
        tile=316 if arch == "unet2015" else 160,
        lr=2e-3,
        seed=1,
        diameter=23.0,
        training_data=f"benchmarks/cells_archs.py: randomised synthetic seed {args.seed} ({len(pairs)} images)",
    )
    step = seconds_per_step(config, pairs)
    val_cost = 1.0  # s per validation pass (2 small images), roughly
    config.steps_per_epoch = max(int((args.budget - args.epochs * val_cost) / step / args.epochs), 1)
    with tempfile.TemporaryDirectory() as tmp:
        t0, c0 = time.perf_counter(), time.process_time()
        result = train_pairs(pairs, tmp, config, val_pairs=val, device="cpu")
        train_s, train_cpu = time.perf_counter() - t0, time.process_time() - c0
        seg = CellSegmenter(SegmentConfig(weights=str(Path(tmp) / "best.safetensors"), device="cpu"))
        labels = seg.analyse(image).labels
        model = seg.predictor.model if hasattr(seg.predictor, "model") else None
        params = sum(p.numel() for p in model.parameters()) if model is not None else None
        plane = image.astype(np.float32)  # analyse() above was the warm-up
        best = np.inf
        for _ in range(args.repeats):
            t1 = time.process_time()
            seg.predict(plane)
            best = min(best, time.process_time() - t1)
    s = summarise([evaluate_labels(truth, labels)])
    row = {
        "arch": arch,
        "width": args.width,
        "params": params,
        "train_wall_s": round(train_s, 1),
        "train_cpu_s": round(train_cpu, 1),
        "steps": config.epochs * config.steps_per_epoch,
        "s_per_step": round(step, 3),
        "best_val_iou": round(float(result.best_metric), 4),
        "ap50": round(float(s["ap50"]), 4),
        "map_50_95": round(float(s["map_50_95"]), 4),
        "cells": int(labels.max()),
        "mpx_s": round(image.size / 1e6 / best, 4),
        "threads": torch.get_num_threads(),
    }
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--archs", nargs="+", default=list(ARCHS), choices=ARCHS)
    parser.add_argument("--budget", type=float, default=70.0, help="training CPU seconds per arch")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--width", type=int, default=8, help="first-stage channels (deeplabv3 ignores it)")
    parser.add_argument("--count", type=int, default=24, help="synthetic training images (256^2)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None, help="also write the rows as JSON here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    import tifffile
    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    pairs = prepared(args.seed, args.count)
    val = prepared(args.seed + 1, 2)
    image = tifffile.imread(DSB / "img2d.tif")
    truth = tifffile.imread(DSB / "mask2d.tif").astype(np.int32)
    rows = [run_arch(arch, args, pairs, val, image, truth) for arch in args.archs]
    print(
        "\n| --arch | parameters | steps (train CPU s) | best val IoU | AP@0.5 (DSB) | mAP@0.5:0.95 "
        "| cells (125 true) | CPU Mpx/s |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| `{r['arch']}` | {r['params'] / 1e6:.2f} M | {r['steps']} ({r['train_cpu_s']:.0f}) | "
            f"{r['best_val_iou']:.3f} | {r['ap50']:.3f} | {r['map_50_95']:.3f} | {r['cells']} | "
            f"{r['mpx_s']:.3f} |"
        )
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
