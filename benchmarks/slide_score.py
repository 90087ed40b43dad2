"""Benchmark whole-slide C4d scoring: tiles/s, wall time, peak RSS, and the ratios to a plain-torch
reference and to a naive baseline.

    python benchmarks/slide_score.py                               # 2 slide sizes, same tissue, CPU/GPU auto
    python benchmarks/slide_score.py --sizes 30000 100000 --tissue-mm 3
    python benchmarks/slide_score.py --tissue-mm 10 --arch resnet50-fpn --device cuda   # 1 cm^2 GPU target

Each slide is generated (mostly glass, a square of tissue of ``--tissue-mm`` side in the middle),
then scored in a fresh child process by

- the pipeline (``score_slide``: tissue map, tiles read ahead through the engine prefetcher,
  feasibility filter, batched inference through the engine Predictor, merging, NMS, thumbnail);
- the reference: the same network called directly in plain torch (``channels_last`` model,
  ``inference_mode``, the same batch size, autocast as the pipeline on CUDA) on the same tissue
  tiles, read one after the other by the same reader: what the engine must not slow down;
- the naive baseline (sequential ``read_region`` at level 0 + one forward pass per tile),

so each peak RSS (VmHWM) is that run's alone. ``tiles`` are the tissue tiles read, ``scored`` those
the feasibility filter passed to the detector (the reference and the baseline run every tile). ``ratio vs reference`` = pipeline tiles/s divided by
reference tiles/s (1.0 = no overhead; above 1 when reading ahead hides decoding); ``speedup vs
naive`` = naive wall time / pipeline wall time. Peak RSS must not grow with the slide size at equal
tissue. ``--arch resnet50-fpn`` times a randomly initialised ResNet-50-FPN (speed only).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _peak_rss_mb() -> float:
    text = Path("/proc/self/status").read_text() if Path("/proc/self/status").exists() else ""
    m = re.search(r"VmHWM:\s+(\d+)", text)
    if m:
        return int(m.group(1)) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _detector(args):
    import torch

    from medseg.pathology.detector import (
        Detector,
        build_resnet50_fpn_detector,
        load_detector,
        resnet50_config,
    )

    if args.arch == "resnet50-fpn":
        torch.manual_seed(0)
        return Detector(
            build_resnet50_fpn_detector(), resnet50_config(), device=args.device, source="random r50"
        )
    return load_detector(args.weights, device=args.device)


def naive_score(path: Path, detector, cfg) -> dict:
    """Baseline: the same tissue tiles, read one by one at level 0, one forward pass each."""
    import numpy as np
    from PIL import Image

    from medseg.pathology.feasibility import load_hook
    from medseg.pathology.score import class_nms, merge_tile_detections
    from medseg.pathology.slide import detect_tissue, open_slide
    from medseg.pathology.tiling import make_grid, plan_slide_tiles

    t0 = time.perf_counter()
    feasible = load_hook(cfg.feasibility)
    boxes, labels, scores = [], [], []
    with open_slide(path) as slide:
        grid = make_grid(slide, target_mpp=cfg.target_mpp, tile=cfg.tile, overlap=cfg.overlap)
        tiles = plan_slide_tiles(slide, grid, detect_tissue(slide), min_tissue=cfg.min_tissue)
        for t in tiles:
            size = int(round(cfg.tile * grid.scale))
            img = np.asarray(slide.handle.read_region((t.read_x, t.read_y), 0, (size, size)).convert("RGB"))
            if size != cfg.tile:
                img = np.asarray(Image.fromarray(img).resize((cfg.tile, cfg.tile)))
            if not feasible(img)[0]:
                continue
            ((b, lab, s),) = detector.predict(img[None], min_score=cfg.min_score)
            b, lab, s = merge_tile_detections(grid, t, b, lab, s)
            boxes.append(b)
            labels.append(lab)
            scores.append(s)
    b, lab, _s = class_nms(np.concatenate(boxes), np.concatenate(labels), np.concatenate(scores), cfg.nms_iou)
    return {"tiles": len(tiles), "ptcs": int(len(b)), "wall_s": time.perf_counter() - t0}


def reference_score(path: Path, detector, cfg) -> dict:
    """Plain torch, written here: the same network and tiles, ``channels_last`` + ``inference_mode``,
    the same batch size; tiles read one after the other (no prefetch, no feasibility, no merging)."""
    import numpy as np
    import torch

    from medseg.engine.runtime import autocast
    from medseg.pathology.slide import detect_tissue, open_slide
    from medseg.pathology.tiling import make_grid, plan_slide_tiles, read_tile

    device = detector.device
    model = detector.model.to(device).eval().to(memory_format=torch.channels_last)
    amp = detector.predictor.amp_dtype
    t0 = time.perf_counter()
    n_boxes = 0
    with open_slide(path) as slide:
        grid = make_grid(slide, target_mpp=cfg.target_mpp, tile=cfg.tile, overlap=cfg.overlap)
        tiles = plan_slide_tiles(slide, grid, detect_tissue(slide), min_tissue=cfg.min_tissue)
        for i in range(0, len(tiles), cfg.batch_size):
            batch = np.stack([read_tile(slide, t, cfg.tile) for t in tiles[i : i + cfg.batch_size]])
            with torch.inference_mode(), autocast(device, amp):
                x = torch.from_numpy(batch).to(device).permute(0, 3, 1, 2).float().div_(255.0)
                out = model(list(x))
            n_boxes += sum(int((o["scores"] >= cfg.min_score).sum()) for o in out)
    return {"tiles": len(tiles), "ptcs": n_boxes, "wall_s": time.perf_counter() - t0}


def engine_vs_plain(path: Path, detector, cfg, repeats: int = 8) -> dict:
    """Inference only, on one in-memory batch of tissue tiles: ``Detector.predict`` (engine Predictor)
    against the plain-torch call of the same network (channels_last, inference_mode), ``repeats``
    runs each, interleaved in alternating order. Throughput ratio = median plain time / median
    engine time (medians, because on a shared CPU single runs swing by 2x)."""
    import numpy as np
    import torch

    from medseg.engine.runtime import autocast
    from medseg.pathology.slide import detect_tissue, open_slide
    from medseg.pathology.tiling import make_grid, plan_slide_tiles, read_tile

    with open_slide(path) as slide:
        grid = make_grid(slide, target_mpp=cfg.target_mpp, tile=cfg.tile, overlap=cfg.overlap)
        tiles = plan_slide_tiles(slide, grid, detect_tissue(slide), min_tissue=cfg.min_tissue)
        batch = np.stack([read_tile(slide, t, cfg.tile) for t in tiles[: cfg.batch_size]])
    device, amp = detector.device, detector.predictor.amp_dtype
    model = detector.model  # the same module object, already channels_last on the device

    def plain():
        with torch.inference_mode(), autocast(device, amp):
            x = torch.from_numpy(batch).to(device).permute(0, 3, 1, 2).float().div_(255.0)
            out = model(list(x))
        return [(o["boxes"].cpu().numpy(), o["labels"].cpu().numpy(), o["scores"].cpu().numpy()) for o in out]

    def engine():
        return detector.predict(batch, min_score=0.0)

    plain(), engine()  # warm-up
    t_plain, t_engine = [], []
    for i in range(repeats):
        for fn, times in ((plain, t_plain), (engine, t_engine))[:: 1 if i % 2 == 0 else -1]:
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
    p, e = float(np.median(t_plain)), float(np.median(t_engine))
    return {
        "batch": len(batch),
        "plain_s": round(p, 4),
        "engine_s": round(e, 4),
        "ratio": round(p / e, 3),
        "ratio_of_best": round(min(t_plain) / min(t_engine), 3),
    }


def child(args) -> None:
    """One measurement in this (fresh) process; prints a JSON line."""
    import torch

    from medseg.pathology.score import ScoreConfig, score_slide

    torch.set_num_threads(args.threads)
    detector = _detector(args)
    cfg = ScoreConfig(batch_size=args.batch_size, workers=args.workers, device=args.device)
    if args.mode == "engine":
        print(json.dumps(engine_vs_plain(Path(args.child), detector, cfg)))
        return
    if args.mode == "pipeline":
        res = score_slide(args.child, detector, cfg)
        out = {
            "tiles": res.summary["tiles_read"],
            "feasible": res.summary["tiles_feasible"],
            "ptcs": res.summary["ptc_total"],
            "wall_s": res.summary["wall_s"],
        }
    elif args.mode == "reference":
        out = reference_score(Path(args.child), detector, cfg)
    else:
        out = naive_score(Path(args.child), detector, cfg)
    out["peak_rss_mb"] = round(_peak_rss_mb(), 1)
    out["tiles_per_s"] = round(out["tiles"] / out["wall_s"], 2)
    out["runtime"] = detector.describe()
    print(json.dumps(out))


def run_child(args, slide: Path, mode: str) -> dict:
    """Best (shortest wall time) of ``--repeat`` fresh child processes."""
    runs = [_run_child_once(args, slide, mode) for _ in range(max(1, args.repeat))]
    return min(runs, key=lambda r: r["wall_s"])


def _run_child_once(args, slide: Path, mode: str) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--child",
        str(slide),
        "--mode",
        mode,
        "--device",
        args.device,
        "--arch",
        args.arch,
        "--weights",
        str(args.weights),
        "--threads",
        str(args.threads),
        "--batch-size",
        str(args.batch_size),
        "--workers",
        str(args.workers),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--sizes", type=int, nargs="+", default=[20000, 60000], help="slide sides in px (0.5 um/px)"
    )
    p.add_argument("--tissue-mm", type=float, default=3.0, help="side of the square tissue region (mm)")
    p.add_argument("--device", default="auto")
    p.add_argument("--arch", choices=["light", "resnet50-fpn"], default="light")
    p.add_argument("--weights", type=Path, default=None, help="detector weights (default: the demo detector)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument(
        "--no-baseline", action="store_true", help="skip the naive baseline (the reference always runs)"
    )
    p.add_argument("--repeat", type=int, default=1, help="runs per measurement; the fastest is kept")
    p.add_argument("--json", action="store_true")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--mode", default="pipeline", help=argparse.SUPPRESS)
    p.add_argument(
        "--runtimes",
        action="store_true",
        help="PyTorch vs OpenVINO: slide-score on the sample slide per runtime (issue 21)",
    )
    args = p.parse_args()
    if args.runtimes:
        from _runtimes import print_result, slide

        print_result("slide_score --runtimes", slide(args), None)
        return
    if args.weights is None:
        from medseg.engine.weights import demo_weights_path
        from medseg.pathology.detector import DEMO_WEIGHTS

        args.weights = demo_weights_path(DEMO_WEIGHTS)
    if args.child:
        child(args)
        return

    from medseg.synthetic.slides import SlideSpec, write_slide

    side = int(args.tissue_mm * 1000 / 0.5)
    results, engine = [], None
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            if size < side + 512:
                raise SystemExit(f"--sizes must exceed the tissue side ({side} px)")
            c = size // 2
            path = Path(tmp) / f"bench_{size}.tiff"
            t0 = time.perf_counter()
            write_slide(
                path,
                SlideSpec(
                    width=size,
                    height=size,
                    seed=99,
                    tissue_box=(c - side // 2, c - side // 2, c + side // 2, c + side // 2),
                    tissue_fraction=0.95,
                ),
            )
            gen_s = time.perf_counter() - t0
            row = {
                "slide_px": size,
                "gigapixels": round(size * size / 1e9, 2),
                "generate_s": round(gen_s, 1),
                "pipeline": run_child(args, path, "pipeline"),
                "reference": run_child(args, path, "reference"),
            }
            if engine is None:
                engine = _run_child_once(args, path, "engine")
            row["ratio_vs_reference"] = round(
                row["pipeline"]["tiles_per_s"] / row["reference"]["tiles_per_s"], 3
            )
            if not args.no_baseline:
                row["naive"] = run_child(args, path, "naive")
                row["speedup"] = round(row["naive"]["wall_s"] / row["pipeline"]["wall_s"], 2)
            results.append(row)
            path.unlink()
    if args.json:
        print(
            json.dumps(
                {
                    "device": args.device,
                    "arch": args.arch,
                    "engine_vs_plain_torch": engine,
                    "results": results,
                },
                indent=2,
            )
        )
        return
    runtime = results[0]["pipeline"]["runtime"] if results else {}
    print(
        f"device={runtime.get('device', args.device)} precision={runtime.get('amp', '')} arch={args.arch} "
        f"tissue={args.tissue_mm} mm square, tile 1024 @ 0.5 um/px, batch {args.batch_size}, "
        f"{args.threads} torch threads"
    )
    print(
        f"{'slide px':>9} {'Gpx':>5} {'tiles':>6} {'scored':>6} {'tiles/s':>8} {'wall s':>7} {'RSS MB':>7} {'ref tiles/s':>11} "
        f"{'ref RSS MB':>10} {'vs ref':>6} {'naive tiles/s':>13} {'naive RSS MB':>12} {'vs naive':>8}"
    )
    for r in results:
        pl, ref, nv = r["pipeline"], r["reference"], r.get("naive", {})
        print(
            f"{r['slide_px']:>9} {r['gigapixels']:>5} {pl['tiles']:>6} {pl['feasible']:>6} {pl['tiles_per_s']:>8} {pl['wall_s']:>7.1f} "
            f"{pl['peak_rss_mb']:>7.0f} {ref['tiles_per_s']:>11} {ref['peak_rss_mb']:>10.0f} "
            f"{r['ratio_vs_reference']:>6} {nv.get('tiles_per_s', ''):>13} {nv.get('peak_rss_mb', 0):>12.0f} "
            f"{r.get('speedup', ''):>8}"
        )
    if engine:
        print(
            f"inference only, one batch of {engine['batch']} tiles (medians): engine Predictor {engine['engine_s']} s, "
            f"plain torch {engine['plain_s']} s, throughput ratio engine/plain {engine['ratio']} "
            f"(best runs: {engine['ratio_of_best']})"
        )


if __name__ == "__main__":
    main()
