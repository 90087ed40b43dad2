"""Star-convex polygons on the cells U-Net (StarDist, Schmidt et al. 2018): issue 18's instance-method comparison.

The same net as the shipped cells weights (unet2015 base 8, batch norm), fine-tuned from them with a
new 1x1 head: one object-probability channel (target: the normalised distance to the object's edge)
and ``--rays`` ray-distance channels (target: :func:`medseg.cells.stardist.star_distances`), StarDist's
loss (BCE + 0.2 x the object-weighted mean absolute ray error). Same data as the shipped weights: the
recorded DSB 2018 split's training images, 20 of them held out (seed 2019) to pick the epoch and the
decoder thresholds; the 60 validation images only measure (``--evaluate``). Research use, not for
clinical use. A comparison, not a shipped model:

    python scripts/train_stardist_cells.py --data ../shared/realdata/nuclei_dsb2018_stage1 --out ../cells_runs/stardist --cpu-minutes 50
    python scripts/train_stardist_cells.py ... --resume            # continue after a stop (same budget)
    python scripts/train_stardist_cells.py ... --evaluate          # held-out tuning, then the 60 validation images
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
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
MAIN = ROOT / "medseg" / "weights" / "cells" / "demo_unet2015.safetensors"
log = logging.getLogger("stardist")
TILE, OUT = 316, 132  # the shipped weights' training patches: 316 px in, 132 px of output


def build(n_rays: int, init: Path, hidden: int = 64):
    """The shipped net with a per-pixel head of (1 + n_rays) outputs: body from ``init``; the head is a
    1x1 two-layer MLP (the base-8 net ends in 8 features, too few for 32 rays through one linear map;
    StarDist puts a 128-channel convolution there). Its probability output starts as the shipped
    head's interior-vs-background logit, the ray outputs near the mean ray length."""
    from torch import nn

    from medseg.cells.model import load_model

    model, config, _ = load_model(init)
    old = model.head
    head = nn.Sequential(nn.Conv2d(old.in_channels, hidden, 1), nn.ReLU(), nn.Conv2d(hidden, 1 + n_rays, 1))
    skip = nn.Conv2d(old.in_channels, 1 + n_rays, 1)  # the linear path, so the start is the shipped logit
    with torch.no_grad():
        head[2].weight.mul_(0.1)
        head[2].bias.zero_()
        skip.weight.zero_()
        skip.bias.fill_(6.0)
        skip.weight[0] = old.weight[1] - old.weight[0]
        skip.bias[0] = old.bias[1] - old.bias[0]
    model.head = _Head(head, skip)
    config.num_classes = 1 + n_rays
    return model, config


class _Head(torch.nn.Module):
    def __init__(self, mlp, skip) -> None:
        super().__init__()
        self.mlp, self.skip = mlp, skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(x) + self.skip(x)


def samples(data: Path, ids: list[str]):
    from train_demo_weights_cells import load_samples

    out = load_samples(data, ids, local=False, kind="3class")
    for s in out:  # the patch sampler carries the instance labels as the "target" (nearest resampling)
        s.target = s.labels.astype(np.float32)
        s.weight = np.ones_like(s.image)
    return out


def draw(rng, pool, probs, *, batch: int, n_rays: int, margin: int, extra: int = 24):
    from medseg.cells.augment import AugmentConfig, augment
    from medseg.cells.stardist import star_distances
    from medseg.cells.targets import normalised_distance
    from medseg.cells.train import _intensity_jitter, _patch

    crop = (TILE - OUT) // 2
    e = min(extra, crop)
    xs, ps, ds = [], [], []
    for index in rng.choice(len(pool), size=batch, p=probs):
        scale = float(np.exp(rng.uniform(np.log(0.6), np.log(1.6))))
        parts = _patch(rng, pool[index], tile=TILE, margin=margin, out_size=OUT, scale=scale)
        image, labels, _ = augment(rng, parts, [1, 0, 1], AugmentConfig())
        image = _intensity_jitter(rng, image, 0.05)
        region = np.rint(labels[crop - e : crop + OUT + e, crop - e : crop + OUT + e]).astype(np.int32)
        core = (slice(e, e + OUT), slice(e, e + OUT))
        xs.append(image[None])
        ps.append(normalised_distance(region)[core])
        ds.append(star_distances(region, n_rays, max_dist=96)[(slice(None), *core)])
    return (
        torch.from_numpy(np.stack(xs).astype(np.float32)),
        torch.from_numpy(np.stack(ps)),
        torch.from_numpy(np.stack(ds)),
    )


def loss_fn(out: torch.Tensor, prob: torch.Tensor, dist: torch.Tensor) -> torch.Tensor:
    """StarDist's loss: BCE on the object probability + 0.2 x object-weighted mean absolute ray error."""
    bce = F.binary_cross_entropy_with_logits(out[:, 0], prob)
    mae = (prob[:, None] * (out[:, 1:] - dist).abs()).mean() / prob.mean().clamp_min(1e-6)
    return bce + 0.2 * mae


def predict_maps(model, config, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from medseg.cells.predict import make_predictor, predict_image

    predictor = make_predictor(model, device="cpu", postprocess="float", runtime="torch")
    maps = predict_image(predictor, config, image, tile=512, batch_size=1)
    model.to(memory_format=torch.contiguous_format)
    return 1 / (1 + np.exp(-maps[0])), np.maximum(maps[1:], 0)


def pooled_ap(model, config, pool, *, prob_thresh: float = 0.5, nms: float = 0.4, cache=None) -> float:
    from medseg.cells.evaluate import match_objects
    from medseg.cells.stardist import polygons_to_labels

    tp = fp = fn = 0
    for i, s in enumerate(pool):
        if cache is not None and i in cache:
            prob, dist = cache[i]
        else:
            prob, dist = predict_maps(model, config, s.image)
            if cache is not None:
                cache[i] = (prob, dist)
        m = match_objects(s.labels, polygons_to_labels(prob, dist, prob_thresh=prob_thresh, nms_thresh=nms))
        tp, fp, fn = tp + m["tp"], fp + m["fp"], fn + m["fn"]
    return tp / max(tp + fp + fn, 1)


def split_ids(data: Path) -> tuple[list[str], list[str], dict[str, str]]:
    from train_demo_weights_cells import SPLIT_SEED, load_or_make_split

    split = load_or_make_split(data)
    rng = np.random.default_rng(SPLIT_SEED + 1)  # the held-out draw of train_demo_weights_cells.py
    train_ids = list(split["train"])
    held = sorted(rng.choice(train_ids, size=20, replace=False).tolist())
    return [i for i in train_ids if i not in set(held)], held, split["validation"]


def train(args) -> None:
    from medseg.cells.model import model_margin

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    train_ids, held, _ = split_ids(Path(args.data))
    pool, val = samples(Path(args.data), train_ids), samples(Path(args.data), held)
    area = np.array([np.sqrt(s.image.size) for s in pool])
    probs = area / area.sum()
    model, config = build(args.rays, Path(args.init))
    margin = model_margin(config)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    state = {"step": 0, "epoch": 0, "cpu_s": 0.0, "best": -1.0, "history": []}
    if args.resume and (out / "state.pt").is_file():
        saved = torch.load(out / "state.pt", weights_only=True)
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["opt"])
        state = json.loads((out / "state.json").read_text())
    rng = np.random.default_rng(args.seed + state["step"])
    budget = args.cpu_minutes * 60
    t0, start = time.process_time(), state["cpu_s"]
    while state["cpu_s"] < budget:
        model.train()
        losses = []
        for _ in range(args.steps):
            frac = min(state["cpu_s"] / budget, 1.0)
            for g in opt.param_groups:
                g["lr"] = args.lr * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * frac)))
            x, p, d = draw(rng, pool, probs, batch=args.batch, n_rays=args.rays, margin=margin)
            loss = loss_fn(model(x), p, d)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
            state["step"] += 1
            state["cpu_s"] = start + time.process_time() - t0
        model.eval()
        ap = pooled_ap(model, config, val)
        state["epoch"] += 1
        state["cpu_s"] = start + time.process_time() - t0
        state["history"].append(
            {
                "epoch": state["epoch"],
                "loss": round(float(np.mean(losses)), 4),
                "held_ap50": round(ap, 4),
                "cpu_s": round(state["cpu_s"]),
            }
        )
        log.info("%s", state["history"][-1])
        if ap > state["best"]:
            state["best"] = ap
            torch.save({k: v.clone() for k, v in model.state_dict().items()}, out / "best.tmp")
            (out / "best.tmp").replace(out / "best.pt")
        torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, out / "state.tmp")
        (out / "state.tmp").replace(out / "state.pt")
        (out / "state.json").write_text(json.dumps(state, indent=1))


def evaluate(args) -> dict:
    """Decoder thresholds chosen on the 20 held-out training images, then the 60 validation images once."""
    from medseg.cells.evaluate import evaluate_labels, summarise
    from medseg.cells.stardist import polygons_to_labels

    out = Path(args.out)
    _, held, val_kinds = split_ids(Path(args.data))
    model, config = build(args.rays, Path(args.init))
    model.load_state_dict(torch.load(out / "best.pt", weights_only=True))
    model.eval()
    cache: dict = {}
    held_pool = samples(Path(args.data), held)
    grid = [(pt, nms) for pt in (0.4, 0.5, 0.6) for nms in (0.3, 0.4, 0.5)]
    scores = {g: pooled_ap(model, config, held_pool, prob_thresh=g[0], nms=g[1], cache=cache) for g in grid}
    best = max(scores, key=scores.get)
    log.info(
        "held-out AP@0.5 by (prob, nms): %s; chosen %s",
        {f"{k}": round(v, 4) for k, v in scores.items()},
        best,
    )
    ids = list(val_kinds)
    rows, kinds, seconds = [], [], 0.0
    for i, s in zip(ids, samples(Path(args.data), ids)):
        prob, dist = predict_maps(model, config, s.image)
        t = time.perf_counter()
        pred = polygons_to_labels(prob, dist, prob_thresh=best[0], nms_thresh=best[1])
        seconds += time.perf_counter() - t
        rows.append(evaluate_labels(s.labels, pred))
        kinds.append(val_kinds[i])
    overall = summarise(rows)
    report = {
        "thresholds": {"prob": best[0], "nms": best[1]},
        "held_out_grid": {f"{k[0]}/{k[1]}": round(v, 4) for k, v in scores.items()},
        "validation": {"ap50": round(overall["ap50"], 4), "map_50_95": round(overall["map_50_95"], 4)},
        "by_kind": {
            k: round(summarise([r for r, kk in zip(rows, kinds) if kk == k])["ap50"], 4)
            for k in sorted(set(kinds))
        },
        "decode_seconds_per_image": round(seconds / len(rows), 3),
        "train_state": {
            k: v for k, v in json.loads((out / "state.json").read_text()).items() if k != "history"
        },
    }
    (out / "validation.json").write_text(json.dumps(report, indent=1))
    return report


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--init", default=str(MAIN))
    p.add_argument("--rays", type=int, default=32)
    p.add_argument("--cpu-minutes", type=float, default=50)
    p.add_argument("--steps", type=int, default=40, help="batches per epoch (held-out AP after each)")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--seed", type=int, default=18)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--evaluate", action="store_true")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    if args.evaluate:
        print(json.dumps(evaluate(args)))
    else:
        train(args)


if __name__ == "__main__":
    main()
