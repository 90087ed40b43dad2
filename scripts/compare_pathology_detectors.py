"""The PTC detectors side by side on the same synthetic slides with the same CPU budget:
Faster R-CNN (light), Mask R-CNN (light), YOLOv3 and CornerNet (when medseg.pathology.cornernet exists).

    OMP_NUM_THREADS=1 python scripts/compare_pathology_detectors.py --work /tmp/cmp --minutes 3 \
        --from-scratch --archs light maskrcnn yolov3 cornernet --ship-yolov3 --ship-cornernet

Every detector trains through ``slide-train``'s library call on one ``slide-prepare`` dataset
(train slides seeds 2000-2003, validation slide 2004) for about ``--minutes`` of CPU time on one
thread: a short probe times a training step and a validation pass in process time and the epoch
count is set so that the one-cycle schedule ends within the budget (a wall-clock cap of 4x the
budget stops it in any case; the CPU seconds actually used are recorded). Without
``--from-scratch`` the R-CNNs start from the shipped light demo detector (the one-stage detectors
share no layers with it and always start from random weights). Then each scores the same held-out
slides (seeds 3000-3002, never seen in training) and ``slide-eval`` gives F1 per class and the
counts; time per tile is the detector's own forward pass (batches of 4 tiles of 1024 px, after
one warm-up batch), with PyTorch and with OpenVINO (``runtime="openvino"``, when installed).

Writes ``WORK/comparison.json``; ``--ship-maskrcnn`` / ``--ship-yolov3`` / ``--ship-cornernet`` copy
those weights to ``medseg/weights/pathology/c4d_<arch>_demo.safetensors`` (synthetic C4d slides,
research use, not for clinical use).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEMO_DIR = ROOT / "medseg" / "weights" / "pathology"
WALL_FACTOR = 4  # wall-clock cap = budget x this (the machine may be shared)
SHIP_NOTE = "synthetic C4d slides, research use, not for clinical use"
TRAIN_SEEDS = (2000, 2001, 2002, 2003, 2004)
TRAIN_FRACTIONS = (0.1, 0.3, 0.5, 0.8, 0.4)
TEST_SEEDS = (3000, 3001, 3002)
TEST_FRACTIONS = (0.05, 0.3, 0.7)
log = logging.getLogger("medseg")


def _slides(work: Path, seeds, fractions, size: tuple[int, int]) -> list[Path]:
    from medseg.synthetic.slides import SlideSpec, write_slide

    out = []
    for seed, frac in zip(seeds, fractions):
        path = work / f"s{seed}.tiff"
        if not path.is_file():
            spec = SlideSpec(width=size[0], height=size[1], seed=seed, positive_fraction=frac)
            write_slide(path, spec, geojson=work / f"s{seed}.geojson")
        out.append(path)
    return out


def _epochs_for(dataset: Path, arch: str, minutes: float, batch_size: int) -> tuple[int, float]:
    """Epochs that fit ``minutes`` of CPU time (process time, so a loaded machine does not shrink
    one detector's budget more than another's): time 3 training steps (after one warm-up) and one
    validation pass of this architecture."""
    import torch

    from medseg.pathology.detector import config_for
    from medseg.pathology.train import DetectorTask, DetectorTrainConfig, load_dataset

    meta, records = load_dataset(dataset)
    det = config_for(arch)
    det.margins = {k: int(v) for k, v in meta["margins"].items()}
    task = DetectorTask(
        dataset, records, DetectorTrainConfig(batch_size=batch_size, detector=det, val_fraction=0.2)
    )
    model = task.build_model().train()
    opt = task.build_optimizer(model)
    batches = task.train_batches(1, np.random.default_rng(0))
    times = []
    for k in range(4):
        t0 = time.process_time()
        loss = task.train_step(model, next(batches), torch.device("cpu"))
        opt.zero_grad()
        loss.backward()
        opt.step()
        if k:
            times.append(time.process_time() - t0)
    step = float(np.mean(times))
    t0 = time.process_time()
    task.validate(model, torch.device("cpu"))
    epoch_s = step * task.steps_per_epoch + (time.process_time() - t0)
    return max(1, int(minutes * 60 / epoch_s)), step


def _train(dataset: Path, run: Path, arch: str, minutes: float, epochs: int, init: str | None):
    from medseg.pathology.detector import config_for
    from medseg.pathology.train import DetectorTrainConfig, train_detector

    cfg = DetectorTrainConfig(
        epochs=epochs,
        batch_size=4,
        lr=1e-3 if init else 3e-3,  # fine-tuning keeps the demo detector's features
        seed=0,
        device="cpu",
        val_fraction=0.2,
        max_minutes=minutes * WALL_FACTOR,  # a wall-clock cap; the epochs set the CPU budget
        training_data="synthetic C4d slides, seeds 2000-2004 (medseg.synthetic.slides)"
        + ("; fine-tuned from the light demo detector (synthetic seeds 1000-1005)" if init else "")
        + "; not for clinical use",
        detector=config_for(arch),
        init_weights=init,
    )
    return train_detector(dataset, run, cfg, overwrite=True)


def _tile_seconds(weights: Path, slides: list[Path], runtime: str = "torch") -> float | None:
    """Seconds per 1024 px tile of the detector's forward pass (batches of 4, on tissue tiles);
    None when the runtime cannot be used (OpenVINO not installed)."""
    from medseg.engine.openvino_runtime import openvino_version
    from medseg.pathology.detector import load_detector
    from medseg.pathology.slide import detect_tissue, open_slide
    from medseg.pathology.tiling import make_grid, plan_slide_tiles, read_tile

    if runtime == "openvino" and openvino_version() is None:
        return None
    det = load_detector(weights, device="cpu", runtime=runtime)  # OpenVINO compiles here, not timed
    tiles = []
    for path in slides:
        with open_slide(path) as slide:
            grid = make_grid(slide, target_mpp=0.5, tile=1024, overlap=160)
            tiles += [read_tile(slide, t, 1024) for t in plan_slide_tiles(slide, grid, detect_tissue(slide))]
    det.predict(np.stack(tiles[:4]))  # warm-up
    t0 = time.perf_counter()
    n = 0
    for i in range(0, len(tiles) - len(tiles) % 4, 4):
        det.predict(np.stack(tiles[i : i + 4]))
        n += 4
    return (time.perf_counter() - t0) / max(1, n)


def _score_and_eval(weights: Path, slides: list[Path], out: Path) -> dict:
    from medseg.pathology.batch import score_slides
    from medseg.pathology.evaluate import evaluate_results
    from medseg.pathology.score import ScoreConfig

    run = score_slides(slides, out, ScoreConfig(device="cpu", workers=1), weights=weights, overwrite=True)
    if run.exit_code:
        raise SystemExit("; ".join(run.failure_lines()))
    ev = evaluate_results(out, [p.with_suffix(".geojson") for p in slides])
    o = ev.summary["overall"]
    keep = ("C4d+_f1", "C4d-_f1", "C4d+_precision", "C4d+_recall", "C4d-_precision", "C4d-_recall", "f1_mean")
    truth = sum(i.metrics[f"truth_{c}"] for i in ev.items for c in ("C4d+", "C4d-"))
    off = sum(
        abs(i.metrics[f"pred_{c}"] - i.metrics[f"truth_{c}"]) for i in ev.items for c in ("C4d+", "C4d-")
    )
    return {
        **{k: round(float(o[k]), 3) for k in keep},
        "category_agreement": o["category_agreement"],
        # 1 - sum over slides and classes of |predicted - true PTC count| / true count
        "count_agreement": round(1 - off / max(1, truth), 3),
        "slides": [
            {k: i.metrics[k] for k in ("truth_category", "predicted_category", "pred_C4d+", "pred_C4d-")}
            | {"name": i.name, "truth_C4d+": i.metrics["truth_C4d+"], "truth_C4d-": i.metrics["truth_C4d-"]}
            for i in ev.items
        ],
    }


def outline_iou(scores: Path, slides: list[Path]) -> dict:
    """How well the exported polygons (the PTC itself, margin taken off) cover the true PTC outline:
    median and 10th-percentile IoU over detections whose centre is within 10 px of a truth PTC's."""
    from medseg.pathology.maskrcnn import polygon_mask
    from medseg.pathology.prepare import read_geojson_ptcs

    ious = []
    for path in slides:
        rows, truth = read_geojson_ptcs(path.with_suffix(".geojson"))
        centres = (rows[:, :2] + rows[:, 2:4]) / 2
        dets = json.loads((scores / path.stem / "detections.geojson").read_text())["features"]
        for f in dets:
            ring = np.array(f["geometry"]["coordinates"][0], float)
            c = (ring.min(0) + ring.max(0)) / 2
            d = np.hypot(*(centres - c).T)
            j = int(d.argmin())
            if d[j] > 10:
                continue
            x0, y0 = np.floor(np.minimum(ring.min(0), truth[j].min(0))) - 2
            w, h = (np.ceil(np.maximum(ring.max(0), truth[j].max(0))) + 2 - (x0, y0)).astype(int)
            a = polygon_mask(ring, x0, y0, w, h)
            b = polygon_mask(truth[j], x0, y0, w, h)
            ious.append((a & b).sum() / max(1, (a | b).sum()))
    ious = np.array(ious)
    return {
        "matched": len(ious),
        "median_iou": round(float(np.median(ious)), 3),
        "p10_iou": round(float(np.percentile(ious, 10)), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument(
        "--minutes", type=float, default=6.5, help="training budget per detector (CPU minutes, 1 thread)"
    )
    parser.add_argument("--archs", nargs="+", default=["light", "maskrcnn", "yolov3", "cornernet"])
    for arch in ("maskrcnn", "yolov3", "cornernet"):
        parser.add_argument(
            f"--ship-{arch}", action="store_true", help=f"copy the {arch} weights into the package"
        )
    parser.add_argument(
        "--time-only",
        type=int,
        default=0,
        metavar="N",
        help="only re-time the trained detectors of WORK, N rounds in turn (median; same load for all)",
    )
    parser.add_argument(
        "--from-scratch",
        action="store_true",
        help="do not start the R-CNNs from the shipped light demo detector",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    import importlib.util

    import torch

    from medseg.pathology.detector import same_family
    from medseg.pathology.prepare import PrepareConfig, prepare_dataset

    torch.set_num_threads(1)
    archs = list(args.archs)
    if "cornernet" in archs and importlib.util.find_spec("medseg.pathology.cornernet") is None:
        log.warning("medseg.pathology.cornernet is not there: CornerNet left out")
        archs.remove("cornernet")
    args.work.mkdir(parents=True, exist_ok=True)
    train = _slides(args.work, TRAIN_SEEDS, TRAIN_FRACTIONS, (2560, 2560))
    test = _slides(args.work, TEST_SEEDS, TEST_FRACTIONS, (3072, 2048))
    dataset = args.work / "dataset"
    if not (dataset / "annotations.json").is_file():
        prepare_dataset(train, dataset, PrepareConfig(tile=512, overlap=192), overwrite=True)
    demo = None
    if not args.from_scratch:
        from medseg.engine.weights import demo_weights_path
        from medseg.pathology.detector import DEMO_WEIGHTS

        demo = str(demo_weights_path(DEMO_WEIGHTS))
    results_path = args.work / "comparison.json"
    results = json.loads(results_path.read_text()) if results_path.is_file() else {}
    if args.time_only:
        _retime(args.work, [a for a in archs if a in results], test, results, args.time_only)
        results_path.write_text(json.dumps(results, indent=1))
        print(json.dumps({a: results[a]["timing_rounds"] for a in results if "timing_rounds" in results[a]}))
        return
    for arch in archs:
        init = demo if demo and same_family("light", arch) else None
        epochs, step = _epochs_for(dataset, arch, args.minutes, 4)
        log.info("%s: %.2f s per training step -> %d epochs in %.1f min", arch, step, epochs, args.minutes)
        t0, c0 = time.perf_counter(), time.process_time()
        tr = _train(dataset, args.work / f"run_{arch}", arch, args.minutes, epochs, init)
        train_s, train_cpu = time.perf_counter() - t0, time.process_time() - c0
        weights = Path(tr.best_weights)
        results[arch] = {
            "init": "light demo detector" if init else "scratch",
            "train_seconds": round(train_s, 1),
            "train_cpu_seconds": round(train_cpu, 1),
            "train_step_s": round(step, 3),
            "epochs": tr.epochs,
            "best_epoch": tr.best_epoch,
            "stopped": tr.stopped,
            "validation_f1_mean": round(float(tr.best_metric), 3),
            "parameters": _parameters(weights),
            "weights_bytes": weights.stat().st_size,
            "held_out": _score_and_eval(weights, test, args.work / f"scores_{arch}"),
            "outline_vs_truth": outline_iou(args.work / f"scores_{arch}", test),
            "s_per_tile": round(_tile_seconds(weights, test, "torch"), 3),
        }
        ov = _tile_seconds(weights, test, "openvino")
        results[arch]["s_per_tile_openvino"] = None if ov is None else round(ov, 3)
        results_path.write_text(json.dumps(results, indent=1))
        log.info("%s: %s", arch, json.dumps(results[arch]))
        if getattr(args, f"ship_{arch}", False):
            _ship(weights, DEMO_DIR / f"c4d_{arch}_demo.safetensors")
    print(json.dumps(results, indent=1))


def _retime(work: Path, archs: list[str], test: list[Path], results: dict, rounds: int) -> None:
    """Seconds per tile of every trained detector, PyTorch and OpenVINO, in turns (round 1: all,
    round 2: all, ...), so a change of machine load hits them alike; the median is kept."""
    times: dict[str, dict[str, list[float]]] = {a: {"torch": [], "openvino": []} for a in archs}
    for _ in range(rounds):
        for arch in archs:
            weights = work / f"run_{arch}" / "best.safetensors"
            for runtime in ("torch", "openvino"):
                t = _tile_seconds(weights, test, runtime)
                if t is not None:
                    times[arch][runtime].append(t)
    for arch in archs:
        for runtime, key in (("torch", "s_per_tile"), ("openvino", "s_per_tile_openvino")):
            if times[arch][runtime]:
                results[arch][key] = round(float(np.median(times[arch][runtime])), 3)
        results[arch]["timing_rounds"] = {k: [round(x, 3) for x in v] for k, v in times[arch].items()}


def _parameters(weights: Path) -> int:
    from medseg.pathology.detector import load_detector

    return int(
        sum(p.numel() for p in load_detector(weights, device="cpu", runtime="torch").model.parameters())
    )


def _ship(weights: Path, dest: Path) -> None:
    """Copy trained weights into the package, saying in their metadata what they are."""
    from medseg.engine.checkpoint import load_weights, save_weights

    state, meta = load_weights(weights)
    meta.training_data = f"{SHIP_NOTE}; {meta.training_data}"
    meta.notes = SHIP_NOTE
    save_weights(dest, state, meta)
    log.info("shipped %s -> %s", weights, dest)


if __name__ == "__main__":
    main()
