"""The cell architectures (--arch) side by side: same training data, same CPU-time budget, then AP,
parameter count and CPU inference throughput.

    OMP_NUM_THREADS=1 python benchmarks/cells_archs.py                  # synthetic, ~12 CPU-min
    python benchmarks/cells_archs.py --budget 30 --archs unet2015 hed   # quicker look
    OMP_NUM_THREADS=1 python benchmarks/cells_archs.py --real ../shared/realdata/nuclei_dsb2018_stage1 \\
        --budget 240 --epochs 4 --out archs_real.json                    # real DSB split, ~45 min

Why a time budget, not a step count: the nets differ ~10x in cost per step; "what does each reach
in the same CPU time" is the question a user with a CPU asks. The budget is spent as
``epochs x steps``, with ``steps`` calibrated from timed training steps (batch drawing included),
so every run finishes its cosine schedule (a cut-off schedule would favour the fast nets twice).
Real mode re-fits the remaining epochs' steps after each epoch to the CPU time actually spent per step
(the cosine is per epoch, so it still completes): with the start-up calibration only, pspnet and fcn8s
used 178 and 205 of 240 CPU-s in the first real run.

Synthetic mode (default): ``medseg.synthetic.cells.randomised_batch`` (the demo weights' randomised
looks), prepared as ``cells-segment`` prepares images; validation (best epoch) on other seeds;
scored on the one real DSB 2018 512^2 image.

Real mode (``--real DIR``, issue 18): every arch from scratch on the DSB 2018 stage-1 training split
(``medseg/weights/cells/dsb2018_split.json``) minus the 20 held-out training ids, prepared by
``scripts/train_demo_weights_cells.py``'s ``load_samples`` (percentile normalisation, stain-aware
nuclear plane, as ``cells-segment --stain auto``), all with the shipped weights' ``3class`` instance
target and that script's augmentation (scale 0.6-1.6, blur/noise); the epoch is chosen by pooled
AP@0.5 on the held-out training images (the script's task), the budget counts training steps only
(the held-out validation passes are timed and reported apart). Then scored on the 60 validation
images by ``benchmarks/cells_real.py``'s ``run`` (the ``cells-segment`` library path, default 3class
decoder settings): dataset AP@0.5 overall and per kind, mAP@0.5:0.95, net CPU s/Mpx.
The padded ``--arch`` nets train the 3class target like the U-Nets (``CellsTrainTask`` refuses only
``dist`` for them: HED's own deep-supervision loss knows classes, not distances).

Mpx/s (both modes): best of ``--repeats`` timed whole-image probability predictions of the 512^2 DSB
image in CPU seconds of this process (so a shared machine's load does not count), 1 torch thread
unless ``--threads``. Prints one JSON line per arch and a Markdown table at the end.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import logging
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DSB = REPO.parent / "shared" / "realdata" / "nuclei_dsb2018"
if not (DSB / "img2d.tif").is_file():
    DSB = REPO / "tests" / "data" / "real" / "nuclei_dsb2018"
ARCHS = ("unet2015", "basicunet", "unet_se", "fcn8s", "deeplabv3", "pspnet", "hed")
STAIN = {"fluorescence": "fluo", "phase": "phase", "he": "he"}
REAL_TARGET = "3class"  # the shipped demo weights' instance target
REAL_CLASS_CAP = 10.0  # and their class-balancing cap (scripts/train_demo_weights_cells.py default)
log = logging.getLogger("medseg.benchmarks")


def load_by_path(name: str, path: Path) -> ModuleType:
    """Import a script that is not in a package (``scripts/``, ``benchmarks/``) by its path."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling look the module up by name
    spec.loader.exec_module(module)
    return module


def real_modules() -> tuple[ModuleType, ModuleType]:
    """The real-data training script and the real-data benchmark (reused, not copied)."""
    script = load_by_path("train_demo_weights_cells", REPO / "scripts" / "train_demo_weights_cells.py")
    bench = load_by_path("cells_real", REPO / "benchmarks" / "cells_real.py")
    return script, bench


def model_config(arch: str, width: int, num_classes: int = 2):
    from medseg.cells.archs import ArchConfig
    from medseg.cells.model import CellModelConfig

    if arch in ("unet2015", "basicunet"):
        return CellModelConfig(
            arch=arch, base_channels=width, batch_norm=True, dropout=0.1, num_classes=num_classes
        )
    return ArchConfig(arch=arch, width=width, num_classes=num_classes)


def prepared(seed: int, count: int) -> list:
    from medseg.cells.stain import prepare_plane
    from medseg.synthetic.cells import randomised_batch

    return [(prepare_plane(im, STAIN[mod])[0], lab) for im, lab, mod in randomised_batch(seed, count)]


def step_seconds(task: Any, steps: int = 5) -> float:
    """CPU time of one training step (batch drawing and augmentation, forward, loss, backward, Adam),
    mean of the steps after a warm-up step: CPU, not wall, time, so that the budget means the same on
    a shared machine as on an idle one."""
    import torch

    model = task.build_model()
    model.train()
    opt = task.build_optimizer(model)
    rng = np.random.default_rng(0)
    times = []
    for _ in range(steps):
        t0 = time.process_time()
        batch = next(iter(task.train_batches(1, rng)))
        opt.zero_grad()
        task.train_step(model, batch, torch.device("cpu")).backward()
        opt.step()
        times.append(time.process_time() - t0)
    return float(np.mean(times[1:]) * 1.05)  # + the trainer's bookkeeping


def seconds_per_step(config, pairs) -> float:
    """Synthetic mode: :func:`step_seconds` of a plain task on a few of the pairs."""
    from medseg.cells.train import CellsTrainTask, prepare_sample

    return step_seconds(
        CellsTrainTask(config, [prepare_sample(i, m, config.weight_map) for i, m in pairs[:4]], [])
    )


def parameter_count(model_config: Any) -> int:
    from medseg.cells.model import build_model

    return sum(p.numel() for p in build_model(config=model_config).parameters())


def cpu_throughput(seg: Any, image: np.ndarray, repeats: int) -> float:
    """Mpx per CPU-second of the whole-image probability map (after one warm-up call)."""
    plane = image.astype(np.float32)
    seg.predict(plane)
    best = np.inf
    for _ in range(repeats):
        t1 = time.process_time()
        seg.predict(plane)
        best = min(best, time.process_time() - t1)
    return image.size / 1e6 / best


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
        lr=args.lr,
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
        params = parameter_count(config.model)
        mpx_s = cpu_throughput(seg, image, args.repeats)
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
        "mpx_s": round(mpx_s, 4),
        "threads": torch.get_num_threads(),
    }
    print(json.dumps(row), flush=True)
    return row


# ------------------------------------------------------------------------------------------------
# real mode (--real): the DSB 2018 split


def real_ids(split: dict[str, Any], held: list[str]) -> tuple[list[str], list[str], dict[str, str]]:
    """Training ids (the split's training ids minus the held-out ones), held-out ids, validation
    ``{id: kind}``. Refuses any overlap: no figure may come from an image that was trained on."""
    val = dict(split["validation"])
    held_set = set(held)
    if not held_set <= set(split["train"]):
        raise ValueError("held-out ids must come from the training split")
    train = [i for i in split["train"] if i not in held_set]
    if set(train) & set(val) or held_set & set(val):
        raise ValueError("the split's training and validation ids overlap")
    return train, sorted(held), val


def real_config(arch: str, args: Any, diameter: float | None) -> Any:
    """The same recipe for every arch: from scratch, 3class target, the real script's augmentation."""
    from medseg.cells.targets import out_channels
    from medseg.cells.train import CellsTrainConfig

    script, _ = real_modules()
    return CellsTrainConfig(
        model=model_config(arch, args.width, out_channels(REAL_TARGET)),
        epochs=args.epochs,
        steps_per_epoch=1,
        batch_size=4,
        tile=316 if arch == "unet2015" else 160,
        lr=args.lr,
        seed=script.SPLIT_SEED,
        scale_range=(0.6, 1.6),
        noise=0.05,
        diameter=diameter,
        training_data=f"benchmarks/cells_archs.py --real: {script.DATASET}, training split minus the held-out ids",
        local_contrast=False,
        instance_target=REAL_TARGET,
        max_class_weight=args.class_cap,
    )


def real_task(config: Any, train: list[Any], held: list[Any]) -> Any:
    """The real script's task (held-out AP@0.5 picks the epoch, sqrt-area patch sampling) with the
    per-epoch cosine of the synthetic mode (the script's wall-clock cosine would depend on the load),
    for any arch and target; validation passes accumulate their CPU time in ``task.val_cpu_s``."""
    from medseg.cells.train import CellsTrainTask

    script, _ = real_modules()
    task = script.make_task(config, train, held, budget_s=1.0)
    task.build_scheduler = functools.partial(CellsTrainTask.build_scheduler, task)
    task.val_cpu_s, task.steps_done, task.epochs_done = 0.0, 0, 0
    task.budget_s, task.fit_c0 = None, None  # set by the caller just before fit()
    validate = task.validate

    def timed_validate(model: Any, device: Any) -> dict[str, float]:
        t0 = time.process_time()
        task.steps_done += config.steps_per_epoch
        task.epochs_done += 1
        left = config.epochs - task.epochs_done
        if task.budget_s and task.fit_c0 is not None and left > 0:
            # re-fit the remaining epochs' steps to the CPU actually spent per step (the start-up
            # calibration is a few steps on a shared machine); the cosine is per epoch, so it still ends
            spent = t0 - task.fit_c0 - task.val_cpu_s
            per_step = spent / task.steps_done
            config.steps_per_epoch = max(int((task.budget_s - spent) / per_step / left), 1)
        out = validate(model, device)
        task.val_cpu_s += time.process_time() - t0
        return out

    task.validate = timed_validate
    return task


def run_arch_real(
    arch: str, args: Any, train: list[Any], held: list[Any], val_ids: dict[str, str], image: np.ndarray
) -> dict[str, Any]:
    """Train ``arch`` from scratch within the budget, pick the epoch on ``held``, score on ``val_ids``."""
    import torch

    from medseg.cells.segment import CellSegmenter, SegmentConfig
    from medseg.engine.trainer import fit

    _, bench = real_modules()
    diameters = [s.diameter for s in train if getattr(s, "diameter", None)]
    config = real_config(arch, args, float(np.median(diameters)) if diameters else None)
    task = real_task(config, train, held)
    params = parameter_count(config.model)
    c0 = time.process_time()
    step = step_seconds(task)
    calib_cpu = time.process_time() - c0
    config.steps_per_epoch = max(int(args.budget / step / args.epochs), 1)
    torch.manual_seed(0)
    task.budget_s = args.budget
    with tempfile.TemporaryDirectory() as tmp:
        t0, c0 = time.perf_counter(), time.process_time()
        task.fit_c0 = c0
        result = fit(task, Path(tmp) / "train", config.loop(), device="cpu")
        fit_wall, fit_cpu = time.perf_counter() - t0, time.process_time() - c0
        weights = str(Path(tmp) / "train" / "best.safetensors")
        c0 = time.process_time()
        scores = bench.run(args.real, val_ids, weights=weights)
        eval_cpu = time.process_time() - c0
        mpx_s = cpu_throughput(
            CellSegmenter(SegmentConfig(weights=weights, device="cpu")), image, args.repeats
        )
    net = scores["net"]
    row = {
        "arch": arch,
        "width": args.width,
        "target": config.instance_target,
        "params": params,
        "steps": task.steps_done,
        "epochs": config.epochs,
        "s_per_step": round(step, 3),
        "calibration_cpu_s": round(calib_cpu, 1),
        "train_cpu_s": round(fit_cpu - task.val_cpu_s, 1),
        "heldout_val_cpu_s": round(task.val_cpu_s, 1),
        "fit_wall_s": round(fit_wall, 1),
        "best_epoch": result.best_epoch,
        "heldout_ap50": round(float(result.best_metric), 4),
        "ap50": net["all"]["ap50"],
        "ap50_kinds": {k: net[k]["ap50"] for k in net if k != "all"},
        "map_50_95": net["all"]["map_50_95"],
        "map_kinds": {k: net[k]["map_50_95"] for k in net if k != "all"},
        "mean_image_ap50": net["all"]["mean_image_ap50"],
        "cells": net["all"]["count_pred"],
        "true_cells": net["all"]["count_true"],
        "eval_cpu_s": round(eval_cpu, 1),
        "net_cpu_s_per_mpx": scores["net_cpu_s_per_mpx"],
        "mpx_s": round(mpx_s, 4),
        "classical": {
            "ap50": scores["classical"]["all"]["ap50"],
            "map_50_95": scores["classical"]["all"]["map_50_95"],
        },
        "threads": torch.get_num_threads(),
    }
    print(json.dumps(row), flush=True)
    return row


def load_real(root: Path, class_cap: float, limit: int | None = None) -> tuple[list, list, dict[str, str]]:
    """Prepared training and held-out samples (3class targets) and the validation ids of the split."""
    script, bench = real_modules()
    split = json.loads(script.SPLIT.read_text())
    train_ids, held_ids, val = real_ids(split, bench.held_out_ids())
    if limit:  # a smoke run only: its figures are not the validation split's
        train_ids, held_ids = train_ids[:limit], held_ids[: max(limit // 4, 1)]
        val = dict(sorted(val.items())[: max(limit // 2, 2)])
    t0 = time.process_time()
    kw = {"local": False, "kind": REAL_TARGET, "max_class_weight": class_cap}
    train, held = script.load_samples(root, train_ids, **kw), script.load_samples(root, held_ids, **kw)
    for s in train:  # instance labels are only needed for validation: keep the diameter, free the rest
        s.diameter = script._diameter(s.labels)
        s.labels = np.zeros((1, 1), np.int32)
    log.info(
        "prepared %d training + %d held-out images in %.0f CPU s",
        len(train),
        len(held),
        time.process_time() - t0,
    )
    return train, held, val


def real_table(rows: list[dict[str, Any]]) -> str:
    kinds = ("fluorescence", "brightfield", "grey_brightfield")
    lines = [
        "| --arch | parameters | steps (train CPU s) | best epoch (held-out AP@0.5) | AP@0.5 | fluorescence "
        "| brightfield | grey brightfield | mAP@0.5:0.95 | cells found | CPU Mpx/s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        k = [f"{r['ap50_kinds'][x]:.3f}" if x in r["ap50_kinds"] else "-" for x in kinds]
        lines.append(
            f"| `{r['arch']}` | {r['params'] / 1e6:.2f} M | {r['steps']} ({r['train_cpu_s']:.0f}) | "
            f"{r['best_epoch']} ({r['heldout_ap50']:.3f}) | {r['ap50']:.3f} | {' | '.join(k)} | "
            f"{r['map_50_95']:.3f} | {r['cells']} / {r['true_cells']} | {r['mpx_s']:.3f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--archs", nargs="+", default=list(ARCHS), choices=ARCHS)
    parser.add_argument("--budget", type=float, default=70.0, help="training CPU seconds per arch")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--width", type=int, default=8, help="first-stage channels (deeplabv3 ignores it)")
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--count", type=int, default=24, help="synthetic training images (256^2)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--real", type=Path, default=None, help="the nuclei_dsb2018_stage1 folder: real mode")
    parser.add_argument(
        "--class-cap", type=float, default=REAL_CLASS_CAP, help="real mode: 3class balancing cap"
    )
    parser.add_argument(
        "--limit",
        type=int,
        default=None,
        help="real mode, smoke run: first N training ids, N/2 validation ids",
    )
    parser.add_argument("--out", type=Path, default=None, help="also write the rows as JSON here")
    args = parser.parse_args()
    logging.basicConfig(
        level=logging.INFO if args.real else logging.WARNING, format="%(asctime)s %(message)s"
    )

    import tifffile
    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    image = tifffile.imread(DSB / "img2d.tif")
    if args.real is not None:
        train, held, val = load_real(args.real, args.class_cap, args.limit)
        rows = [run_arch_real(arch, args, train, held, val, image) for arch in args.archs]
        print("\n" + real_table(rows))
    else:
        pairs = prepared(args.seed, args.count)
        val = prepared(args.seed + 1, 2)
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
