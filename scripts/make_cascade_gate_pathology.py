"""Train the cascade gate (``slide-score --cascade``) on synthetic tiles and ship it as demo weights.

    OMP_NUM_THREADS=1 python scripts/make_cascade_gate_pathology.py            # ~3 min tiles + <= 5 min training
    python scripts/make_cascade_gate_pathology.py --out /tmp/gate.safetensors --minutes 1

Tiles: 1024 px windows at 0.5 um/px (JPEG-compressed like the synthetic slides' tiles) of synthetic
slides (seeds 6000-6017 train, 6100-6105 calibration), labelled "holds a PTC" when a PTC centre
lies in the tile's core (64 px inside its edges: the part whose detections slide-score keeps with
the default --overlap 160), "empty" when no PTC centre lies in the tile; tiles with PTCs only in
the outer ring belong to their neighbours and are left out. To teach the gate that an empty-looking tile is not always empty and a brown one
not always full, the slides mix: only C4d- PTCs (no DAB at all), only C4d+, sparse PTCs, and
PTC-free tissue (PTCs removed; glomeruli with brown capillary loops and tubules kept), plus the
tissue edges. The calibration tiles fit the temperature and the skip threshold
(:func:`medseg.pathology.cascade.choose_skip_threshold`). Synthetic only: not for clinical use.
"""

from __future__ import annotations

import argparse
import io
import logging
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
GATE_OUT = ROOT / "medseg" / "weights" / "pathology" / "c4d_cascade_gate_demo.safetensors"
TRAIN_SEEDS = tuple(range(6000, 6018))
CAL_SEEDS = tuple(range(6100, 6106))
TILE = 1024
# slide-score keeps a tile's detections whose centre is in its core: all but overlap / 2 - 16 px
# (tolerance) = 64 px at every inner edge with the default overlap of 160 px. A PTC centred in that
# outer ring is the neighbour's, so "holds a PTC" means a PTC centre at least INSET px inside.
INSET = 64
log = logging.getLogger("medseg")


def synthetic_slide(seed: int):
    """One of the mixed training slides (the mix cycles with the seed)."""
    from medseg.synthetic.slides import SlideSpec, SyntheticSlide

    kind = seed % 6
    spec = SlideSpec(
        width=4096,
        height=3072,
        seed=seed,
        positive_fraction=(0.0, 1.0, 0.3, 0.3, 0.3, 0.6)[kind],
        ptc_density=(0.55, 0.55, 0.12, 0.55, 0.55, 0.55)[kind],
        arc_fraction=0.1,
    )
    slide = SyntheticSlide(spec)
    if (
        kind >= 3
    ):  # PTC-free tissue: the left half (kind 3) or all of it (kinds 4, 5); glomeruli, tubules stay
        slide.without_ptcs(0, 0, spec.width if kind >= 4 else spec.width / 2, spec.height)
    return slide


def _jpeg(img: np.ndarray, quality: int = 85) -> np.ndarray:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=quality)
    return np.asarray(Image.open(buf).convert("RGB"))


def make_tiles(seeds, regions_per_slide: int, rng: np.random.Generator, factor: int):
    """Gate inputs (N, 3, 256, 256) uint8 and labels: 2048 px regions cut into 9 overlapping tiles."""
    import torch

    from medseg.pathology.cascade import downsample_tiles

    xs_all, ys_all = [], []
    for seed in seeds:
        slide = synthetic_slide(seed)
        ptcs = slide.ptcs
        w, h = slide.spec.width, slide.spec.height
        for _ in range(regions_per_slide):
            x0 = int(rng.integers(-TILE // 2, w - TILE - TILE // 2))
            y0 = int(rng.integers(-TILE // 2, h - TILE - TILE // 2))
            region = _jpeg(slide.render(x0, y0, 2 * TILE, 2 * TILE))
            coarse = slide.tissue_mask(
                x0 + np.arange(0, 2 * TILE, 16) + 8.0, y0 + np.arange(0, 2 * TILE, 16) + 8.0
            )
            for oy in range(0, TILE + 1, TILE // 2):
                for ox in range(0, TILE + 1, TILE // 2):
                    if coarse[oy // 16 : (oy + TILE) // 16, ox // 16 : (ox + TILE) // 16].mean() < 0.05:
                        continue  # slide-score never reads a tile with under 5 % tissue
                    tx, ty = x0 + ox, y0 + oy
                    cx, cy = ptcs[:, 1] - tx, ptcs[:, 2] - ty
                    inside = (cx >= 0) & (cx < TILE) & (cy >= 0) & (cy < TILE)
                    core = (cx >= INSET) & (cx < TILE - INSET) & (cy >= INSET) & (cy < TILE - INSET)
                    if inside.any() and not core.any():
                        continue  # PTCs only in the outer ring: the neighbouring tile owns them
                    crop = torch.from_numpy(np.ascontiguousarray(region[oy : oy + TILE, ox : ox + TILE]))[
                        None
                    ]
                    small = downsample_tiles(crop, factor)[0]
                    xs_all.append(small.mul(255).round().to(torch.uint8))  # compact: 0.2 MB a tile
                    ys_all.append(bool(core.any()))
        log.info("seed %d: %d tiles so far (%d with a PTC)", seed, len(ys_all), sum(ys_all))
    return torch.stack(xs_all), np.array(ys_all)


def train(x, y, minutes: float, config, seed: int = 0):
    import torch

    from medseg.pathology.cascade import build_gate

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = build_gate(config=config).train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    target = torch.as_tensor(y, dtype=torch.float32)
    pos_weight = torch.tensor(max(1.0, (~y).sum() / max(1, y.sum())))  # balance the classes
    t0, steps, epoch = time.perf_counter(), 0, 0
    while time.perf_counter() - t0 < minutes * 60:
        epoch += 1
        for idx in np.array_split(rng.permutation(len(y)), max(1, len(y) // 32)):
            xb = x[idx].float() / 255
            if rng.random() < 0.5:
                xb = xb.flip(3)
            if rng.random() < 0.5:
                xb = xb.flip(2)
            if rng.random() < 0.5:
                xb = xb.transpose(2, 3)
            xb = (
                xb * torch.empty(len(idx), 3, 1, 1).uniform_(0.92, 1.08)
                + torch.empty(len(idx), 1, 1, 1).uniform_(-0.03, 0.03)
            ).clamp(0, 1)
            loss = torch.nn.functional.binary_cross_entropy_with_logits(
                model(xb), target[idx], pos_weight=pos_weight
            )
            opt.zero_grad()
            loss.backward()
            opt.step()
            steps += 1
            if time.perf_counter() - t0 >= minutes * 60:
                break
        log.info(
            "epoch %d: loss %.4f (%d steps, %.0f s)", epoch, float(loss), steps, time.perf_counter() - t0
        )
    return model.eval(), {
        "epochs": epoch,
        "steps": steps,
        "train_seconds": round(time.perf_counter() - t0, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=GATE_OUT)
    parser.add_argument("--minutes", type=float, default=4.0, help="training time (1 thread)")
    parser.add_argument("--regions", type=int, default=3, help="2048 px regions rendered per slide")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    import torch

    from medseg.engine.checkpoint import save_weights
    from medseg.pathology.cascade import GateConfig, choose_skip_threshold, fit_temperature, gate_meta

    torch.set_num_threads(1)
    cfg = GateConfig()
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    x, y = make_tiles(TRAIN_SEEDS, args.regions, rng, cfg.downsample)
    xc, yc = make_tiles(CAL_SEEDS, args.regions, rng, cfg.downsample)
    data_s = time.perf_counter() - t0
    model, info = train(x, y, args.minutes, cfg)
    with torch.inference_mode():
        logits = torch.cat([model(xc[i : i + 32].float() / 255) for i in range(0, len(yc), 32)]).numpy()
    cfg.temperature = fit_temperature(logits, yc)
    probs = 1 / (1 + np.exp(-logits / cfg.temperature))
    cfg.skip_below = choose_skip_threshold(probs, yc)
    skip = probs < cfg.skip_below
    metrics = {
        **info,
        "data_seconds": round(data_s, 1),
        "train_tiles": int(len(y)),
        "train_tiles_with_ptc": int(y.sum()),
        "calibration_tiles": int(len(yc)),
        "calibration_tiles_with_ptc": int(yc.sum()),
        "calibration_empty_tiles_skipped": int((skip & ~yc).sum()),
        "calibration_ptc_tiles_skipped": int((skip & yc).sum()),
        "calibration_accuracy_at_0.5": round(float(((probs >= 0.5) == yc).mean()), 3),
    }
    save_weights(
        args.out,
        {k: v.contiguous() for k, v in model.state_dict().items()},
        gate_meta(
            cfg,
            metrics,
            f"synthetic C4d tiles, seeds {TRAIN_SEEDS[0]}-{TRAIN_SEEDS[-1]} (calibration {CAL_SEEDS[0]}-"
            f"{CAL_SEEDS[-1]}), scripts/make_cascade_gate_pathology.py; not for clinical use",
        ),
    )
    log.info("gate: T %.3f, skip below %.4f, %s -> %s", cfg.temperature, cfg.skip_below, metrics, args.out)


if __name__ == "__main__":
    main()
