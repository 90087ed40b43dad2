"""Benchmark the IDK cascade: tiles/s and F1 per class, cascade vs heavy-only, same slides, same run.

    OMP_NUM_THREADS=1 python benchmarks/slide_cascade.py                 # 4 slides, demo detector + gate
    python benchmarks/slide_cascade.py --slides 2 --weights run/best.safetensors --gate gate.safetensors

Synthetic slides (seeds 7100+, never seen by the demo detector or gate), half of them "patchy": the
PTCs of the left half of the tissue removed (PTC-free tissue such as scar; some become incomplete
DAB arcs, glomeruli stay), the others with PTCs everywhere. Each slide is scored twice in this
process, heavy-only then cascade, with the same ``ScoreConfig``; tiles/s = feasible tiles / wall
time of ``score_slide`` (tissue, QC, reading, feasibility filter, gate, detector, merging). F1 per
class at IoU 0.5 comes from ``slide-eval`` against the slides' truth.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))


def make_slides(folder: Path, n: int) -> list[Path]:
    from medseg.synthetic.slides import SlideSpec, SyntheticSlide, write_slide

    out = []
    for k in range(n):
        spec = SlideSpec(width=4096, height=3072, seed=7100 + k, positive_fraction=(0.3, 0.6)[k % 2 // 1])
        slide = SyntheticSlide(spec)
        if k % 2 == 0:
            slide.without_ptcs(0, 0, spec.width / 2, spec.height)
        path = folder / f"bench{k}.tiff"
        write_slide(path, slide, geojson=folder / f"bench{k}.geojson")
        out.append(path)
    return out


def run(args) -> dict:
    import torch

    from medseg.engine.weights import resolve_weights
    from medseg.pathology.cascade import DEMO_GATE, CascadeDetector, load_gate
    from medseg.pathology.detector import DEMO_WEIGHTS, load_detector
    from medseg.pathology.evaluate import evaluate_results
    from medseg.pathology.outputs import write_slide_outputs
    from medseg.pathology.score import ScoreConfig, score_slide

    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="cascade_bench_"))
    slides = make_slides(work, args.slides)
    det = load_detector(resolve_weights(args.weights, demo=DEMO_WEIGHTS)[0], device=args.device)
    gate = load_gate(resolve_weights(args.gate, demo=DEMO_GATE)[0], device=det.device)
    cascade = CascadeDetector(det, gate)
    cfg = ScoreConfig(device=args.device, workers=1)
    results: dict = {}
    for mode, detector in (("heavy", det), ("cascade", cascade)):
        out = work / mode
        tiles = wall = skipped = 0
        counts = {}
        for path in slides:
            t0 = time.perf_counter()
            res = score_slide(path, detector, cfg)
            wall += time.perf_counter() - t0
            write_slide_outputs(res, out / path.stem)
            tiles += res.summary["tiles_feasible"]
            skipped += res.summary.get("cascade_tiles_skipped", 0)
            counts[path.stem] = (res.summary["c4d_pos"], res.summary["c4d_neg"])
        ev = evaluate_results(out, [p.with_suffix(".geojson") for p in slides]).summary["overall"]
        results[mode] = {
            "tiles": tiles,
            "tiles_skipped": skipped,
            "wall_s": round(wall, 1),
            "tiles_per_s": round(tiles / wall, 3),
            "f1_c4d_pos": round(ev["C4d+_f1"], 3),
            "f1_c4d_neg": round(ev["C4d-_f1"], 3),
            "counts": counts,
        }
    results["speedup"] = round(results["cascade"]["tiles_per_s"] / results["heavy"]["tiles_per_s"], 2)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--slides", type=int, default=4, help="half of them patchy (PTC-free left half)")
    parser.add_argument("--weights", default=None, help="detector weights (default: the demo detector)")
    parser.add_argument("--gate", default=None, help="gate weights (default: the demo gate)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    from _common import report

    res = run(args)
    flat = {f"{m}_{k}": v for m in ("heavy", "cascade") for k, v in res[m].items() if k != "counts"}
    report("slide_cascade", {**flat, "speedup": res["speedup"], "counts_heavy": res["heavy"]["counts"],
                             "counts_cascade": res["cascade"]["counts"]})  # fmt: skip


if __name__ == "__main__":
    main()
