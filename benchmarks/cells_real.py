"""Cell segmentation on the REAL DSB 2018 validation split: dataset and per-image AP, CPU cost, baseline.

    OMP_NUM_THREADS=1 python benchmarks/cells_real.py --data ../shared/realdata/nuclei_dsb2018_stage1
    python benchmarks/cells_real.py --data ... --weights cand.safetensors --out real.json
    python benchmarks/cells_real.py --data ... --overlays /tmp/ov --e2e      # overlays, 512^2 timing
    python benchmarks/cells_real.py --data ... --e2e-only --e2e-image he.png --threads 2  # timing only

The validation ids come from ``medseg/weights/cells/dsb2018_split.json`` (seeded, stratified by
kind; ``scripts/train_demo_weights_cells.py`` never trains on them). Per image: the
``cells-segment`` library path (``CellSegmenter.analyse``: ``--stain auto``, the nuclear plane,
normalisation, overlap-tile inference, instance separation) with the given weights (default: the
shipped demo weights), and the classical baseline (Otsu + hole filling + distance-transform
watershed on the same nuclear plane) in the same run. Scored with ``cells-eval``'s matching:
dataset AP (TP/FP/FN summed over images, the StarDist / Kaggle definition) and the mean of per-image
AP, at IoU 0.5 and over 0.5:0.95, overall and per kind. CPU s/Mpx: process CPU time of the net's path
(all threads) per megapixel of input. ``--e2e``: wall time of ``segment_images`` on a 512^2 image
(reading, stain, prediction, instances, writing labels/CSV/overlay; model loaded once before, best
of 3) with ``--threads`` torch threads.

Nets trained for another instance target (``3class``, ``dist``: ``meta.config["instance_target"]``)
are decoded as their weights say; ``--tune`` searches that decoder's settings on the held-out
training images and ``--instances '{"mask_threshold": 0.5}'`` evaluates with chosen ones.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SPLIT = REPO / "medseg" / "weights" / "cells" / "dsb2018_split.json"
E2E_IMAGE = REPO / "tests" / "data" / "real" / "nuclei_dsb2018" / "img2d.tif"
log = logging.getLogger("medseg.cells")


def classical_labels(image: np.ndarray) -> np.ndarray:
    """Otsu threshold + hole filling + distance-transform watershed (skimage), the usual ten lines."""
    from scipy import ndimage as ndi
    from skimage.feature import peak_local_max
    from skimage.filters import threshold_otsu
    from skimage.morphology import remove_small_objects
    from skimage.segmentation import watershed

    if image.max() <= image.min():
        return np.zeros(image.shape, np.int32)
    fg = ndi.binary_fill_holes(remove_small_objects(image > threshold_otsu(image), max_size=20))
    dist = ndi.gaussian_filter(ndi.distance_transform_edt(fg), 2)
    peaks = peak_local_max(dist, min_distance=7, labels=ndi.label(fg)[0], exclude_border=False)
    markers = np.zeros(image.shape, np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    return watershed(-dist, markers, mask=fg).astype(np.int32)


def run(
    data: Path,
    ids: dict[str, str],
    *,
    weights: str | None,
    overlays: Path | None = None,
    overlay_ids: list[str] | None = None,
    diameter: str | None = "auto",
    instances: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Segment and score every id with the net and the classical baseline."""
    from medseg.cells.evaluate import evaluate_labels, summarise, summarise_groups
    from medseg.cells.instances import InstanceConfig
    from medseg.cells.io import overlay_outlines, read_image, read_mask, write_png
    from medseg.cells.segment import CellSegmenter, SegmentConfig
    from medseg.cells.stain import percentile_normalise
    from medseg.cells.weights import instances_from_mask

    seg = CellSegmenter(
        SegmentConfig(
            weights=weights,
            device="cpu",
            stain="auto",
            diameter=diameter,
            instances=InstanceConfig(**(instances or {})),
        )
    )
    rows: dict[str, list[dict[str, Any]]] = {"net": [], "classical": []}
    groups, cpu, mpx, stains = [], 0.0, 0.0, {}
    for i, kind in sorted(ids.items()):
        planes, _ = read_image(data / "images" / f"{i}.png", allow_stack=False, keep_color=True)
        truth = instances_from_mask(read_mask(data / "masks" / f"{i}.tif"))
        t0 = time.process_time()
        r = seg.analyse(planes[0])
        cpu += time.process_time() - t0
        mpx += truth.size / 1e6
        stains[i] = r.stain.stain
        rows["net"].append(evaluate_labels(truth, r.labels))
        rows["classical"].append(evaluate_labels(truth, classical_labels(percentile_normalise(r.nuclear))))
        groups.append(kind)
        if overlays is not None and (overlay_ids is None or i in overlay_ids):
            overlays.mkdir(parents=True, exist_ok=True)
            plane = percentile_normalise(r.nuclear)
            both = np.concatenate([overlay_outlines(plane, r.labels), overlay_outlines(plane, truth)], axis=1)
            write_png(overlays / f"{kind}_{i[:12]}_pred_vs_truth.png", both)
        log.info(
            "%s %s (%s): net AP@0.5 %.3f, classical %.3f",
            i[:12],
            kind,
            r.stain.stain,
            rows["net"][-1]["ap50"],
            rows["classical"][-1]["ap50"],
        )
    keys = ("ap50", "map_50_95", "mean_image_ap50", "mean_image_map_50_95", "count_true", "count_pred")

    def brief(summary: dict[str, Any]) -> dict[str, Any]:
        return {k: round(summary[k], 4) if isinstance(summary[k], float) else summary[k] for k in keys}

    out: dict[str, Any] = {
        "weights": str(seg.weights),
        "instance_target": seg.target,
        "instances": instances or {},
        "images": len(ids),
        "megapixels": round(mpx, 3),
    }
    for method, r in rows.items():
        out[method] = {"all": brief(summarise(r))}
        out[method].update({g: brief(s) for g, s in summarise_groups(r, groups).items()})
    out["net_cpu_s_per_mpx"] = round(cpu / mpx, 3)
    out["stains"] = {s: sum(v == s for v in stains.values()) for s in sorted(set(stains.values()))}
    return out


def held_out_ids(n: int = 20) -> list[str]:
    """The training-split images ``scripts/train_demo_weights_cells.py`` holds out to pick the epoch
    (same seed): post-processing is tuned on them, never on the validation split."""
    split = json.loads(SPLIT.read_text())
    rng = np.random.default_rng(split["seed"] + 1)
    return sorted(rng.choice(list(split["train"]), size=n, replace=False).tolist())


TUNE_GRID: dict[str, dict[str, tuple[float, ...]]] = {
    "borders": {"threshold": (0.4, 0.5, 0.6, 0.7), "min_size": (10, 20, 40)},
    # min size 40 px as chosen for borders (the decoders are slow on a shared CPU: a small grid)
    "3class": {"mask_threshold": (0.4, 0.5, 0.6), "interior_threshold": (0.3, 0.5, 0.7), "min_size": (40,)},
    "dist": {
        "mask_threshold": (0.4, 0.5, 0.6),
        "seed_threshold": (0.2, 0.4, 0.5),
        "seed_h": (0.05, 0.1, 0.2),
        "min_size": (40,),
    },
}


def tune(data: Path, weights: str | None) -> list[dict[str, Any]]:
    """Pooled AP@0.5 of the decoder's settings (``TUNE_GRID`` for the weights' instance target) on
    the held-out training images, best first."""
    import itertools

    from medseg.cells.evaluate import evaluate_labels, summarise
    from medseg.cells.instances import InstanceConfig, instances_from_maps
    from medseg.cells.io import read_image, read_mask
    from medseg.cells.segment import CellSegmenter, SegmentConfig
    from medseg.cells.weights import instances_from_mask

    seg = CellSegmenter(SegmentConfig(weights=weights, device="cpu"))
    maps = []
    for i in held_out_ids():
        planes, _ = read_image(data / "images" / f"{i}.png", allow_stack=False, keep_color=True)
        maps.append(
            (seg.analyse(planes[0]).maps, instances_from_mask(read_mask(data / "masks" / f"{i}.tif")))
        )
    grid = TUNE_GRID[seg.target]
    table = []
    for values in itertools.product(*grid.values()):
        settings = dict(zip(grid, values))
        cfg = InstanceConfig(**settings)
        s = summarise([evaluate_labels(t, instances_from_maps(m, seg.target, cfg)) for m, t in maps])
        table.append({**settings, "ap50": round(s["ap50"], 4), "map_50_95": round(s["map_50_95"], 4)})
        log.info("%s", table[-1])
    return sorted(table, key=lambda r: (-r["ap50"], -r["map_50_95"]))


def end_to_end(weights: str | None, repeats: int = 3, image: Path = E2E_IMAGE) -> float:
    """Best wall time (s) of segment_images on a 512^2 real image, the model loaded beforehand (its
    OpenVINO conversion and compiled net cached: what every later run of the command pays)."""
    from medseg.cells.batch import segment_images
    from medseg.cells.segment import CellSegmenter, SegmentConfig

    with tempfile.TemporaryDirectory() as tmp:  # imports, first-load costs, caches (a specialist too)
        segment_images([image], tmp, SegmentConfig(weights=weights, device="cpu", report=False))
    CellSegmenter(SegmentConfig(weights=weights, device="cpu"))
    best = float("inf")
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            segment_images([image], tmp, SegmentConfig(weights=weights, device="cpu", report=False))
            best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, required=True, help="the nuclei_dsb2018_stage1 folder")
    parser.add_argument("--weights", default=None, help="weights file (default: the shipped demo weights)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--diameter", default="auto", help="as cells-segment --diameter: auto (default), none, or px"
    )
    parser.add_argument("--out", type=Path, default=None, help="write the result JSON here")
    parser.add_argument("--overlays", type=Path, default=None, help="write prediction | truth overlays here")
    parser.add_argument("--overlay-ids", nargs="*", default=None, help="only these ids (default: all)")
    parser.add_argument("--e2e", action="store_true", help="also time segment_images on a 512^2 image")
    parser.add_argument(
        "--e2e-image",
        type=Path,
        default=E2E_IMAGE,
        help="the 512^2 image --e2e times (default: DSB fluorescence)",
    )
    parser.add_argument("--e2e-only", action="store_true", help="only the --e2e timing (no validation run)")
    parser.add_argument(
        "--tune", action="store_true", help="only: instance settings on the held-out training images"
    )
    parser.add_argument(
        "--instances", default=None, help="JSON of InstanceConfig settings (e.g. chosen by --tune)"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    import torch

    torch.set_num_threads(args.threads)
    if args.tune:
        print(json.dumps(tune(args.data, args.weights), indent=1))
        return
    if args.e2e_only:
        best = end_to_end(args.weights, image=args.e2e_image)
        print(
            json.dumps({"e2e_512_s": round(best, 3), "image": str(args.e2e_image), "threads": args.threads})
        )
        return
    ids = json.loads(SPLIT.read_text())["validation"]
    result = run(
        args.data,
        ids,
        weights=args.weights,
        overlays=args.overlays,
        overlay_ids=args.overlay_ids,
        diameter=None if str(args.diameter).lower() == "none" else args.diameter,
        instances=json.loads(args.instances) if args.instances else None,
    )
    result["threads"] = args.threads
    if args.e2e:
        result["e2e_512_s"] = round(end_to_end(args.weights, image=args.e2e_image), 3)
    text = json.dumps(result, indent=1)
    if args.out is not None:
        args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
