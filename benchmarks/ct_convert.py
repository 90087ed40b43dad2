"""Benchmark ct-convert: slices/s and peak memory of medseg vs a plain-torch reference and a naive loop.

    python benchmarks/ct_convert.py                       # CPU: 8 slices of 512x512
    python benchmarks/ct_convert.py --slices 1000 --batch-size 32 --device cuda
    python benchmarks/ct_convert.py --memory-check        # peak RSS for N and 4N slices (streaming)

All paths run the same 6-layer 3x3x64 network (~0.3 MFLOP/pixel) with the same random weights
(speed does not depend on the weights), on the same slices, with the same batch size:

- ``project``: medseg's ``convert`` end to end: DICOM decoding in a background thread, the engine
  Predictor (channels_last, inference_mode; AMP + cuDNN autotune on CUDA), derived DICOM written
  slice by slice. Includes the I/O the reference does not do.
- ``predictor``: the engine Predictor alone on the in-memory volume, batch by batch.
- ``reference``: plain torch written here: the network as an ``nn.Sequential``, channels_last,
  ``inference_mode``, same batch, same precision, on the in-memory volume (no I/O). Timed
  interleaved with ``predictor``, batch by batch, so both see the same machine load.
- ``naive``: the simple way: read the whole series, one slice at a time, fp32, NCHW, no output.

Each path runs ``--repeats`` times (other processes may share the CPU); the best time counts. Ratios are throughput ratios: ``project / reference`` >= 0.9 is the target on CPU.
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

CHANNELS, DEPTH, HU_MEAN, HU_SCALE = 64, 6, -500.0, 1000.0


def make_series(folder: Path, n: int, size: int) -> None:
    from medseg.io.dicom import new_uid
    from medseg.io.dicom_write import write_ct_series

    rng = np.random.default_rng(0)
    vol = rng.normal(-600, 300, (n, size, size)).astype(np.float32)
    write_ct_series(
        folder,
        vol,
        spacing_zyx=(1.0, 0.7, 0.7),
        kernel="B50f",
        study_uid=new_uid(),
        series_uid=new_uid(),
        frame_uid=new_uid(),
        series_number=1,
        description="bench",
    )


def make_weights(path: Path) -> None:
    from medseg.ct.model import MODEL_NAME, KernelNetConfig, build_kernel_net
    from medseg.engine.checkpoint import CheckpointMeta, save_weights

    cfg = KernelNetConfig("B50f", "B30f", channels=CHANNELS, depth=DEPTH, hu_mean=HU_MEAN, hu_scale=HU_SCALE)
    save_weights(
        path,
        build_kernel_net(config=cfg).state_dict(),
        CheckpointMeta(model=MODEL_NAME, task="B50f->B30f", config=cfg.to_dict(), training_data="random"),
    )


def reference_net(weights: Path):
    """The converter written out in plain torch (same layers, same weights), independent of medseg."""
    import torch
    from safetensors.torch import load_file
    from torch import nn

    layers: list[nn.Module] = [nn.Conv2d(1, CHANNELS, 3, padding=1), nn.ReLU(inplace=True)]
    for _ in range(DEPTH - 2):
        layers += [nn.Conv2d(CHANNELS, CHANNELS, 3, padding=1), nn.ReLU(inplace=True)]
    layers.append(nn.Conv2d(CHANNELS, 1, 3, padding=1))
    body = nn.Sequential(*layers)
    state = {k.removeprefix("body."): v for k, v in load_file(str(weights)).items()}
    body.load_state_dict(state)
    return body.eval().to(memory_format=torch.channels_last)


def reference_batch(x_np: np.ndarray, body, device, amp_dtype) -> np.ndarray:
    """Plain torch on one batch (B, 1, H, W): channels_last, inference_mode, same precision as medseg."""
    import contextlib

    import torch

    cast = torch.autocast(device.type, dtype=amp_dtype) if amp_dtype is not None else contextlib.nullcontext()
    cudnn = (
        torch.backends.cudnn.flags(enabled=True, benchmark=True, deterministic=False)
        if device.type == "cuda"
        else contextlib.nullcontext()
    )
    with torch.inference_mode(), cast, cudnn:
        x = torch.from_numpy(x_np).to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        y = x + (body((x - HU_MEAN) / HU_SCALE) * HU_SCALE).float()
        return y[:, 0].cpu().numpy()


def predictor_vs_reference(
    volume: np.ndarray, weights: Path, body, device, batch_size: int, amp_dtype, repeats: int
) -> tuple[float, float]:
    """Seconds for the whole volume through medseg's Predictor and through the plain-torch reference.

    Interleaved batch by batch (alternating which goes first), so both see the same machine load;
    the best of ``repeats`` passes counts.
    """
    from medseg.ct.models import find_model, load_predictor

    predictor = load_predictor(find_model("B50f", "B30f", weights=weights), device=str(device))
    body = body.to(device)
    best_p, best_r = float("inf"), float("inf")
    for rep in range(repeats):
        t_p = t_r = 0.0
        for k, i in enumerate(range(0, len(volume), batch_size)):
            x = volume[i : i + batch_size, None]
            for name in ("p", "r") if (rep + k) % 2 == 0 else ("r", "p"):
                t0 = time.perf_counter()
                if name == "p":
                    predictor(x)
                else:
                    reference_batch(x, body, device, amp_dtype)
                if device.type == "cuda":
                    import torch

                    torch.cuda.synchronize()
                if name == "p":
                    t_p += time.perf_counter() - t0
                else:
                    t_r += time.perf_counter() - t0
        best_p, best_r = min(best_p, t_p), min(best_r, t_r)
    return best_p, best_r


def naive(series_dir: Path, weights: Path, device: str) -> float:
    """Whole series in memory, one slice at a time, fp32, contiguous NCHW."""
    import torch

    from medseg.ct.models import find_model, load_net
    from medseg.engine.runtime import select_device
    from medseg.io.dicom import open_series, read_series

    dev = select_device(device)
    net = load_net(find_model("B50f", "B30f", weights=weights)).to(dev).eval()
    t0 = time.perf_counter()
    vol, _ = read_series(open_series(series_dir))
    out = np.empty_like(vol)
    with torch.inference_mode():
        for z in range(len(vol)):
            out[z] = net(torch.from_numpy(vol[z][None, None]).to(dev)).cpu().numpy()[0, 0]
    return time.perf_counter() - t0


def project(
    series_dir: Path, weights: Path, out: Path, device: str, batch_size: int | None
) -> tuple[float, int]:
    from medseg.ct.convert import ConvertConfig, convert

    t0 = time.perf_counter()
    res = convert(
        series_dir,
        out,
        ConvertConfig("B50f", "B30f", weights=weights, device=device, batch_size=batch_size, overwrite=True),
    )
    return time.perf_counter() - t0, res.items[0].metrics["slices"]


def memory_check(args, dev, tmp: Path, weights: Path) -> None:
    rows = {}
    for n in (args.slices, 4 * args.slices):
        series = tmp / f"s{n}"
        make_series(series, n, args.size)
        code = (
            "import resource,sys; sys.path.insert(0, %r); from ct_convert import project; "
            "from pathlib import Path; project(Path(%r), Path(%r), Path(%r), %r, %r); "
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)"
        ) % (
            str(Path(__file__).parent),
            str(series),
            str(weights),
            str(tmp / f"o{n}"),
            str(dev),
            args.batch_size,
        )
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        rows[f"peak_rss_mb_{n}_slices"] = float(out.stdout.strip().splitlines()[-1])
    rows["rss_growth_ratio_4x_slices"] = (
        rows[f"peak_rss_mb_{4 * args.slices}_slices"] / rows[f"peak_rss_mb_{args.slices}_slices"]
    )
    report("ct_convert memory", {"device": str(dev), "size": args.size, **rows})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--slices", type=int, default=8)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=None, help="default: medseg's (16 on CUDA, 1 on CPU)")
    p.add_argument("--device", default="auto")
    p.add_argument("--repeats", type=int, default=2, help="timed runs per path (best counts)")
    p.add_argument("--skip-baseline", action="store_true", help="skip the naive loop")
    p.add_argument(
        "--memory-check", action="store_true", help="peak RSS of the project path for N and 4N slices"
    )
    p.add_argument(
        "--runtimes",
        action="store_true",
        help="PyTorch vs OpenVINO on the real Philips slab (all its slices)",
    )
    p.add_argument("--skip-command", action="store_true", help="--runtimes: the net only, no ct-convert runs")
    args = p.parse_args()
    if args.runtimes:
        from _runtimes import ct, print_result

        args.slices = args.slices if "--slices" in sys.argv else 0
        print_result("ct_convert --runtimes", ct(args), None)
        return

    import torch

    from medseg.ct.convert import default_batch_size
    from medseg.engine.runtime import resolve_amp_dtype, select_device
    from medseg.io.dicom import open_series, read_series

    dev = select_device(args.device)
    batch = args.batch_size or default_batch_size(dev)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        weights = tmp / "w.safetensors"
        make_weights(weights)
        if args.memory_check:
            memory_check(args, dev, tmp, weights)
            return
        series = tmp / "series"
        make_series(series, args.slices, args.size)
        volume, _ = read_series(open_series(series))
        body = reference_net(weights)
        amp = resolve_amp_dtype(dev, "auto")
        results = {
            "device": torch.cuda.get_device_name(dev)
            if dev.type == "cuda"
            else f"cpu ({torch.get_num_threads()} threads)",
            "slices": args.slices,
            "size": args.size,
            "batch_size": batch,
            "precision": str(amp).replace("torch.", "") if amp else "fp32",
        }
        project(series, weights, tmp / "warm", str(dev), batch)  # warm-up: oneDNN/cuDNN primitives, allocator
        reference_batch(volume[:batch, None], body.to(dev), dev, amp)
        best, rss = {}, {}
        for _ in range(args.repeats):  # end to end: best of the repeats
            for name, run in (
                ("project", lambda: project(series, weights, tmp / "out", str(dev), batch)[0]),
                ("naive", lambda: naive(series, weights, str(dev))),
            ):
                if name == "naive" and args.skip_baseline:
                    continue
                if dev.type == "cuda":
                    torch.cuda.reset_peak_memory_stats()
                with peak_rss() as mem:
                    seconds = run()
                best[name] = min(best.get(name, float("inf")), seconds)
                rss[name] = max(rss.get(name, 0.0), mem["delta_mb"])
                if dev.type == "cuda":
                    results[f"{name}_gpu_peak_mb"] = gpu_peak_mb()
        with peak_rss() as mem:
            best["predictor"], best["reference"] = predictor_vs_reference(
                volume, weights, body, dev, batch, amp, args.repeats
            )
        rss["interleaved"] = mem["delta_mb"]
        for name, seconds in best.items():
            results[f"{name}_slices_per_s"] = args.slices / seconds
        for name, mb in rss.items():
            results[f"{name}_peak_rss_delta_mb"] = mb
        ref = results["reference_slices_per_s"]
        results["ratio_project_vs_reference"] = results["project_slices_per_s"] / ref
        results["ratio_predictor_vs_reference"] = results["predictor_slices_per_s"] / ref
        if "naive" in best:
            results["ratio_project_vs_naive"] = (
                results["project_slices_per_s"] / results["naive_slices_per_s"]
            )
        report("ct_convert", results)


if __name__ == "__main__":
    main()
