"""Seconds per 240x240x155 brain for each Havaei architecture: fully convolutional batched slices
vs the patch-by-patch baseline, in the same run (the ratio is the point; the paper reports ~45x).

    python benchmarks/brain_segment.py                       # CPU: times a few slices / patches, extrapolates
    python benchmarks/brain_segment.py --device cuda --slices 155 --patches 20000
    python benchmarks/brain_segment.py --local-channels 16 --global-channels 32   # demo-width nets

Timings use random weights (speed does not depend on them) and a random normalised 4-channel
volume. When ``--slices`` < depth or ``--patches`` < voxels the per-case time is extrapolated
linearly (reported as such). Memory: peak CUDA memory per slice batch, or process RSS on CPU.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_arch(arch: str, args, device, amp_dtype) -> dict:
    import torch

    from medseg.brain.models import BrainNetConfig, build_model
    from medseg.brain.segment import predict_patches, predict_volume
    from medseg.engine.runtime import autocast

    nx, ny, nz = args.size
    model = build_model(config=BrainNetConfig(arch=arch, local_channels=args.local_channels,
                                              global_channels=args.global_channels)).eval().to(device)
    rng = np.random.default_rng(0)
    n_slices = min(args.slices, nz)
    stack = rng.standard_normal((4, n_slices, ny, nx)).astype(np.float32)
    predict_volume(model, stack[:, :1], arch=arch, device=device, batch_size=1, amp_dtype=amp_dtype)  # warm-up
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    _sync(device)
    t0 = time.perf_counter()
    predict_volume(model, stack, arch=arch, device=device, batch_size=args.batch_size, amp_dtype=amp_dtype)
    _sync(device)
    fcn_s = (time.perf_counter() - t0) * nz / n_slices
    peak_mb = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else float("nan")

    n_vox = nx * ny * nz
    n_patch = min(args.patches, n_vox)
    coords = np.stack([rng.integers(0, n_slices, n_patch), rng.integers(0, ny, n_patch),
                       rng.integers(0, nx, n_patch)], axis=1)
    predict_patches(model, stack, coords[: min(64, n_patch)], arch=arch, device=device, batch_size=args.patch_batch)
    _sync(device)
    t0 = time.perf_counter()
    with autocast(device, amp_dtype):
        predict_patches(model, stack, coords, arch=arch, device=device, batch_size=args.patch_batch)
    _sync(device)
    patch_s = (time.perf_counter() - t0) * n_vox / n_patch
    return {"arch": arch, "fcn_s_per_case": round(fcn_s, 3), "patch_s_per_case": round(patch_s, 1),
            "speedup": round(patch_s / fcn_s, 1), "fcn_slices_timed": n_slices, "patches_timed": n_patch,
            "extrapolated": n_slices < nz or n_patch < n_vox, "peak_cuda_mb_per_batch": round(peak_mb, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, nargs=3, default=(240, 240, 155), metavar=("X", "Y", "Z"))
    parser.add_argument("--archs", nargs="+", default=["twopath", "input-cascade", "local-cascade", "mf-cascade"])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--amp", default="auto", choices=["auto", "on", "off", "bf16", "fp16"])
    parser.add_argument("--batch-size", type=int, default=8, help="slices per forward pass")
    parser.add_argument("--patch-batch", type=int, default=512, help="patches per forward pass (baseline)")
    parser.add_argument("--slices", type=int, default=None, help="slices to time (default: all on CUDA, 2 on CPU)")
    parser.add_argument("--patches", type=int, default=None, help="patches to time (default 20000 CUDA, 128 CPU)")
    parser.add_argument("--local-channels", type=int, default=64)
    parser.add_argument("--global-channels", type=int, default=160)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args()

    import psutil
    import torch

    from medseg.engine.runtime import resolve_amp_dtype, select_device

    torch.set_num_threads(args.threads)
    device = select_device(args.device)
    amp_dtype = resolve_amp_dtype(device, args.amp)
    if args.slices is None:
        args.slices = args.size[2] if device.type == "cuda" else 2
    if args.patches is None:
        args.patches = 20000 if device.type == "cuda" else 128
    env = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
           "threads": torch.get_num_threads(), "torch": torch.__version__, "amp": str(amp_dtype),
           "size_xyz": list(args.size), "widths": [args.local_channels, args.global_channels],
           "batch_size": args.batch_size}
    print(json.dumps(env))
    rows = []
    for arch in args.archs:
        row = bench_arch(arch, args, device, amp_dtype)
        row["rss_mb"] = round(psutil.Process().memory_info().rss / 2**20, 1)
        rows.append(row)
        print(json.dumps(row), flush=True)
    print(f"\n{'arch':<15}{'FCN s/case':>12}{'patch s/case':>14}{'ratio':>9}")
    for r in rows:
        print(f"{r['arch']:<15}{r['fcn_s_per_case']:>12.2f}{r['patch_s_per_case']:>14.1f}{r['speedup']:>9.1f}"
              f"{'  (extrapolated)' if r['extrapolated'] else ''}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump({"env": env, "results": rows}, fh, indent=2)


if __name__ == "__main__":
    main()
