"""Whole-brain inference per Havaei architecture: the project path vs a plain-torch reference and the
patch-by-patch baseline, all in the same run on the same net, slices and batch size.

    python benchmarks/brain_segment.py                         # CPU: a few slices, extrapolated to a case
    python benchmarks/brain_segment.py --local-channels 16 --global-channels 32 --size 120 120 155
    python benchmarks/brain_segment.py --device cuda --slices 155 --patches 20000
    git archive 0f1ff74 medseg cli | tar -x -C /tmp/brain_before   # the code before issue 12's speed work
    python benchmarks/brain_segment.py --case --threads 2 --repeats 1 --before-src /tmp/brain_before
    python benchmarks/brain_segment.py --real ../shared/realdata/brain_brats2018 --threads 2   # validation Dice, s/case

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


def _plain_torch_copy(model):
    """The same net with every layer plain torch (the output layers as ``nn.Conv2d``), channels_last."""
    import torch
    from torch import nn

    from medseg.brain.models import OutputConv

    ref = copy.deepcopy(model)
    for module in list(ref.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, OutputConv):
                conv = nn.Conv2d(child.in_channels, child.out_channels, child.kernel_size)
                conv.load_state_dict(child.state_dict())
                setattr(module, name, conv)
    return ref.eval().to(memory_format=torch.channels_last)


def reference_in_brain(ref_model, norm: np.ndarray, boxes, *, pad: tuple[int, int], batch_size: int, device):
    """Plain torch over the same brain boxes as the project path."""
    seg = np.zeros(norm.shape[1:], np.uint8)
    for box in boxes:
        seg[box] = reference_volume(
            ref_model,
            norm[(slice(None), *box)],
            pad=pad,
            batch_size=batch_size,
            device=device,
            amp_dtype=None,
        )
    return seg


def _cli_call(
    src: Path, case_dir: Path, out: Path, threads: int, extra: tuple[str, ...] = ()
) -> tuple[float, float, dict]:
    """One whole ``medseg brain-segment CASE --json`` call of the code in ``src`` (its demo weights):
    (wall s, CPU s of the child process, its JSON)."""
    import resource
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory() as links:
        (Path(links) / "medseg").symlink_to(src / "medseg")
        (Path(links) / "medseg_cli").symlink_to(src / "cli")
        env = {
            **__import__("os").environ,
            "PYTHONPATH": links,
            "OMP_NUM_THREADS": str(threads),
            "MKL_NUM_THREADS": str(threads),
            "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS": str(threads),
        }
        cmd = [sys.executable, "-c", "from medseg_cli.main import main; main()"]
        cmd += ["brain-segment", str(case_dir), "--out", str(out), "--overwrite", "--quiet", "--json", *extra]
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=links)
        wall = time.perf_counter() - t0
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise RuntimeError(f"{src}: brain-segment failed: {proc.stderr.strip()[-500:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, json.loads(proc.stdout)


def _dice_vs_truth(seg_path: str, truth) -> dict[str, float]:
    """Dice WT/TC/ET of a written label map (BraTS 2021 labels) against the phantom's internal labels."""
    import SimpleITK as sitk

    from medseg.brain.segment import region_masks

    pred = sitk.GetArrayFromImage(sitk.ReadImage(seg_path))
    got = {"WT": pred > 0, "TC": np.isin(pred, (1, 4)), "ET": pred == 4}
    out = {}
    for region, t in region_masks(truth).items():
        p = got[region]
        out[region] = round(2 * float((p & t).sum()) / max(1, int(p.sum() + t.sum())), 4)
    return out


def bench_case(args, device) -> dict:
    """One whole 240x240x155 case: the whole ``brain-segment`` call now vs today's path, and the
    project's inference vs a plain-torch reference of the same net on the same brain boxes.

    - ``whole call``: ``medseg brain-segment CASE`` in a child process (reading the NIfTI files,
      preprocessing as the weights ask, N4 included, inference, post-processing, writing), this
      tree against ``--before-src`` (an export of the code before, e.g.
      ``git archive 0f1ff74 medseg cli | tar -x -C /tmp/brain_before``), each with its own demo
      weights, interleaved, best of ``--repeats``;
    - ``inference``: ``predict_in_brain`` (engine predictor, brain slices and boxes, row-split
      output layers) against the same net in plain torch (``nn.Conv2d`` output layers, ``F.pad``,
      channels_last, ``inference_mode``) over the same boxes, with the demo weights.
    """
    import tempfile

    from medseg.brain.io import MODALITIES
    from medseg.brain.preprocess import preprocess
    from medseg.brain.sampling import slice_padding
    from medseg.brain.segment import (
        DEMO_WEIGHTS,
        brain_boxes,
        load_brain_model,
        make_predictor,
        predict_in_brain,
    )
    from medseg.engine.weights import resolve_weights
    from medseg.synthetic.brain import BrainPhantomConfig, make_brain_case, write_brain_case

    nx, ny, nz = args.size
    weights, _ = resolve_weights(args.weights, demo=DEMO_WEIGHTS)
    model, meta, prep = load_brain_model(weights)
    arch = meta.config["net"]["arch"]
    case = make_brain_case(7, BrainPhantomConfig(shape=(nz, ny, nx), spacing=(1.0, 1.0, 1.0)))
    raw = np.stack([case.images[m] for m in MODALITIES])
    bs = args.batch_size
    row: dict = {"arch": arch, "weights": weights.name, "batch_size": bs, "threads": args.threads}
    with tempfile.TemporaryDirectory() as tmp:
        case_dir = write_brain_case(case, tmp, name="BENCH_0007")
        now = Path(__file__).resolve().parents[1]
        srcs: dict[str, tuple[Path, tuple[str, ...]]] = {"now": (now, ())}
        if args.before_src:
            srcs["before"] = (Path(args.before_src).resolve(), ())
        if args.spacing_compare:  # the same tree at the case's own 1 mm spacing (today's path)
            srcs["native_spacing"] = (now, ("--native-spacing",))
        calls: dict[str, list[tuple[float, float]]] = {k: [] for k in srcs}
        volumes = {}
        for i in range(args.repeats):
            order = list(srcs.items()) if i % 2 == 0 else list(srcs.items())[::-1]
            for name, (src, extra) in order:
                out = Path(tmp) / f"out_{name}"
                wall, cpu, doc = _cli_call(src, case_dir, out, args.threads or 2, extra)
                calls[name].append((wall, cpu))
                volumes[name] = doc["items"][0]["metrics"]
                volumes[name]["dice"] = _dice_vs_truth(doc["items"][0]["outputs"]["seg"], case.label)
                print(
                    f"whole call {name}: {wall:.1f} s wall, {cpu:.1f} CPU s, Dice {volumes[name]['dice']}",
                    file=sys.stderr,
                    flush=True,
                )
        for name, runs in calls.items():
            row[f"whole_call_{name}_s"] = round(min(w for w, _ in runs), 1)
            row[f"whole_call_{name}_cpu_s"] = round(min(c for _, c in runs), 1)
            row[f"whole_call_{name}_volumes"] = volumes[name]
        if "before" in calls:
            row["whole_call_speedup"] = round(row["whole_call_before_s"] / row["whole_call_now_s"], 2)
            row["whole_call_speedup_cpu"] = round(
                row["whole_call_before_cpu_s"] / row["whole_call_now_cpu_s"], 2
            )

    if args.spacing_compare:
        return row
    norm, mask = preprocess(raw, case.spacing, prep)
    boxes = brain_boxes(mask, bs)
    box_pixels = sum(int(np.prod([s.stop - s.start for s in b])) for b in boxes)
    zs = np.flatnonzero(mask.any(axis=(1, 2)))
    predictor = make_predictor(model, device=str(device), amp="off", postprocess="argmax")
    ref_model = _plain_torch_copy(model).to(device)
    pad = slice_padding(arch)
    project_s, project_cpu, project_seg, peak = _timed(
        lambda: predict_in_brain(predictor, norm, mask, arch=arch, batch_size=bs), device
    )
    ref_s, ref_cpu, ref_seg, _ = _timed(
        lambda: reference_in_brain(ref_model, norm, boxes, pad=pad, batch_size=bs, device=device), device
    )
    row.update(
        {
            "case": f"synthetic {nx}x{ny}x{nz} @ 1 mm, brain {mask.mean():.1%} of the grid, "
            f"{zs.size} slices with brain",
            "box_pixels_fraction_of_grid": round(box_pixels / mask.size, 3),
            "inference_project_s": round(project_s, 1),
            "inference_project_cpu_s": round(project_cpu, 1),
            "inference_reference_s": round(ref_s, 1),
            "inference_reference_cpu_s": round(ref_cpu, 1),
            "inference_speedup_vs_reference": round(ref_s / project_s, 2),
            "inference_speedup_vs_reference_cpu": round(ref_cpu / project_cpu, 2),
            "labels_equal_to_reference_in_brain": round(
                float(np.mean(project_seg[mask] == ref_seg[mask])), 6
            ),
            "peak_rss_mb": round(peak, 1),
        }
    )
    return row


def bench_real(args) -> dict:
    """Real cases with expert labels in ``args.real``: the whole ``medseg brain-segment CASE`` call per case
    (child process: reading, N4, inference, post-processing, writing) with its wall and CPU seconds, and
    Dice / HD95 / volumes against the case's ``_seg`` labels (``brain-eval``'s metrics, labels detected).

    Cases that trained the shipped weights (the recorded split's training list) are skipped: no figure
    is ever reported on a training case. ``--spacing-compare`` also runs each case with ``--native-spacing``,
    ``--tta-compare`` with ``--no-tta``, ``--amp-compare`` with ``--amp off`` (fp32 where the default takes
    bf16); one after the other per case, so all see the same machine.
    """
    import tempfile

    from medseg.brain.evaluate import EvalPair, evaluate_pair
    from medseg.brain.io import expand_case_dirs, find_case_files

    root = Path(__file__).resolve().parents[1]
    split = json.loads((root / "medseg/weights/brain/brats2018_split.json").read_text(encoding="utf-8"))
    # absolute paths: the child process runs in a temporary folder
    dirs = [d.resolve() for d in expand_case_dirs([args.real]) if d.name not in split["train"]]
    extra = ("--weights", str(Path(args.weights).resolve())) if args.weights else ()
    modes = {
        "default": extra,
        **({"native-spacing": (*extra, "--native-spacing")} if args.spacing_compare else {}),
        **({"no-tta": (*extra, "--no-tta")} if args.tta_compare else {}),
        **({"fp32": (*extra, "--amp", "off")} if args.amp_compare else {}),
    }
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = args.keep or tmp  # --keep: the label maps stay there (PRED/<mode>/<case>_seg.nii.gz)
        for d in dirs:
            files = find_case_files(d)
            for mode, flags in modes.items():
                out = Path(tmp) / mode
                wall, cpu, doc = _cli_call(root, d, out, args.threads or 2, flags)
                seg = Path(doc["items"][0]["outputs"]["seg"])
                metrics, *_ = evaluate_pair(EvalPair(files.name, seg, files.seg))
                row = {"case": files.name, "mode": mode, "wall_s": round(wall, 1), "cpu_s": round(cpu, 1)}
                row.update({k: round(v, 4) for k, v in metrics.items() if k.startswith(("dice", "hd95"))})
                row.update({k: round(v, 2) for k, v in metrics.items() if k.endswith("_ml")})
                rows.append(row)
                print(json.dumps(row), flush=True)
    means = {}
    for mode in modes:
        rs = [r for r in rows if r["mode"] == mode]
        keys = [k for k in rs[0] if k not in ("case", "mode")] if rs else []
        means[mode] = {k: round(float(np.mean([r[k] for r in rs])), 4) for k in keys}
    return {"cases": rows, "mean": means, "skipped_training_cases": split["train"]}


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
        help="one whole synthetic case: whole brain-segment call vs --before-src, inference vs plain torch",
    )
    parser.add_argument(
        "--before-src",
        default=None,
        help="--case: folder holding medseg/ and cli/ of the code to compare with (today's path)",
    )
    parser.add_argument(
        "--spacing-compare",
        action="store_true",
        help="--case: also time the call with --native-spacing (nets at 1 mm instead of the weights' "
        "training spacing), Dice of each against the phantom's truth; skips the plain-torch part",
    )
    parser.add_argument(
        "--weights", default=None, help="weights for --case / --real (default: brain-segment's default)"
    )
    parser.add_argument(
        "--real",
        default=None,
        metavar="FOLDER",
        help="real cases with expert labels (e.g. ../shared/realdata/brain_brats2018): whole brain-segment "
        "call per case, seconds and Dice/HD95; the split's training cases are skipped",
    )
    parser.add_argument("--keep", default=None, metavar="DIR", help="--real: keep the label maps in DIR")
    parser.add_argument(
        "--tta-compare",
        action="store_true",
        help="--real: also run each case with --no-tta (slice nets once instead of two views)",
    )
    parser.add_argument(
        "--amp-compare",
        action="store_true",
        help="--real: also run each case with --amp off (fp32 where the default runs bf16 on the CPU)",
    )
    parser.add_argument(
        "--runtimes",
        action="store_true",
        help="PyTorch vs OpenVINO: brain-segment on a real BraTS case per runtime (issue 21)",
    )
    args = parser.parse_args()
    if args.runtimes:
        from _runtimes import brain, print_result

        print_result("brain_segment --runtimes", brain(args), None)
        return

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
    if not args.case and not args.real:
        args.batch_size = min(args.batch_size, args.slices)
    env = {
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or "cpu",
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "amp": {None: "fp32"}.get(amp_dtype, str(amp_dtype).replace("torch.", "")),
        "size_xyz": list(args.size),
        "widths": "from the weights"
        if args.case or args.real
        else [args.local_channels, args.global_channels],
        "batch_size": args.batch_size,
        "repeats": args.repeats,
    }
    print(json.dumps(env))
    if args.real:
        res = bench_real(args)
        print(f"\n{'case':<24}{'mode':<16}{'wall s':>8}{'CPU s':>8}{'WT':>7}{'TC':>7}{'ET':>7}{'HD95 WT':>9}")
        for r in res["cases"] + [{"case": "mean", "mode": m, **v} for m, v in res["mean"].items()]:
            print(
                f"{r['case']:<24}{r['mode']:<16}{r['wall_s']:>8.1f}{r['cpu_s']:>8.1f}{r['dice_WT']:>7.3f}"
                f"{r['dice_TC']:>7.3f}{r['dice_ET']:>7.3f}{r['hd95_WT']:>9.1f}"
            )
        if args.json:
            with open(args.json, "w", encoding="utf-8") as fh:
                json.dump({"env": env, "real": res}, fh, indent=2)
        return
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
