"""Benchmark ct-convert: slices/s and peak memory, batched+streamed vs a naive per-slice fp32 loop.

    python benchmarks/ct_convert.py                       # CPU: 8 slices of 512x512
    python benchmarks/ct_convert.py --slices 1000 --batch-size 32 --device cuda
    python benchmarks/ct_convert.py --memory-check        # peak RSS for N and 4N slices (streaming)

Both paths run the same 6-layer 3x3x64 network (~0.3 MFLOP/pixel) with random weights (speed
does not depend on the weights). The optimized path is medseg's ``convert``: DICOM decoding in a
background thread, batches of slices, AMP (bf16/fp16) + channels_last on CUDA, derived DICOM
written slice by slice. The baseline holds the volume in memory and runs one slice at a time in
fp32 — the "simple" way, without writing output.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import gpu_peak_mb, peak_rss, report  # noqa: E402


def make_series(folder: Path, n: int, size: int) -> None:
    from medseg.io.dicom import new_uid, write_ct_series

    rng = np.random.default_rng(0)
    vol = rng.normal(-600, 300, (n, size, size)).astype(np.float32)
    write_ct_series(folder, vol, spacing_zyx=(1.0, 0.7, 0.7), kernel="B50f", study_uid=new_uid(),
                    series_uid=new_uid(), frame_uid=new_uid(), series_number=1, description="bench")


def make_weights(path: Path) -> None:
    from medseg.ct.model import MODEL_NAME, KernelNetConfig, build_kernel_net
    from medseg.engine.checkpoint import CheckpointMeta, save_weights

    cfg = KernelNetConfig("B50f", "B30f")
    save_weights(path, build_kernel_net(config=cfg).state_dict(),
                 CheckpointMeta(model=MODEL_NAME, task="B50f->B30f", config=cfg.to_dict(), training_data="random"))


def naive(series_dir: Path, weights: Path, device: str) -> tuple[float, int]:
    import torch

    from medseg.ct.models import find_model, load_predictor
    from medseg.io.dicom import open_series, read_series

    predictor = load_predictor(find_model("B50f", "B30f", weights=weights), device=device, amp="off")
    net, dev = predictor.net.to(memory_format=torch.contiguous_format), predictor.device
    t0 = time.perf_counter()
    vol, _ = read_series(open_series(series_dir))
    out = np.empty_like(vol)
    with torch.inference_mode():
        for z in range(len(vol)):
            out[z] = net(torch.from_numpy(vol[z][None, None]).to(dev)).cpu().numpy()[0, 0]
    return time.perf_counter() - t0, len(vol)


def optimized(series_dir: Path, weights: Path, out: Path, device: str, batch_size: int) -> tuple[float, int]:
    from medseg.ct.convert import convert

    t0 = time.perf_counter()
    res = convert(series_dir, out, source="B50f", target="B30f", weights=weights, device=device,
                  batch_size=batch_size, overwrite=True)
    return time.perf_counter() - t0, res.slices


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--slices", type=int, default=8)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=None, help="default: medseg's (16 on CUDA, 1 on CPU)")
    p.add_argument("--device", default="auto")
    p.add_argument("--skip-baseline", action="store_true")
    p.add_argument("--memory-check", action="store_true", help="peak RSS of the optimized path for N and 4N slices")
    p.add_argument("--_child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()

    import torch

    from medseg.engine.runtime import select_device

    dev = select_device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        weights = tmp / "w.safetensors"
        make_weights(weights)
        if args.memory_check:
            rows = {}
            for n in (args.slices, 4 * args.slices):
                series = tmp / f"s{n}"
                make_series(series, n, args.size)
                code = ("import resource,sys; sys.path.insert(0, %r); from ct_convert import optimized; "
                        "from pathlib import Path; optimized(Path(%r), Path(%r), Path(%r), %r, %d); "
                        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)") % (
                    str(Path(__file__).parent), str(series), str(weights), str(tmp / f"o{n}"), str(dev), args.batch_size or 0)
                out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
                rows[f"peak_rss_mb_{n}_slices"] = float(out.stdout.strip().splitlines()[-1])
            rows["rss_growth_ratio_4x_slices"] = rows[f"peak_rss_mb_{4 * args.slices}_slices"] / rows[f"peak_rss_mb_{args.slices}_slices"]
            report("ct_convert memory", {"device": str(dev), "size": args.size, **rows})
            return
        series = tmp / "series"
        make_series(series, args.slices, args.size)
        results = {"device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)",
                   "slices": args.slices, "size": args.size, "batch_size": args.batch_size or "auto"}
        optimized(series, weights, tmp / "warm", str(dev), args.batch_size)  # warm-up (cuDNN autotune, allocator)
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        with peak_rss() as mem:
            secs, n = optimized(series, weights, tmp / "out", str(dev), args.batch_size)
        results.update({"optimized_slices_per_s": n / secs, "optimized_ms_per_slice": 1000 * secs / n,
                        "optimized_peak_rss_delta_mb": mem["delta_mb"]})
        if dev.type == "cuda":
            results["optimized_gpu_peak_mb"] = gpu_peak_mb()
        if not args.skip_baseline:
            if dev.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            with peak_rss() as mem:
                secs_b, n_b = naive(series, weights, str(dev))
            results.update({"baseline_slices_per_s": n_b / secs_b, "baseline_peak_rss_delta_mb": mem["delta_mb"],
                            "speedup_vs_baseline": (n / secs) / (n_b / secs_b)})
        report("ct_convert", results)


if __name__ == "__main__":
    main()
