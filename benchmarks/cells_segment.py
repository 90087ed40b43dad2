"""Overlap-tile cell segmentation throughput and memory vs a naive baseline (same run).

    python benchmarks/cells_segment.py                      # CUDA: 8192^2; CPU: 2048^2
    python benchmarks/cells_segment.py --size 4096 --device cpu --threads 2
    python benchmarks/cells_segment.py --base-channels 64   # the paper's width (random weights)

Optimised: batched tiles (prefetched in a background thread), AMP (bf16/fp16) and
channels_last on CUDA. Naive: the same tiles one at a time, fp32, no channels_last.
Reports megapixels/s of probability-map inference (and of instance separation, optional) and
peak memory: NumPy peak beyond the output array (tracemalloc: tiles and batches in flight),
host RSS growth during the run (allocator reuse makes it noisy), and CUDA peak allocation. Memory is
measured at two image sizes to show it does not grow beyond the input/output arrays.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
import tracemalloc
from pathlib import Path

import numpy as np
import psutil


class PeakRSS:
    """Sample the process RSS in a thread; ``peak`` is the maximum seen."""

    def __init__(self, interval: float = 0.02) -> None:
        self.interval, self.peak, self._stop = interval, 0, threading.Event()
        self._proc = psutil.Process()

    def __enter__(self) -> PeakRSS:
        self.peak = self._proc.memory_info().rss
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._proc.memory_info().rss)
            time.sleep(self.interval)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._proc.memory_info().rss)


def make_image(size: int, seed: int = 0) -> np.ndarray:
    """A large synthetic field: a 512^2 synthetic tile repeated (mirrored) to ``size``."""
    from medseg.cells.io import normalise
    from medseg.synthetic.cells import SyntheticCellsConfig, synthetic_cells

    base, _ = synthetic_cells(seed, SyntheticCellsConfig(height=512, width=512))
    reps = -(-size // 512)
    return normalise(np.tile(np.concatenate([base, base[::-1]], 0), (reps, reps))[:size, :size])


def run_once(model, config, image, *, device, tile, batch_size, optimised):
    import torch

    from medseg.cells.model import model_align, model_margin, valid_tile
    from medseg.cells.predict import TorchTilePredictor
    from medseg.engine.runtime import resolve_amp_dtype
    from medseg.engine.tiling import overlap_tile_predict

    amp = resolve_amp_dtype(device, None) if optimised else None
    if not optimised:  # the naive baseline: plain fp32, default memory layout
        model.to(memory_format=torch.contiguous_format)
    predictor = TorchTilePredictor(model, device, amp_dtype=amp, channels_last=optimised and device.type == "cuda")
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    base_rss = psutil.Process().memory_info().rss
    tracemalloc.start()  # NumPy reports its allocations to tracemalloc: tiles, batches, output
    with PeakRSS() as rss:
        t0 = time.perf_counter()
        probs = overlap_tile_predict(predictor, image, tile=valid_tile(config, tile), margin=model_margin(config),
                                     align=model_align(config), batch_size=batch_size if optimised else 1,
                                     prefetch_depth=2 if optimised else 1)
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
    numpy_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return probs, {
        "seconds": round(seconds, 3), "mpx_per_s": round(image.size / 1e6 / seconds, 3),
        "peak_rss_above_start_mb": round((rss.peak - base_rss) / 2**20, 1),
        "output_mb": round(probs.nbytes / 2**20, 1),
        "numpy_peak_beyond_output_mb": round((numpy_peak - probs.nbytes) / 2**20, 1),
        "cuda_peak_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1) if device.type == "cuda" else None,
        "amp": str(amp), "batch_size": batch_size if optimised else 1,
    }


def main() -> None:
    import torch

    from medseg.cells.instances import instances_from_probability
    from medseg.cells.model import CellModelConfig, build_model
    from medseg.cells.segment import DEMO_WEIGHTS
    from medseg.cells.train import load_model
    from medseg.engine.runtime import select_device

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=None, help="image edge (default 8192 CUDA, 2048 CPU)")
    parser.add_argument("--tile", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=None, help="default 16 on CUDA, 4 on CPU")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads for torch")
    parser.add_argument("--base-channels", type=int, default=None,
                        help="random-weight unet2015 of this width instead of the demo weights")
    parser.add_argument("--arch", default="unet2015", choices=["unet2015", "basicunet"])
    parser.add_argument("--skip-naive", action="store_true")
    parser.add_argument("--instances", action="store_true", help="also time instance separation")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    device = select_device(args.device)
    size = args.size or (8192 if device.type == "cuda" else 2048)
    batch = args.batch_size or (16 if device.type == "cuda" else 4)
    if args.base_channels or args.arch != "unet2015":
        config = CellModelConfig(arch=args.arch, base_channels=args.base_channels or 8, batch_norm=True)
        model, weights = build_model(config=config).eval().to(device), "random init"
    else:
        model, config, _ = load_model(DEMO_WEIGHTS, device)
        weights = str(DEMO_WEIGHTS)
    results = {"device": str(device), "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
               "torch_threads": args.threads, "arch": config.arch, "base_channels": config.base_channels,
               "weights": weights, "tile": args.tile, "runs": []}
    for edge in (size // 2, size):
        image = make_image(edge)
        run_once(model, config, image[:600, :600], device=device, tile=args.tile, batch_size=batch, optimised=True)
        probs, opt = run_once(model, config, image, device=device, tile=args.tile, batch_size=batch, optimised=True)
        entry = {"size": edge, "input_mb": round(image.nbytes / 2**20, 1), "optimised": opt}
        if args.instances and edge == size:
            t0 = time.perf_counter()
            labels = instances_from_probability(probs[1])
            dt = time.perf_counter() - t0
            entry["instances"] = {"seconds": round(dt, 2), "mpx_per_s": round(image.size / 1e6 / dt, 3),
                                  "cells": int(labels.max())}
        del probs
        if not args.skip_naive and edge == size:
            _, entry["naive"] = run_once(model, config, image, device=device, tile=args.tile, batch_size=1,
                                         optimised=False)
            entry["speedup"] = round(entry["naive"]["seconds"] / opt["seconds"], 2)
        results["runs"].append(entry)
        print(json.dumps(entry), flush=True)
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
