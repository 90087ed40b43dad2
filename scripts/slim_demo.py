"""Network slimming (Liu et al. 2017) of the cells demo U-Net, measured on the REAL DSB 2018 validation split.

    OMP_NUM_THREADS=1 python scripts/slim_demo.py --data ../shared/realdata/nuclei_dsb2018_stage1 \\
        --run-dir /tmp/slim_cells --ratios 0.3 0.5 0.7

Steps (each skipped when its output is already in ``--run-dir``, so the script resumes):

1. sparsity fine-tune of the shipped demo weights (unet2015, batch norm, base 8) with the L1 penalty
   ``--slim`` on the batch-norm scales, on a seeded subset of the 540-image training split
   (a CPU-time budget, ``--sparse-cpu-s``); the epoch is chosen by pixel IoU on 10 other training
   images, never on the validation ids;
2. per ratio: one global gamma threshold, channels pruned (``medseg.cells.model.prune_weights``), then
   a short fine-tune without the penalty (``--finetune-cpu-s``);
3. every model (shipped demo, sparse, each pruned before / after fine-tuning) scored on the 60
   validation ids of ``medseg/weights/cells/dsb2018_split.json`` with the ``cells-segment`` library
   path: dataset AP@0.5 and mAP@0.5:0.95 (TP/FP/FN summed over images), parameters, CPU seconds of
   the net's path per 512^2 image (best of 3, one thread).

Writes ``RUN/results.json`` and prints it; every step records its CPU seconds.
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
SPLIT = REPO / "medseg" / "weights" / "cells" / "dsb2018_split.json"
DEMO = REPO / "medseg" / "weights" / "cells" / "demo_unet2015.safetensors"
E2E_IMAGE = REPO / "tests" / "data" / "real" / "nuclei_dsb2018" / "img2d.tif"
log = logging.getLogger("medseg.slim_demo")


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def load_samples(root: Path, ids: list[str]) -> list[Any]:
    from medseg.cells.dataset import load_pair
    from medseg.cells.train import prepare_sample
    from medseg.cells.weights import WeightMapConfig

    out = []
    for i in ids:
        image, labels = load_pair(root / "images" / f"{i}.png", root / "masks" / f"{i}.tif", local=False)
        out.append(prepare_sample(image, labels, WeightMapConfig()))
    return out


class BudgetSpent(Exception):
    """The CPU budget ran out between epochs: the run folder holds every finished epoch."""


def budget_task(config: Any, train: list[Any], val: list[Any], cpu_budget_s: float) -> Any:
    """The cells task with a CPU-time budget (the epoch under way ends early, the next one stops the
    run) and a constant learning rate (no schedule to cut short)."""
    from medseg.cells.train import CellsTrainTask

    class Task(CellsTrainTask):
        def __init__(self) -> None:
            super().__init__(config, train, val)
            self.start, self.last = cpu_seconds(), None
            area = np.array([np.sqrt(s.image.size) for s in train])
            self.probabilities = area / area.sum()

        def spent(self) -> bool:
            return cpu_seconds() - self.start > cpu_budget_s

        def build_scheduler(self, optimizer: Any) -> Any:
            return None

        def train_batches(self, epoch: int, rng: np.random.Generator):
            if epoch > 1 and self.spent():
                raise BudgetSpent
            for batch in super().train_batches(epoch, rng):
                if self.spent():
                    return
                yield batch

    return Task()


def train(
    out: Path, init: Path, train_s: list[Any], val_s: list[Any], *, slim: float, cpu_s: float, lr: float
) -> dict[str, Any]:
    """Fine-tune ``init`` (with the slimming penalty ``slim``) for ``cpu_s`` CPU seconds into ``out``."""
    from medseg.cells.model import config_from_dict
    from medseg.cells.train import CellsTrainConfig
    from medseg.engine.checkpoint import read_meta
    from medseg.engine.trainer import fit

    meta = read_meta(init)
    notes = json.loads(meta.notes or "{}")
    config = CellsTrainConfig(
        model=config_from_dict(meta.config),
        epochs=1000,
        steps_per_epoch=25,
        batch_size=4,
        tile=316,
        lr=lr,
        seed=2018,
        init_weights=str(init),
        scale_range=(0.6, 1.6),
        noise=0.05,
        diameter=notes.get("diameter"),
        training_data="DSB 2018 stage 1 training split (subset), slimming fine-tune",
        local_contrast=False,
        slim=slim,
    )
    task = budget_task(config, train_s, val_s, cpu_s)
    t0 = cpu_seconds()
    try:
        fit(task, out, config.loop(), device="cpu", overwrite=True)
    except BudgetSpent:
        pass
    history = json.loads((out / "history.json").read_text())
    return {
        "cpu_s": round(cpu_seconds() - t0, 1),
        "epochs": len(history),
        "steps_at_most": len(history) * config.steps_per_epoch,
        "val_pixel_iou_on_training_images": [round(h["val_pixel_iou"], 4) for h in history],
    }


def with_demo_meta(src: Path, dst: Path) -> Path:
    """``src``'s tensors with the shipped demo weights' metadata notes (instance settings, diameter)."""
    from medseg.engine.checkpoint import load_weights, read_meta, save_weights

    state, meta = load_weights(src)
    demo = read_meta(DEMO)
    save_weights(dst, state, replace(meta, notes=demo.notes, normalisation=demo.normalisation))
    return dst


def evaluate(data: Path, ids: dict[str, str], weights: Path) -> dict[str, Any]:
    """Dataset AP on the validation ids (the cells-segment path), parameters, CPU s per 512^2 image."""
    from medseg.cells.evaluate import evaluate_labels, summarise, summarise_groups
    from medseg.cells.io import read_image, read_mask
    from medseg.cells.segment import CellSegmenter, SegmentConfig
    from medseg.cells.weights import instances_from_mask
    from medseg.engine.checkpoint import load_weights

    t_start = cpu_seconds()
    seg = CellSegmenter(SegmentConfig(weights=str(weights), device="cpu", stain="auto"))
    rows, groups = [], []
    for i, kind in sorted(ids.items()):
        planes, _ = read_image(data / "images" / f"{i}.png", allow_stack=False, keep_color=True)
        truth = instances_from_mask(read_mask(data / "masks" / f"{i}.tif"))
        rows.append(evaluate_labels(truth, seg.analyse(planes[0]).labels))
        groups.append(kind)
    plane = read_image(E2E_IMAGE, allow_stack=False)[0][0]
    plane = np.resize(plane, (512, 512)) if plane.shape != (512, 512) else plane
    best = float("inf")
    for _ in range(3):
        t0 = time.process_time()
        seg.analyse(plane)
        best = min(best, time.process_time() - t0)
    state, _ = load_weights(weights)
    summary = summarise(rows)
    per_kind = {g: round(s["ap50"], 4) for g, s in summarise_groups(rows, groups).items()}
    return {
        "ap50": round(summary["ap50"], 4),
        "map_50_95": round(summary["map_50_95"], 4),
        "ap50_per_kind": per_kind,
        "params": int(sum(v.numel() for v in state.values() if v.dim() > 0 and v.is_floating_point()) or 0),
        "cpu_s_per_512px_image": round(best, 3),
        "eval_cpu_s": round(cpu_seconds() - t_start, 1),
    }


def ship(src: Path, dst: Path, results: dict[str, Any], tag: str, slim: float) -> None:
    """float16 copy of ``src`` (a fine-tuned pruned net) whose metadata names the data, the split, the
    use and the slimming (ratio, widths, lambda, CPU seconds, validation AP next to the full model's)."""
    from medseg.engine.checkpoint import load_weights, read_meta, save_weights

    state, meta = load_weights(src)
    demo = read_meta(DEMO)
    notes = json.loads(demo.notes or "{}")
    full, pruned = results["models"]["demo (unpruned)"], results["models"][f"{tag} fine-tuned"]
    notes["network_slimming"] = {
        "method": "Liu et al. 2017: L1 on batch-norm scales, global threshold, channel pruning, fine-tuning",
        "from": DEMO.name,
        "slim_lambda": slim,
        "prune_ratio": int(tag.removeprefix("pruned")) / 100,
        "widths": meta.config.get("widths"),
        "train_cpu_s": round(results["sparse_train"]["cpu_s"] + results[tag]["finetune"]["cpu_s"], 1),
        "validation": {"pruned": pruned, "full": full},
    }
    meta.notes = json.dumps(notes)
    meta.training_data = (
        f"REAL: {demo.training_data.removeprefix('REAL: ').split(';')[0]}; network slimming of the demo "
        f"weights (sparsity and pruned fine-tunes on {results['train_images']} images of the training "
        f"split), never on the {results['validation_ids']} validation ids listed in notes. research use, "
        "not for clinical use."
    )
    meta.metrics = {"val_ap50": pruned["ap50"], "val_map_50_95": pruned["map_50_95"]}
    save_weights(dst, {k: v.half() if v.is_floating_point() else v for k, v in state.items()}, meta)
    log.info("wrote %s", dst)


BRAIN_SHIPPED = REPO / "medseg" / "weights" / "brain" / "brain_twopath_brats2018.safetensors"


def brain_with_batch_norm(src: Path, dst: Path, cases: list[Any], *, seed: int = 0) -> None:
    """``src`` (a TwoPathCNN without batch norm) with a batch norm after each maxout layer that changes
    nothing: its statistics are the features' mean and variance on 1024 class-balanced training
    patches, and ``gamma = std``, ``beta = mean`` (eval mode: identity; train mode: about identity).
    Slimming can then start from the shipped real-data weights instead of from scratch."""
    import torch

    from medseg.brain.models import BrainNetConfig, build_model
    from medseg.brain.sampling import sample_batch
    from medseg.engine.checkpoint import load_weights, save_weights

    state, meta = load_weights(src)
    cfg = replace(BrainNetConfig.from_dict(meta.config["net"]), batch_norm=True)
    model = build_model(config=cfg)
    missing = model.load_state_dict({k: v.float() for k, v in state.items()}, strict=False).missing_keys
    assert all(".bn." in k for k in missing), missing
    x, _, _ = sample_batch(cases, 1024, np.random.default_rng(seed), balanced=True, probs_size=None)
    feats: dict[str, torch.Tensor] = {}
    layers = {"local1": model.local1, "local2": model.local2, "global1": model.global1}
    for layer in layers.values():
        layer.bn.eval()  # identity while measuring (running stats 0/1, gamma 1, beta 0)
    hooks = [
        m.bn.register_forward_hook(lambda _m, i, _o, n=n: feats.__setitem__(n, i[0].detach()))
        for n, m in layers.items()
    ]
    with torch.no_grad():
        model(torch.from_numpy(x))
    for h in hooks:
        h.remove()
    with torch.no_grad():
        for name, layer in layers.items():
            f = feats[name]
            mean, var = f.mean(dim=(0, 2, 3)), f.var(dim=(0, 2, 3), unbiased=False)
            layer.bn.running_mean.copy_(mean)
            layer.bn.running_var.copy_(var)
            layer.bn.weight.copy_(torch.sqrt(var + layer.bn.eps))
            layer.bn.bias.copy_(mean)
    meta = replace(meta, config={**meta.config, "net": cfg.to_dict()})
    save_weights(dst, model.state_dict(), meta)


def brain_main(args: argparse.Namespace) -> None:
    """Slim the shipped real-data TwoPathCNN and score it on the 3 real validation cases."""
    import importlib.util

    from medseg.brain.models import BrainNetConfig
    from medseg.brain.preprocess import PreprocessConfig
    from medseg.brain.train import BrainTrainConfig, PhaseConfig, train
    from medseg.brain.train_cases import load_training_cases
    from medseg.engine.checkpoint import read_meta

    spec = importlib.util.spec_from_file_location("tdwb", REPO / "scripts" / "train_demo_weights_brain.py")
    tdwb = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tdwb)
    split = json.loads((REPO / "medseg" / "weights" / "brain" / "brats2018_split.json").read_text())
    run = args.run_dir
    run.mkdir(parents=True, exist_ok=True)
    results_path = run / "results.json"
    results: dict[str, Any] = json.loads(results_path.read_text()) if results_path.is_file() else {}
    meta = read_meta(BRAIN_SHIPPED)
    prep = PreprocessConfig.from_dict(meta.config["preprocess"])
    train_dirs = [args.brain_data / n for n in split["train"]]
    val_dirs = [args.brain_data / n for n in split["validation"]]
    init = run / "shipped_bn.safetensors"
    t0 = cpu_seconds()
    if not init.is_file():
        cases = load_training_cases(train_dirs, labels="brats2021", prep=prep, cache_dir=args.brain_cache)
        brain_with_batch_norm(BRAIN_SHIPPED, init, cases)
    final = run / "slim" / "best.safetensors"
    if not final.is_file():
        net = replace(BrainNetConfig.from_dict(meta.config["net"]), batch_norm=True)
        cfg = BrainTrainConfig(
            net=net,
            preprocess=prep,
            phase1=PhaseConfig(epochs=args.brain_epochs, steps_per_epoch=20, lr=0.002, lr_halving_epochs=8),
            phase2=PhaseConfig(epochs=1, steps_per_epoch=20, lr=0.001),
            val_patches=1000,
            slim=args.brain_slim,
            prune_ratio=args.brain_ratio if args.brain_ratio > 0 else None,
            finetune_epochs=args.brain_epochs,
            init_weights=str(init),
            training_data="BraTS 2018, the 9 training cases of the recorded split (slimming run)",
        )
        result = train(
            train_dirs,
            run / "slim",
            cfg,
            val_case_dirs=val_dirs,
            device="cpu",
            cache_dir=args.brain_cache,
            overwrite=True,
        )
        results["slim"] = result.extra.get("slim")
    results["train_cpu_s"] = round(results.get("train_cpu_s", 0.0) + cpu_seconds() - t0, 1)
    t0 = cpu_seconds()
    report = tdwb.evaluate_real([BRAIN_SHIPPED, final], args.brain_data, args.brain_cache)
    results["eval_cpu_s"] = round(cpu_seconds() - t0, 1)
    for w, out in report["weights"].items():
        variant = out["variants"].get("components+fill") or out["variants"]["none"]
        mean = variant["mean"]
        results[Path(w).parent.name + "/" + Path(w).name] = {
            "dice": [mean["dice_WT"], mean["dice_TC"], mean["dice_ET"]],
            "hd95": [mean["hd95_WT"], mean["hd95_TC"], mean["hd95_ET"]],
            "inference_s_per_case": out["inference_s_per_case"],
        }
    results_path.write_text(json.dumps(results, indent=1) + "\n")
    print(json.dumps(results, indent=1))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=None, help="the nuclei_dsb2018_stage1 folder")
    parser.add_argument("--run-dir", type=Path, default=Path("/tmp/slim_cells"))
    parser.add_argument(
        "--brain-data", type=Path, default=None, help="brain_brats2018: slim the brain net instead"
    )
    parser.add_argument("--brain-cache", type=Path, default=REPO.parent / "brain_runs" / "cache")
    parser.add_argument("--brain-slim", type=float, default=1e-2)
    parser.add_argument("--brain-ratio", type=float, default=0.5)
    parser.add_argument(
        "--brain-epochs", type=int, default=3, help="sparsity and fine-tune epochs (20 steps)"
    )
    parser.add_argument("--init", type=Path, default=DEMO, help="weights to slim (default: the demo weights)")
    parser.add_argument("--slim", type=float, default=1e-3, help="L1 penalty lambda on the BN scales")
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.3, 0.5, 0.7])
    parser.add_argument("--train-images", type=int, default=120, help="seeded subset of the training split")
    parser.add_argument("--sparse-cpu-s", type=float, default=420.0)
    parser.add_argument("--finetune-cpu-s", type=float, default=150.0)
    parser.add_argument("--lr", type=float, default=5e-4, help="fine-tuning learning rate (Adam)")
    parser.add_argument("--sparse-lr", type=float, default=1e-3, help="sparsity fine-tune learning rate")
    parser.add_argument("--skip-eval", action="store_true", help="train and prune only")
    parser.add_argument("--skip-before", action="store_true", help="do not score the nets before fine-tuning")
    parser.add_argument(
        "--ship", type=float, default=None, help="write this ratio's fine-tuned net (float16) ..."
    )
    parser.add_argument(
        "--ship-to", type=Path, default=None, help="... here, with metadata, and score that file"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    import torch

    torch.set_num_threads(1)
    if args.brain_data is not None:
        brain_main(args)
        return
    if args.data is None:
        parser.error("give --data (cells) or --brain-data")
    from medseg.cells.model import prune_weights

    split = json.loads(SPLIT.read_text())
    val_ids = split["validation"]
    rng = np.random.default_rng(split["seed"] + 22)
    pool = sorted(set(split["train"]) - set(val_ids))
    chosen = rng.choice(pool, size=args.train_images + 10, replace=False).tolist()
    run = args.run_dir
    run.mkdir(parents=True, exist_ok=True)
    results_path = run / "results.json"
    results: dict[str, Any] = json.loads(results_path.read_text()) if results_path.is_file() else {}
    results.setdefault("models", {})
    results["validation_ids"] = len(val_ids)
    results["train_images"] = args.train_images

    def save() -> None:
        results_path.write_text(json.dumps(results, indent=1) + "\n")

    samples: list[Any] | None = None

    def data() -> tuple[list[Any], list[Any]]:
        nonlocal samples
        if samples is None:
            t0 = cpu_seconds()
            samples = load_samples(args.data, chosen)
            results["data_cpu_s"] = round(cpu_seconds() - t0, 1)
        return samples[:-10], samples[-10:]

    sparse = run / "sparse.safetensors"
    if not sparse.is_file():
        log.info("sparsity fine-tune, lambda %g, %.0f CPU s", args.slim, args.sparse_cpu_s)
        info = train(
            run / "sparse", args.init, *data(), slim=args.slim, cpu_s=args.sparse_cpu_s, lr=args.sparse_lr
        )
        with_demo_meta(run / "sparse" / "best.safetensors", sparse)
        results["sparse_train"] = {**info, "slim": args.slim}
        save()
    for ratio in args.ratios:
        tag = f"pruned{int(round(ratio * 100))}"
        pruned, tuned = run / f"{tag}.safetensors", run / f"{tag}_ft.safetensors"
        if not pruned.is_file():
            t0 = cpu_seconds()
            info = prune_weights(sparse, pruned, ratio)
            results[tag] = {k: info[k] for k in ("threshold", "params_before", "params_after", "widths")}
            results[tag]["prune_cpu_s"] = round(cpu_seconds() - t0, 2)
            save()
        if not tuned.is_file():
            info = train(run / f"{tag}_ft", pruned, *data(), slim=0.0, cpu_s=args.finetune_cpu_s, lr=args.lr)
            with_demo_meta(run / f"{tag}_ft" / "best.safetensors", tuned)
            results[tag]["finetune"] = info
            save()
    if args.skip_eval:
        return
    models = {"demo (unpruned)": args.init, "sparse (unpruned)": sparse}
    tags = [f"pruned{int(round(ratio * 100))}" for ratio in args.ratios]
    models.update({f"{tag} fine-tuned": run / f"{tag}_ft.safetensors" for tag in tags})
    if not args.skip_before:  # what pruning alone costs (before fine-tuning): measured last
        models.update({f"{tag} before fine-tune": run / f"{tag}.safetensors" for tag in tags})
    for name, path in models.items():
        if name in results["models"]:
            continue
        log.info("evaluating %s on the %d validation images", name, len(val_ids))
        results["models"][name] = {"weights": str(path), **evaluate(args.data, val_ids, path)}
        save()
    if args.ship is not None and args.ship_to is not None:
        tag = f"pruned{int(round(args.ship * 100))}"
        ship(run / f"{tag}_ft.safetensors", args.ship_to, results, tag, args.slim)
        results["models"]["shipped (float16)"] = {
            "weights": str(args.ship_to),
            **evaluate(args.data, val_ids, args.ship_to),
        }
        save()
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
