"""What a user would pick instead of the cascade: MONAI's SegResNet trained on the same BraTS cases.

Issue 19 asks for a 3-D MONAI network trained on the same 9 training cases with the same CPU budget
as the shipped TwoPathCNN + InputCascadeCNN (1 375 + 1 873 CPU-s), its validation Dice next to the
cascade's. This script is that comparison, not a shipped model:

    python scripts/train_segresnet_brain.py --data ../shared/realdata/brain_brats2018 --out ../brain_runs/segresnet
    python scripts/train_segresnet_brain.py --data ... --out ... --resume        # continue after a stop
    python scripts/train_segresnet_brain.py --data ... --out ... --evaluate-only # the 3 validation cases
    python scripts/train_segresnet_brain.py --data ... --out ... --ship  # -> medseg/weights/brain/

``--ship`` writes the run's weights as the demo file ``brain-segment`` averages with the cascade
(``medseg/weights/brain/brain_segresnet_brats2018.safetensors``: self-describing metadata, the split,
the preprocessing, the CPU time, the terms and citations).

Same inputs as the cascade: the recorded split (``medseg/weights/brain/brats2018_split.json``), the
preprocessing stored in the shipped cascade's weights (N4, clipping, z-score inside the brain; the
cached crops of ``train_demo_weights_brain.py``), 1 mm spacing. The net: SegResNet (Myronenko 2018,
MONAI's BraTS recipe) with 8 initial filters, three sigmoid outputs (tumour core, whole tumour,
enhancing), Dice + BCE loss, patches of ``--patch`` voxels (two thirds centred near tumour), flips and
intensity jitter, AdamW with a cosine schedule over the CPU budget (``time.process_time``). The last
weights are evaluated (no epoch chosen on any case); no post-processing. Research use, not for
clinical use.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
log = logging.getLogger("segresnet")

CASCADE = ROOT / "medseg" / "weights" / "brain" / "brain_input_cascade_brats2018.safetensors"
CASCADE_CPU_S = 1375 + 1873  # the shipped TwoPathCNN + InputCascadeCNN trainings (docs/brain.md)


SHIPPED = ROOT / "medseg" / "weights" / "brain" / "brain_segresnet_brats2018.safetensors"


def build_net():
    from medseg.brain.volume3d import Volume3DConfig, build_segresnet

    return build_segresnet(config=Volume3DConfig())


def regions(labels: np.ndarray) -> np.ndarray:
    """(3, ...) float targets from internal labels in :data:`REGION_ORDER` (TC, WT, ET)."""
    from medseg.brain.models import REGION_ORDER
    from medseg.brain.segment import region_masks

    masks = region_masks(labels)
    return np.stack([masks[r] for r in REGION_ORDER]).astype(np.float32)


def load_cases(data: Path, names: list[str]):
    from train_demo_weights_brain import REAL_CACHE

    from medseg.brain.preprocess import PreprocessConfig
    from medseg.brain.train_cases import load_training_cases
    from medseg.engine.checkpoint import read_meta

    prep = PreprocessConfig.from_dict(read_meta(CASCADE).config.get("preprocess", {}))
    cases = load_training_cases(
        [data / n for n in names], labels="brats2021", prep=prep, cache_dir=REAL_CACHE
    )
    return [
        (c.name, np.ascontiguousarray(c.padded[:, :, 16:-16, 16:-16]), c.labels, c.spacing, c.mask)
        for c in cases
    ]


def _rotation(rng: np.random.Generator, max_deg: float) -> np.ndarray:
    """A random 3-D rotation: one angle in [-max_deg, max_deg] about each axis."""
    m = np.eye(3)
    for axes in ((0, 1), (0, 2), (1, 2)):
        a = np.deg2rad(rng.uniform(-max_deg, max_deg))
        r = np.eye(3)
        r[axes[0], axes[0]] = r[axes[1], axes[1]] = np.cos(a)
        r[axes[0], axes[1]], r[axes[1], axes[0]] = -np.sin(a), np.sin(a)
        m = m @ r
    return m


def sample(
    rng: np.random.Generator,
    norm: np.ndarray,
    labels: np.ndarray,
    patch: int,
    spatial: float = 0.0,
):
    """One (4, p, p, p) patch and its (3, p, p, p) targets: centred near tumour with p = 2/3.

    ``spatial`` > 0 is the probability of a rotation (up to 15 degrees about each axis) and, independently,
    of an isotropic scaling (0.85-1.15), both resampled from the whole volume around the patch centre
    (nnU-Net's spatial augmentation; linear for the images, nearest for the labels); a gamma change of
    each sequence's intensity then follows with the same probability.
    """
    from scipy.ndimage import affine_transform

    shape = np.array(labels.shape)
    pad = np.maximum(patch - shape, 0)
    if pad.any():
        widths = [(0, 0)] + [(0, int(p)) for p in pad]
        norm, labels = np.pad(norm, widths), np.pad(labels, widths[1:])
        shape = np.array(labels.shape)
    fg = np.flatnonzero(labels.ravel() > 0) if rng.random() < 2 / 3 else np.empty(0)
    if len(fg):
        centre = np.array(np.unravel_index(fg[rng.integers(len(fg))], labels.shape)) + rng.integers(-8, 9, 3)
    else:
        centre = rng.integers(0, shape)
    lo = np.clip(centre - patch // 2, 0, shape - patch)
    m = np.eye(3)
    if spatial > 0 and rng.random() < spatial:
        m = m @ _rotation(rng, 15.0)
    if spatial > 0 and rng.random() < spatial:
        m = m * rng.uniform(0.85, 1.15)
    if np.allclose(m, np.eye(3)):
        box = tuple(slice(int(a), int(a) + patch) for a in lo)
        x, lab = norm[(slice(None), *box)].copy(), labels[box]
    else:
        c_out = np.full(3, (patch - 1) / 2)
        offset = lo + c_out - m @ c_out
        out = (patch,) * 3
        x = np.stack(
            [affine_transform(ch, m, offset, output_shape=out, order=1, cval=0.0) for ch in norm]
        ).astype(np.float32)
        lab = affine_transform(labels, m, offset, output_shape=out, order=0, cval=0)
    y = regions(lab)
    for axis in (1, 2, 3):
        if rng.random() < 0.5:
            x, y = np.flip(x, axis), np.flip(y, axis)
    x = x * rng.uniform(0.9, 1.1, (4, 1, 1, 1)) + rng.uniform(-0.1, 0.1, (4, 1, 1, 1))
    if spatial > 0 and rng.random() < spatial:
        # gamma on each sequence's [min, max] range, the sign and scale kept (nnU-Net's gamma transform)
        lo_v = x.min(axis=(1, 2, 3), keepdims=True)
        span = x.max(axis=(1, 2, 3), keepdims=True) - lo_v + 1e-6
        x = ((x - lo_v) / span) ** rng.uniform(0.7, 1.5, (4, 1, 1, 1)) * span + lo_v
    return np.ascontiguousarray(x, np.float32), np.ascontiguousarray(y)


def train(args) -> dict:
    from monai.losses import DiceLoss
    from train_demo_weights_brain import recorded_split

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    split = recorded_split(Path(args.data))
    cases = load_cases(Path(args.data), split["train"])
    net = build_net()
    opt = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=1e-5)
    dice = DiceLoss(sigmoid=True, smooth_nr=0.0, smooth_dr=1e-5, batch=True)
    bce = torch.nn.BCEWithLogitsLoss()
    state = {"step": 0, "cpu_s": 0.0, "losses": []}
    ckpt = out / "state.pt"
    if args.resume and ckpt.is_file():
        saved = torch.load(ckpt, weights_only=True)
        net.load_state_dict(saved["net"])
        opt.load_state_dict(saved["opt"])
        state = json.loads((out / "state.json").read_text())
    rng = np.random.default_rng(args.seed + state["step"])

    def save() -> None:
        torch.save({"net": net.state_dict(), "opt": opt.state_dict()}, out / "state.tmp")
        (out / "state.tmp").replace(ckpt)
        (out / "state.json").write_text(json.dumps(state))

    net.train()
    t0 = time.process_time()
    start_cpu = state["cpu_s"]
    while state["cpu_s"] < args.cpu_budget_s:
        frac = state["cpu_s"] / args.cpu_budget_s
        lr = args.lr * min(1.0, (state["step"] + 1) / 20) * 0.5 * (1 + math.cos(math.pi * frac))
        for g in opt.param_groups:
            g["lr"] = lr
        xs, ys = zip(
            *(
                sample(rng, *cases[rng.integers(len(cases))][1:3], args.patch, args.spatial_aug)
                for _ in range(args.batch)
            )
        )
        x, y = torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(ys))
        logits = net(x)
        loss = dice(logits, y) + bce(logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        state["step"] += 1
        state["cpu_s"] = start_cpu + time.process_time() - t0
        state["losses"].append(round(loss.item(), 4))
        if state["step"] % 25 == 0:
            log.info(
                "step %d  cpu %.0f s  lr %.2e  loss(25) %.3f",
                state["step"],
                state["cpu_s"],
                lr,
                float(np.mean(state["losses"][-25:])),
            )
            save()
    save()
    write_weights(net, out, state, split)
    return state


def write_weights(net, out: Path, state: dict, split: dict) -> None:
    from safetensors.torch import save_file

    meta = {
        "model": "monai SegResNet (init_filters 8), sigmoid TC/WT/ET",
        "training_data": "BraTS 2018 training data, 9 cases of ../shared/realdata/brain_brats2018 "
        f"(train ids: {', '.join(split['train'])}); Menze et al. 2015, Bakas et al. 2017",
        "terms": "BraTS data: research use under the challenge terms. Research use, not for clinical use.",
        "train_cpu_seconds": f"{state['cpu_s']:.0f}",
        "steps": str(state["step"]),
    }
    save_file(
        {k: v.contiguous() for k, v in net.state_dict().items()}, str(out / "segresnet.safetensors"), meta
    )


def ship(args) -> Path:
    """The run's weights as the demo file brain-segment loads (medseg metadata, atomically)."""
    from safetensors.torch import load_file
    from train_demo_weights_brain import recorded_split

    from medseg.brain.segment import TASK
    from medseg.brain.volume3d import Volume3DConfig
    from medseg.engine.checkpoint import CheckpointMeta, read_meta, save_weights

    out = Path(args.out)
    state = json.loads((out / "state.json").read_text())
    split = recorded_split(Path(args.data))
    cascade = read_meta(CASCADE)
    config = {
        "net": Volume3DConfig(roi=args.roi_ship, overlap=args.overlap_ship).to_dict(),
        "preprocess": cascade.config["preprocess"],
        "train_spacing_mm": [1.0, 1.0, 1.0],
        "training_cases": split["train"],
        "validation_cases": split["validation"],
        "split": cascade.config["split"],
        "train": {
            "patch": args.patch,
            "batch": args.batch,
            "lr": args.lr,
            "seed": args.seed,
            "spatial_aug": args.spatial_aug,
            "loss": "Dice + BCE on sigmoid TC/WT/ET",
            "optimizer": "AdamW, weight decay 1e-5, 20-step warm-up, cosine over the CPU budget",
            "cpu_budget_s": args.cpu_budget_s,
        },
    }
    meta = CheckpointMeta(
        model="brain-segresnet",
        task=TASK,
        config=config,
        training_data=cascade.training_data,
        notes=(
            f"MONAI SegResNet (Myronenko 2018), init_filters 8, trained by scripts/train_segresnet_brain.py "
            f"on the 9 training cases of the recorded split: {state['step']} steps, "
            f"{state['cpu_s']:.0f} CPU-s (one thread, time.process_time), the last weights (no epoch chosen "
            "on any case). Averaged with the InputCascadeCNN by brain-segment (docs/brain.md). "
            "Research use, not for clinical use."
        ),
        metrics={"train_cpu_seconds": round(state["cpu_s"]), "steps": state["step"]},
    )
    target = Path(args.ship_to)
    save_weights(target, load_file(str(out / "segresnet.safetensors")), meta)
    return target


def _cascade_regions():
    """The shipped InputCascadeCNN as (3, ...) TC / WT / ET probabilities of a normalised crop."""
    from medseg.brain.segment import load_brain_model, make_predictor, predict_volume

    model, meta, _prep = load_brain_model(CASCADE)
    predictor = make_predictor(model, device="cpu", postprocess="softmax", runtime="torch")

    def regions_of(norm: np.ndarray) -> np.ndarray:
        from medseg.brain.models import softmax_regions

        return softmax_regions(np.asarray(predict_volume(predictor, norm, arch=meta.config["net"]["arch"])))

    return regions_of


@torch.inference_mode()
def evaluate(args) -> dict:
    from monai.inferers import sliding_window_inference
    from safetensors.torch import load_file
    from train_demo_weights_brain import recorded_split

    from medseg.brain.evaluate import region_metrics
    from medseg.brain.postprocess import postprocess
    from medseg.brain.segment import region_volumes_ml
    from medseg.brain.volume3d import regions_to_labels

    out = Path(args.out)
    split = recorded_split(Path(args.data))
    net = build_net()
    net.load_state_dict(load_file(str(out / "segresnet.safetensors")))
    net.eval()
    cascade_regions = _cascade_regions() if args.with_cascade else None
    rows = []
    for name, norm, truth, spacing, mask in load_cases(Path(args.data), split["validation"]):
        t = time.perf_counter()
        logits = sliding_window_inference(
            torch.from_numpy(norm[None]), (args.roi,) * 3, 1, net, overlap=0.25, mode="gaussian"
        )
        prob = torch.sigmoid(logits)[0].numpy()
        if args.with_cascade:  # mean of the two nets' region probabilities
            prob = (prob + cascade_regions(norm)) / 2
        pred = regions_to_labels(prob)
        pred[~mask] = 0  # inside the brain only, as brain-segment
        if args.postprocess:  # brain-segment's default rules (chosen for the cascade, docs/brain.md)
            pred = postprocess(pred, spacing, mask=mask)
        seconds = time.perf_counter() - t
        m = region_metrics(pred, truth, spacing)
        vp, vt = region_volumes_ml(pred, spacing), region_volumes_ml(truth, spacing)
        rows.append(
            {
                "case": name,
                **{k: round(v, 4) for k, v in m.items()},
                "seconds_net": round(seconds, 1),
                "ET_ml_pred": vp["ET_ml"],
                "ET_ml_true": vt["ET_ml"],
            }
        )
        log.info("%s", rows[-1])
    mean = {
        k: round(float(np.mean([r[k] for r in rows])), 4) for k in rows[0] if k.startswith(("dice", "hd95"))
    }
    report = {
        "validation": rows,
        "mean": mean,
        "state": json.loads((out / "state.json").read_text())["cpu_s"],
    }
    name = ("validation_ensemble" if args.with_cascade else "validation") + (
        "_post" if args.postprocess else ""
    )
    name += ".json"
    (out / name).write_text(json.dumps(report, indent=1))
    return report


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--cpu-budget-s", type=float, default=CASCADE_CPU_S)
    p.add_argument("--patch", type=int, default=64)
    p.add_argument("--roi", type=int, default=96, help="sliding-window size at evaluation")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=19)
    p.add_argument(
        "--spatial-aug",
        type=float,
        default=0.0,
        help="probability of a rotation, of a scaling and of a gamma change per patch (0: flips and "
        "intensity jitter only, the shipped run)",
    )
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--evaluate-only", action="store_true")
    p.add_argument("--postprocess", action="store_true", help="apply brain-segment's default post-processing")
    p.add_argument("--with-cascade", action="store_true", help="average with the shipped cascade's regions")
    p.add_argument("--ship", action="store_true", help="write the run's weights as the demo file")
    p.add_argument("--ship-to", default=str(SHIPPED))
    p.add_argument(
        "--roi-ship", type=int, default=96, help="sliding-window edge recorded in the shipped file"
    )
    p.add_argument(
        "--overlap-ship",
        type=float,
        default=0.1,
        help="window overlap recorded in the shipped file (0.1: the validation Dice of 0.25 at half the time)",
    )
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    if args.ship:
        print(ship(args))
        return
    if not args.evaluate_only:
        train(args)
    print(json.dumps(evaluate(args)["mean"]))


if __name__ == "__main__":
    main()
