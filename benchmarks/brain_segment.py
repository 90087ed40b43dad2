"""Whole-brain inference per Havaei architecture: the project path vs a plain-torch reference and the
patch-by-patch baseline, all in the same run on the same net, slices and batch size.

    python benchmarks/brain_segment.py                         # CPU: a few slices, extrapolated to a case
    python benchmarks/brain_segment.py --local-channels 16 --global-channels 32 --size 120 120 155
    python benchmarks/brain_segment.py --device cuda --slices 155 --patches 20000
    python benchmarks/brain_segment.py --case --threads 2   # one whole case, demo weights, brain box

- project: ``medseg.brain.segment.predict_volume`` = engine Predictor (channels_last, inference_mode,
  AMP on CUDA, argmax) over zero-padded whole-slice batches (fully convolutional);
- reference: the same net, slices and batch size written directly in torch here (slices transposed,
  padded with ``F.pad``, channels_last, inference_mode, argmax to uint8);
- naive baseline: the paper's patch-by-patch classifier (one 33/65/56/53 patch per voxel, batched).

Timings use random weights (speed does not depend on them) and a random normalised 4-channel volume,
and are the best of ``--repeats`` interleaved runs (the machine may be shared); the ratio is also given
in process CPU time, which other jobs on a shared machine disturb much less than wall time. When ``--slices`` <
depth or ``--patches`` < voxels the per-case time is extrapolated linearly (reported as such).
Reports seconds per case, the throughput ratios project/reference (target >= 0.9 on CPU) and
FCN/patch-by-patch, and peak memory (process RSS; CUDA peak on a GPU).
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import gpu_peak_mb, peak_rss  # noqa: E402


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reference_volume(
    model, stack: np.ndarray, *, pad: tuple[int, int], batch_size: int, device, amp_dtype
) -> np.ndarray:
    """Plain torch: the same whole-slice batches, channels_last, inference_mode, argmax."""
    import torch
    import torch.nn.functional as F

    before, after = pad
    out = []
    with torch.inference_mode():
        for s in range(0, stack.shape[1], batch_size):
            x = torch.from_numpy(np.ascontiguousarray(stack[:, s : s + batch_size].transpose(1, 0, 2, 3))).to(
                device
            )
            x = F.pad(x, (before, after, before, after)).contiguous(memory_format=torch.channels_last)
            if amp_dtype is not None:
                with torch.autocast(device.type, dtype=amp_dtype):
                    y = model(x)
            else:
                y = model(x)
            out.append(y.argmax(1).to(torch.uint8).cpu().numpy())
    return np.concatenate(out)


def _timed(fn, device):
    """(wall seconds, CPU seconds of this process, output, peak RSS MB)."""
    _sync(device)
    t0, c0 = time.perf_counter(), time.process_time()
    with peak_rss() as mem:
        out = fn()
        _sync(device)
    return time.perf_counter() - t0, time.process_time() - c0, out, mem["peak_mb"]


def bench_arch(arch: str, args, device, amp_name: str) -> dict:
    import torch

    from medseg.brain.models import BrainNetConfig, build_model
    from medseg.brain.sampling import slice_padding
    from medseg.brain.segment import make_predictor, predict_patches, predict_volume

    nx, ny, nz = args.size
    torch.manual_seed(0)
    model = build_model(
        config=BrainNetConfig(
            arch=arch, local_channels=args.local_channels, global_channels=args.global_channels
        )
    ).eval()
    ref_model = copy.deepcopy(model).to(device).to(memory_format=torch.channels_last)
    predictor = make_predictor(model, device=str(device), amp=amp_name, postprocess="argmax")
    rng = np.random.default_rng(0)
    n_slices = min(args.slices, nz)
    stack = rng.standard_normal((4, n_slices, ny, nx)).astype(np.float32)
    pad = slice_padding(arch)

    def project():
        return predict_volume(predictor, stack, arch=arch, batch_size=args.batch_size)

    def reference():
        return reference_volume(
            ref_model,
            stack,
            pad=pad,
            batch_size=args.batch_size,
            device=device,
            amp_dtype=predictor.amp_dtype,
        )

    predict_volume(predictor, stack[:, :1], arch=arch, batch_size=1)  # warm-up (oneDNN / cuDNN plans)
    reference_volume(
        ref_model, stack[:, :1], pad=pad, batch_size=1, device=device, amp_dtype=predictor.amp_dtype
    )
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times: dict[str, list[float]] = {"project": [], "reference": []}
    cpu: dict[str, list[float]] = {"project": [], "reference": []}
    peaks: dict[str, float] = {"project": 0.0, "reference": 0.0}
    outs = {}
    for i in range(args.repeats):  # interleaved (order alternating), best of n: robust to a shared machine
        order = (("project", project), ("reference", reference))
        for name, fn in order if i % 2 == 0 else order[::-1]:
            seconds, cpu_s, outs[name], peak = _timed(fn, device)
            times[name].append(seconds)
            cpu[name].append(cpu_s)
            peaks[name] = max(peaks[name], peak)
    agree = float(np.mean(outs["project"] == outs["reference"]))
    fcn_s = min(times["project"]) * nz / n_slices
    ref_s = min(times["reference"]) * nz / n_slices

    n_vox = nx * ny * nz
    n_patch = min(args.patches, n_vox)
    coords = np.stack(
        [rng.integers(0, n_slices, n_patch), rng.integers(0, ny, n_patch), rng.integers(0, nx, n_patch)],
        axis=1,
    )
    predict_patches(predictor, stack, coords[: min(64, n_patch)], arch=arch, batch_size=args.patch_batch)
    patch_seconds, _cpu, _, patch_peak = _timed(
        lambda: predict_patches(predictor, stack, coords, arch=arch, batch_size=args.patch_batch), device
    )
    patch_s = patch_seconds * n_vox / n_patch
    return {
        "arch": arch,
        "fcn_s_per_case": round(fcn_s, 3),
        "reference_s_per_case": round(ref_s, 3),
        "ratio_vs_reference": round(ref_s / fcn_s, 3),
        "ratio_vs_reference_cpu_time": round(min(cpu["reference"]) / min(cpu["project"]), 3),
        "patch_s_per_case": round(patch_s, 1),
        "ratio_vs_patch_baseline": round(patch_s / fcn_s, 1),
        "labels_equal_to_reference": agree,
        "fcn_slices_timed": n_slices,
        "patches_timed": n_patch,
        "extrapolated": n_slices < nz or n_patch < n_vox,
        "peak_rss_mb_project": round(peaks["project"], 1),
        "peak_rss_mb_reference": round(peaks["reference"], 1),
        "peak_rss_mb_patch_baseline": round(patch_peak, 1),
        "peak_cuda_mb": gpu_peak_mb(),
    }


def bench_case(args, device) -> dict:
    """One whole 240x240x155 case with the demo weights: the brain-box path against today's full grid.

    - ``box``: ``medseg.brain.segment.predict_in_brain`` (brain slices only, each batch cropped to its
      brain box), timed on the WHOLE case, and end to end (``segment_array``: preprocessing as the
      weights ask, N4 included, inference, post-processing);
    - ``full_grid``: the path before issue 12 (every slice, whole 240x240 grid, engine predictor);
    - ``reference``: plain torch on the whole grid (as above).
    Full grid and reference are timed on ``--case-slices`` slices through the brain and extrapolated
    to all slices (their cost per slice does not depend on content); labels of the box path must
    equal the full grid's inside the brain on those slices.
    """
    import torch

    from medseg.brain.io import MODALITIES, Geometry
    from medseg.brain.preprocess import preprocess
    from medseg.brain.sampling import slice_padding
    from medseg.brain.segment import (
        DEMO_WEIGHTS,
        brain_boxes,
        load_brain_model,
        make_predictor,
        predict_in_brain,
        predict_volume,
        segment_array,
    )
    from medseg.engine.weights import resolve_weights
    from medseg.synthetic.brain import BrainPhantomConfig, make_brain_case

    nx, ny, nz = args.size
    weights, _ = resolve_weights(args.weights, demo=DEMO_WEIGHTS)
    model, meta, prep = load_brain_model(weights)
    arch = meta.config["net"]["arch"]
    t0 = time.perf_counter()
    case = make_brain_case(7, BrainPhantomConfig(shape=(nz, ny, nx), spacing=(1.0, 1.0, 1.0)))
    print(f"synthetic {nx}x{ny}x{nz} case made in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    raw = np.stack([case.images[m] for m in MODALITIES])
    geo = Geometry(
        shape=(nz, ny, nx), spacing=(1.0, 1.0, 1.0), origin=(0.0,) * 3, direction=(1, 0, 0, 0, 1, 0, 0, 0, 1)
    )
    predictor = make_predictor(model, device=str(device), amp=args.amp, postprocess="argmax")
    ref_model = copy.deepcopy(model).to(device).to(memory_format=torch.channels_last)
    pad = slice_padding(arch)
    bs = args.batch_size

    prep_s, prep_cpu, (norm, mask), _ = _timed(lambda: preprocess(raw, geo.spacing, prep), device)
    boxes = brain_boxes(mask, bs)
    box_pixels = sum(
        (b[0].stop - b[0].start) * (b[1].stop - b[1].start) * (b[2].stop - b[2].start) for b in boxes
    )
    zs = np.flatnonzero(mask.any(axis=(1, 2)))
    mid = int(zs[len(zs) // 2])
    sl = slice(max(0, mid - args.case_slices // 2), max(0, mid - args.case_slices // 2) + args.case_slices)
    n_timed = sl.stop - sl.start

    predict_volume(predictor, norm[:, :1], arch=arch, batch_size=1)  # warm-up
    box_s, box_cpu, box_seg, box_peak = _timed(
        lambda: predict_in_brain(predictor, norm, mask, arch=arch, batch_size=bs), device
    )
    full_s, full_cpu, full_seg, full_peak = _timed(
        lambda: predict_volume(predictor, norm[:, sl], arch=arch, batch_size=bs), device
    )
    ref_s, ref_cpu, ref_seg, ref_peak = _timed(
        lambda: reference_volume(
            ref_model, norm[:, sl], pad=pad, batch_size=bs, device=device, amp_dtype=predictor.amp_dtype
        ),
        device,
    )
    e2e_s, e2e_cpu, _, e2e_peak = _timed(
        lambda: segment_array(predictor, raw, geo, arch=arch, prep=prep, batch_size=bs), device
    )
    inside = mask[sl]
    return {
        "case": f"synthetic {nx}x{ny}x{nz} @ 1 mm, brain {mask.mean():.1%} of the grid, slices with brain {zs.size}",
        "arch": arch,
        "weights": weights.name,
        "batch_size": bs,
        "box_pixels_fraction_of_grid": round(box_pixels / mask.size, 3),
        "box_s_per_case": round(box_s, 2),
        "box_cpu_s": round(box_cpu, 2),
        "full_grid_s_per_case": round(full_s * nz / n_timed, 2),
        "full_grid_cpu_s": round(full_cpu * nz / n_timed, 2),
        "reference_full_grid_s_per_case": round(ref_s * nz / n_timed, 2),
        "speedup_vs_full_grid": round(full_s * nz / n_timed / box_s, 2),
        "speedup_vs_reference": round(ref_s * nz / n_timed / box_s, 2),
        "preprocess_s": round(prep_s, 2),
        "preprocess_cpu_s": round(prep_cpu, 2),
        "n4": prep.n4,
        "end_to_end_s_per_case": round(e2e_s, 2),
        "end_to_end_cpu_s": round(e2e_cpu, 2),
        "full_grid_slices_timed": n_timed,
        "box_equals_full_grid_inside_brain": bool(np.array_equal(box_seg[sl][inside], full_seg[inside])),
        "reference_equals_full_grid": float(np.mean(ref_seg == full_seg)),
        "peak_rss_mb": round(max(box_peak, full_peak, ref_peak, e2e_peak), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", type=int, nargs=3, default=(240, 240, 155), metavar=("X", "Y", "Z"))
    parser.add_argument(
        "--archs", nargs="+", default=["twopath", "input-cascade", "local-cascade", "mf-cascade"]
    )
    parser.add_argument("--device", default="auto")
    parser.add_argument("--amp", default="auto", choices=["auto", "on", "off", "bf16", "fp16"])
    parser.add_argument("--batch-size", type=int, default=8, help="slices per forward pass")
    parser.add_argument("--patch-batch", type=int, default=512, help="patches per forward pass (baseline)")
    parser.add_argument(
        "--slices", type=int, default=None, help="slices to time (default: all on CUDA, 4 on CPU)"
    )
    parser.add_argument(
        "--patches", type=int, default=None, help="patches to time (default 20000 CUDA, 128 CPU)"
    )
    parser.add_argument("--repeats", type=int, default=3, help="interleaved timing runs (best is reported)")
    parser.add_argument("--local-channels", type=int, default=64)
    parser.add_argument("--global-channels", type=int, default=160)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--json", default=None, help="also write the results here")
    parser.add_argument(
        "--case",
        action="store_true",
        help="one whole synthetic case with the demo weights: brain-box path vs full grid vs reference",
    )
    parser.add_argument("--case-slices", type=int, default=16, help="slices timed for full grid / reference")
    parser.add_argument(
        "--weights", default=None, help="weights for --case (default: the demo InputCascadeCNN)"
    )
    args = parser.parse_args()

    import torch

    from medseg.engine.runtime import resolve_amp_dtype, select_device

    if args.threads:
        torch.set_num_threads(args.threads)
    device = select_device(args.device)
    amp_dtype = resolve_amp_dtype(device, args.amp)
    if args.slices is None:
        args.slices = args.size[2] if device.type == "cuda" else 4
    if args.patches is None:
        args.patches = 20000 if device.type == "cuda" else 128
    if not args.case:
        args.batch_size = min(args.batch_size, args.slices)
    env = {
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or "cpu",
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "amp": {None: "fp32"}.get(amp_dtype, str(amp_dtype).replace("torch.", "")),
        "size_xyz": list(args.size),
        "widths": [args.local_channels, args.global_channels],
        "batch_size": args.batch_size,
        "repeats": args.repeats,
    }
    print(json.dumps(env))
    if args.case:
        row = bench_case(args, device)
        print(json.dumps(row, indent=1))
        if args.json:
            with open(args.json, "w", encoding="utf-8") as fh:
                json.dump({"env": env, "case": row}, fh, indent=2)
        return
    rows = []
    for arch in args.archs:
        row = bench_arch(arch, args, device, args.amp)
        rows.append(row)
        print(json.dumps(row), flush=True)
    print(
        f"\n{'arch':<15}{'FCN s/case':>12}{'ref s/case':>12}{'proj/ref':>10}{'(CPU time)':>11}{'patch s/case':>14}"
        f"{'FCN/patch':>11}{'peak RSS MB':>13}"
    )
    for r in rows:
        print(
            f"{r['arch']:<15}{r['fcn_s_per_case']:>12.2f}{r['reference_s_per_case']:>12.2f}"
            f"{r['ratio_vs_reference']:>10.2f}{r['ratio_vs_reference_cpu_time']:>11.2f}"
            f"{r['patch_s_per_case']:>14.1f}{r['ratio_vs_patch_baseline']:>11.1f}"
            f"{r['peak_rss_mb_project']:>13.0f}{'  (extrapolated)' if r['extrapolated'] else ''}"
        )
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump({"env": env, "results": rows}, fh, indent=2)


if __name__ == "__main__":
    main()
