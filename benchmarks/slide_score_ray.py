"""Benchmark slide-score on Ray (S^3DNN): fused vs per-slide batching, EDF vs FIFO, memory bound.

    python benchmarks/slide_score_ray.py                    # all three parts, CPU, local Ray runtime
    python benchmarks/slide_score_ray.py --parts sim        # only the scheduling simulation (no Ray)
    python benchmarks/slide_score_ray.py --slides 24 --batch-size 8 --device cuda

1. **Fused vs per-slide batching** (``--parts fuse``): ``--slides`` small synthetic slides, each
   with fewer tissue tiles (``--tile`` 512) than one batch (``--batch-size`` 8), scored twice in
   the same Ray runtime by one model actor with the demo detector (feasibility filter off, so
   every tissue tile reaches the model): batches of one slide each (what a per-slide loop does),
   then the governor fusing tiles of all slides; a partial batch waits ``--max-wait`` s in both.
   Reported: end-to-end tiles/s, the actor's inference tiles/s (tiles / time inside
   ``predict``), mean batch size and histogram; the PTC counts are checked equal.
   ``--parts batch``: the model alone at batch 1, 4 and 8 (one thread): the most fusing can buy.
2. **EDF vs FIFO** (``--parts sim``): a simulated arrival stream (seeded) of background jobs
   (loose deadlines) and STAT jobs (tight deadlines) served by the :class:`Governor` with a
   service time ``a + b * batch`` per batch: share of deadlines met under FIFO, EDF with the
   fairness bound (every 4th tile the oldest) and pure EDF, plus the worst background lateness.
3. **Memory** (``--parts mem``): peak RSS growth of the slide task (a fresh worker per slide,
   torch imported before sampling) for slides of growing size (tile 1024, batch 4, read-ahead
   1), with 4 and 16 tiles in flight: bounded by the tiles in flight plus the read-ahead groups
   (3 MiB per tile), not by the slide size.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import random
import tempfile
import time
from pathlib import Path


def _write_slides(folder: Path, n: int, size: int, seed0: int) -> list[Path]:
    from medseg.synthetic.slides import SlideSpec, write_slide

    paths = []
    for k in range(n):
        p = folder / f"slide{seed0 + k:03d}.tiff"
        if not p.exists():
            write_slide(p, SlideSpec(width=size, height=size, seed=seed0 + k, positive_fraction=0.3))
        paths.append(p)
    return paths


def _factory(device: str):
    from medseg.engine.weights import resolve_weights
    from medseg.pathology.detector import DEMO_WEIGHTS, load_detector

    path, _demo = resolve_weights(None, demo=DEMO_WEIGHTS)
    return functools.partial(load_detector, str(path), device=device, amp="auto")


def part_fuse(args, work: Path) -> dict:
    from medseg.pathology.score import ScoreConfig
    from medseg.scale.slides import RayConfig, score_slides_ray

    slides = _write_slides(work / "small", args.slides, args.slide_size, 100)
    cfg = ScoreConfig(batch_size=args.batch_size, device=args.device, workers=1, read_ahead=1,
                      tile=args.tile, overlap=args.tile // 4, feasibility="none")  # fmt: skip
    factory = _factory(args.device)
    results = {"tile": args.tile, "batch_size": args.batch_size, "max_wait_s": args.max_wait}
    warm = RayConfig(actors=1, actor_cpus=1, slide_cpus=0.25, slides_in_flight=args.slides_in_flight)
    score_slides_ray(
        slides[:2], work / "warm", cfg, warm, detector_factory=factory, overwrite=True, report=False
    )
    tables = {}
    for mode in args.order.split(","):
        rc = RayConfig(actors=1, actor_cpus=1, slide_cpus=0.25, slides_in_flight=args.slides_in_flight,
                       tiles_in_flight=args.batch_size, fuse=mode == "fused", max_wait_s=args.max_wait)  # fmt: skip
        t0 = time.perf_counter()
        run = score_slides_ray(
            slides, work / mode, cfg, rc, detector_factory=factory, overwrite=True, report=False
        )
        wall = time.perf_counter() - t0
        served = run.summary["ray"]
        tiles = sum(int(i.metrics.get("tiles_feasible") or 0) for i in run.items)
        results[f"{mode}_tiles"] = tiles
        results[f"{mode}_wall_s"] = round(wall, 2)
        results[f"{mode}_tiles_per_s"] = round(tiles / wall, 3)
        results[f"{mode}_model_tiles_per_s"] = round(
            served["tiles_inferred"] / max(served["model_busy_s"], 1e-9), 3
        )
        results[f"{mode}_mean_batch"] = served["mean_batch"]
        results[f"{mode}_batch_sizes"] = served["batch_sizes"]
        tables[mode] = [(i.name, i.metrics.get("c4d_pos"), i.metrics.get("c4d_neg")) for i in run.items]
    tiss = [int(i.metrics.get("tiles_tissue") or 0) for i in run.items]
    results["tissue_tiles_per_slide_max"] = max(tiss)
    results["same_counts_both_ways"] = len({json.dumps(t) for t in tables.values()}) == 1
    results["speedup_fused_end_to_end"] = round(
        results["fused_tiles_per_s"] / results["per_slide_tiles_per_s"], 3
    )
    results["speedup_fused_model"] = round(
        results["fused_model_tiles_per_s"] / results["per_slide_model_tiles_per_s"], 3
    )
    return results


def simulate(policy_fair_every: int, *, seed: int = 0, jobs: int = 400, batch: int = 8, a: float = 0.25,
             b: float = 0.1, load: float = 0.9) -> dict:  # fmt: skip
    """Serve a seeded arrival stream with one Governor; share of job deadlines met."""
    from medseg.scale.governor import Governor, Request

    rng = random.Random(seed)
    mean_tiles = 0.8 * 6.5 + 0.2 * 2.5
    capacity = batch / (a + b * batch)  # tiles/s with full batches
    rate = load * capacity / mean_tiles  # jobs/s
    t, stream = 0.0, []
    for j in range(jobs):
        t += rng.expovariate(rate)
        stat = rng.random() < 0.2
        n = rng.randint(1, 4) if stat else rng.randint(3, 10)
        stream.append((t, f"j{j}", "stat" if stat else "bg", n, t + (8.0 if stat else 120.0)))
    now = [0.0]
    gov = Governor(batch, max_wait_s=0.05, fair_every=policy_fair_every, clock=lambda: now[0])
    remaining = {name: n for _t, name, _k, n, _d in stream}
    done: dict[str, float] = {}
    i = 0
    while i < len(stream) or len(gov):
        while i < len(stream) and stream[i][0] <= now[0]:
            at, name, kind, n, dl = stream[i]
            for _ in range(n):
                gov.put(Request(None, name, name, 0, dl, arrival=at, shape=1))
            i += 1
        chosen = gov.next_batch(now[0])
        nxt = stream[i][0] if i < len(stream) else math.inf
        wait = gov.wait_s(now[0])
        if not chosen and wait is not None and now[0] + wait <= nxt:  # the oldest tile waited enough
            now[0] += wait
            chosen = gov.next_batch(now[0], force=True)
        if chosen:
            now[0] += a + b * len(chosen)
            for r in chosen:
                remaining[r.job] -= 1
                if not remaining[r.job]:
                    done[r.job] = now[0]
            continue
        now[0] = nxt
    met = {"stat": [0, 0], "bg": [0, 0]}
    worst_bg = 0.0
    for at, name, kind, _n, dl in stream:
        met[kind][1] += 1
        met[kind][0] += done[name] <= dl
        if kind == "bg":
            worst_bg = max(worst_bg, done[name] - at)
    total = met["stat"][0] + met["bg"][0]
    return {
        "met_all": round(total / len(stream), 3),
        "met_stat": round(met["stat"][0] / met["stat"][1], 3),
        "met_background": round(met["bg"][0] / met["bg"][1], 3),
        "worst_background_s": round(worst_bg, 1),
    }


def part_sim(args) -> dict:
    out = {}
    for load in args.loads:
        for label, fair in (("fifo", 1), ("edf_fair4", 4), ("edf_pure", 0)):
            runs = [simulate(fair, seed=s, load=load) for s in range(args.sim_seeds)]
            for key in runs[0]:
                out[f"load{load}_{label}_{key}"] = round(sum(r[key] for r in runs) / len(runs), 3)
    out["sim_model"] = f"batch 8, service 0.25 s + 0.1 s/tile, {args.sim_seeds} seeds x 400 jobs per load"
    return out


def part_batch(args) -> dict:
    """The model alone, in this process: tiles/s at batch 1, 4, 8 (what fusing can buy at best)."""
    import numpy as np
    import torch

    torch.set_num_threads(1)
    det = _factory(args.device)()
    rng = np.random.default_rng(0)
    tiles = rng.integers(150, 255, (8, args.tile, args.tile, 3), dtype=np.uint8)
    det.predict(tiles[:2])  # warm-up
    out = {"tile": args.tile, "threads": 1}
    for n in (1, 4, 8):
        t0 = time.perf_counter()
        reps = max(1, 8 // n) * args.batch_reps
        for _ in range(reps):
            det.predict(tiles[:n])
        out[f"batch{n}_tiles_per_s"] = round(n * reps / (time.perf_counter() - t0), 3)
    out["batch8_vs_batch1"] = round(out["batch8_tiles_per_s"] / out["batch1_tiles_per_s"], 3)
    return out


def part_mem(args, work: Path) -> dict:
    from medseg.pathology.score import ScoreConfig
    from medseg.scale.slides import RayConfig, score_slides_ray

    cfg = ScoreConfig(batch_size=4, device=args.device, workers=1, read_ahead=1, feasibility="none")
    factory = _factory(args.device)
    out = {"batch_size": 4, "read_ahead_groups": 2}
    for size in args.mem_sizes:
        slides = _write_slides(work / f"mem{size}", 1, size, 500)
        for limit in (4, 16):
            rc = RayConfig(actors=1, actor_cpus=1, slide_cpus=0.5, tiles_in_flight=limit, track_memory=True)
            run = score_slides_ray(slides, work / f"m{size}_{limit}", cfg, rc, detector_factory=factory,
                                   overwrite=True, report=False)  # fmt: skip
            item = run.items[0]
            st = item.metrics.get("ray", {})
            out[f"size{size}_inflight{limit}"] = {
                "tissue_tiles": item.metrics.get("tiles_tissue"),
                "max_tiles_in_flight": st.get("max_tiles_in_flight"),
                "peak_rss_growth_mb": st.get("peak_rss_growth_mb"),
            }
    out["tile_mb"] = round(1024 * 1024 * 3 / 2**20, 1)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parts", default="batch,fuse,sim,mem")
    ap.add_argument("--batch-reps", type=int, default=2)
    ap.add_argument("--slides", type=int, default=16)
    ap.add_argument(
        "--slide-size", type=int, default=896, help="px at 0.5 um/px (896: at most 4 tiles of 512)"
    )
    ap.add_argument("--tile", type=int, default=512)
    ap.add_argument("--max-wait", type=float, default=0.5, help="governor: a partial batch waits this long")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--slides-in-flight", type=int, default=8)
    ap.add_argument("--order", default="per_slide,fused")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--loads", type=float, nargs="+", default=[0.9, 1.1], help="offered load / capacity")
    ap.add_argument("--sim-seeds", type=int, default=5)
    ap.add_argument("--mem-sizes", type=int, nargs="+", default=[2048, 4096])
    ap.add_argument("--work", type=Path, default=None)
    ap.add_argument("--num-cpus", type=int, default=None)
    args = ap.parse_args()
    parts = set(args.parts.split(","))
    results: dict = {}
    if "batch" in parts:
        results["model_batch"] = part_batch(args)
        print(json.dumps(results["model_batch"], indent=1), flush=True)
    if "sim" in parts:
        results["edf_vs_fifo"] = part_sim(args)
        print(json.dumps(results["edf_vs_fifo"], indent=1), flush=True)
    if parts & {"fuse", "mem"}:
        import ray

        ray.init(
            num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=False, logging_level="WARNING"
        )
        work = args.work or Path(tempfile.mkdtemp(prefix="slide_score_ray_"))
        work.mkdir(parents=True, exist_ok=True)
        if "fuse" in parts:
            results["fused_vs_per_slide"] = part_fuse(args, work)
            print(json.dumps(results["fused_vs_per_slide"], indent=1), flush=True)
        if "mem" in parts:
            results["memory"] = part_mem(args, work)
            print(json.dumps(results["memory"], indent=1), flush=True)
        ray.shutdown()
    print(json.dumps({"benchmark": "slide_score_ray", **results}))


if __name__ == "__main__":
    main()
