"""Overlap-tile cell segmentation: the project path vs a plain-torch reference and a naive baseline,
all in the same run on the same image, net and tiles.

    python benchmarks/cells_segment.py                          # CUDA: 8192^2; CPU: 2048^2
    python benchmarks/cells_segment.py --size 1024 --device cpu --threads 2
    python benchmarks/cells_segment.py --base-channels 64       # the paper's width (random weights)

- project: ``medseg.cells.predict`` = engine Predictor (channels_last, inference_mode, AMP on CUDA)
  behind ``overlap_tile_predict`` (tiles mirrored and batched in a background thread);
- reference: the same net, tiles and batch size written directly in torch here (image mirror-padded
  once, tiles sliced, channels_last, inference_mode, softmax, copied into the output);
- naive: the same tiles one at a time, fp32, contiguous memory format, no prefetch.

Timings are the best of ``--repeats`` interleaved runs (the machine may be shared). Reports Mpx/s,
the throughput ratios project/reference (target >= 0.9 on CPU) and project/naive, peak RSS of each
path, and NumPy memory beyond the output array at two image sizes (it must not grow with the image).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import gpu_peak_mb, peak_rss  # noqa: E402


def make_image(size: int, seed: int = 0) -> np.ndarray:
    """A large synthetic field: a 512^2 synthetic tile repeated (mirrored) to ``size``, normalised."""
    from medseg.cells.io import normalise
    from medseg.synthetic.cells import SyntheticCellsConfig, synthetic_cells

    base, _ = synthetic_cells(seed, SyntheticCellsConfig(height=512, width=512))
    reps = -(-size // 512)
    return normalise(np.tile(np.concatenate([base, base[::-1]], 0), (reps, reps))[:size, :size])


def reference_predict(
    model,
    image: np.ndarray,
    *,
    device,
    tile: int,
    margin: int,
    align: int,
    batch_size: int,
    channels_last: bool = True,
    amp_dtype=None,
) -> np.ndarray:
    """Plain torch: mirror-pad once, slice the engine's tile grid, batch, softmax, assemble."""
    import torch

    from medseg.engine.tiling import plan_tiles

    h, w = image.shape
    plan = plan_tiles((h, w), tile=tile, margin=margin, align=align)
    core = tile - 2 * margin
    bottom = max(y for y, _ in plan.origins) + core + margin - h
    right = max(x for _, x in plan.origins) + core + margin - w
    padded = np.pad(image, ((margin, max(bottom, 0)), (margin, max(right, 0))), mode="reflect")
    out = None
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    with torch.inference_mode():
        for i in range(0, len(plan.origins), batch_size):
            origins = plan.origins[i : i + batch_size]
            batch = np.stack([padded[y : y + tile, x : x + tile] for y, x in origins])[:, None]
            x = torch.from_numpy(batch).to(device).contiguous(memory_format=fmt)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                y = model(x)
            probs = torch.softmax(y.float(), dim=1).cpu().numpy()
            if out is None:
                out = np.zeros((probs.shape[1], h, w), np.float32)
            crop = (tile - probs.shape[2]) // 2
            off = margin - crop
            for (y0, x0), p in zip(origins, probs):
                hh, ww = min(core, h - y0), min(core, w - x0)
                out[:, y0 : y0 + hh, x0 : x0 + ww] = p[:, off : off + hh, off : off + ww]
    return out


def timed(fn, device) -> tuple[float, np.ndarray, dict]:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    with peak_rss() as mem:
        t0 = time.perf_counter()
        out = fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
    return seconds, out, {"peak_rss_mb": round(mem["peak_mb"], 1), "cuda_peak_mb": gpu_peak_mb()}


def main() -> None:
    import torch

    from medseg.cells.model import (
        DEMO_WEIGHTS,
        CellModelConfig,
        build_model,
        load_model,
        model_align,
        model_margin,
        valid_tile,
    )
    from medseg.cells.predict import make_predictor, predict_image
    from medseg.engine.runtime import select_device
    from medseg.engine.weights import demo_weights_path

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", type=int, default=None, help="image edge (default 8192 CUDA, 2048 CPU)")
    parser.add_argument("--tile", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=None, help="default 16 on CUDA, 4 on CPU")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for torch")
    parser.add_argument(
        "--repeats", type=int, default=3, help="interleaved timing runs per path (best is kept)"
    )
    parser.add_argument(
        "--base-channels",
        type=int,
        default=None,
        help="random-weight net of this width instead of the demo weights",
    )
    parser.add_argument("--arch", default="unet2015", choices=["unet2015", "basicunet"])
    parser.add_argument("--skip-naive", action="store_true")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    parser.add_argument(
        "--runtimes",
        action="store_true",
        help="PyTorch vs OpenVINO: real DSB validation images per runtime (issue 21)",
    )
    args = parser.parse_args()
    if args.runtimes:
        from _runtimes import cells, print_result

        print_result("cells_segment --runtimes", cells(args), None)
        return

    torch.set_num_threads(args.threads)
    device = select_device(args.device)
    size = args.size or (8192 if device.type == "cuda" else 2048)
    batch = args.batch_size or (16 if device.type == "cuda" else 4)
    if args.base_channels or args.arch != "unet2015":
        torch.manual_seed(0)
        config = CellModelConfig(arch=args.arch, base_channels=args.base_channels or 8, batch_norm=True)
        model, weights = build_model(config=config).eval(), "random init"
    else:
        weights = demo_weights_path(DEMO_WEIGHTS)
        model, config, _ = load_model(weights)
    naive_model = copy.deepcopy(model).to(device).eval()  # contiguous fp32, untouched by the predictor
    predictor = make_predictor(model, device=device)  # channels_last (CPU too), AMP on CUDA
    ref_model = predictor.model  # the same module: identical weights and memory format
    tile, margin, align = valid_tile(config, args.tile), model_margin(config), model_align(config)
    image = make_image(size)

    def run_project(img=image):
        return predict_image(predictor, config, img, tile=args.tile, batch_size=batch)

    def run_reference():
        return reference_predict(
            ref_model,
            image,
            device=device,
            tile=tile,
            margin=margin,
            align=align,
            batch_size=batch,
            amp_dtype=predictor.amp_dtype,
        )

    def run_naive():
        return reference_predict(
            naive_model,
            image,
            device=device,
            tile=tile,
            margin=margin,
            align=align,
            batch_size=1,
            channels_last=False,
        )

    run_project(image[:600, :600])  # warm-up (oneDNN primitive creation, CUDA context)
    times: dict[str, list[float]] = {"project": [], "reference": []}
    memory: dict[str, dict] = {}
    outputs = {}
    for _ in range(args.repeats):
        for name, fn in (("project", run_project), ("reference", run_reference)):
            seconds, outputs[name], memory[name] = timed(fn, device)
            times[name].append(seconds)
    diff = float(np.abs(outputs["project"] - outputs["reference"]).max())
    best = {k: min(v) for k, v in times.items()}
    mpx = image.size / 1e6
    results = {
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "torch_threads": args.threads,
        "arch": config.arch,
        "base_channels": config.base_channels,
        "weights": str(weights),
        "size": size,
        "tile": f"{tile} -> {tile - 2 * margin} core",
        "batch_size": batch,
        "precision": predictor.amp_name,
        "channels_last": predictor.channels_last,
        "repeats": args.repeats,
        "project_mpx_s": round(mpx / best["project"], 4),
        "reference_mpx_s": round(mpx / best["reference"], 4),
        "ratio_project_vs_reference": round(best["reference"] / best["project"], 3),
        "project_seconds_all": [round(t, 3) for t in times["project"]],
        "reference_seconds_all": [round(t, 3) for t in times["reference"]],
        "max_abs_diff_project_vs_reference": diff,
        "project_peak_rss_mb": memory["project"]["peak_rss_mb"],
        "reference_peak_rss_mb": memory["reference"]["peak_rss_mb"],
        "project_cuda_peak_mb": memory["project"]["cuda_peak_mb"],
    }
    if not args.skip_naive:
        seconds, _, mem = timed(run_naive, device)
        results.update(
            {
                "naive_mpx_s": round(mpx / seconds, 4),
                "ratio_project_vs_naive": round(seconds / best["project"], 3),
                "naive_peak_rss_mb": mem["peak_rss_mb"],
            }
        )
    for edge in (size // 2, size):  # NumPy memory beyond the output must stay flat as the image grows
        img = image[:edge, :edge]
        tracemalloc.start()
        probs = run_project(img)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        results[f"numpy_peak_beyond_output_mb_{edge}"] = round((peak - probs.nbytes) / 2**20, 1)
        del probs
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))
    print(
        f"project {results['project_mpx_s']} Mpx/s, reference {results['reference_mpx_s']} Mpx/s: "
        f"ratio {results['ratio_project_vs_reference']}"
        + (f"; vs naive {results['ratio_project_vs_naive']}" if "ratio_project_vs_naive" in results else "")
    )


if __name__ == "__main__":
    main()
