"""PyTorch vs OpenVINO (issue 21), shared by every pipeline benchmark's ``--runtimes`` part.

Everything here is measured in ONE run, the two runtimes interleaved (order alternating), on REAL
inputs from ``../shared/realdata`` (``MEDSEG_REALDATA`` overrides): the whole CLI command as a child
process per runtime (wall time, peak RSS of that child from ``wait4``), the network alone where it
is cheap enough, the start-up cost (convert + compile, cold and from the cache) and the agreement
of the outputs within the issue's tolerances. The machines here are shared: compare ratios only.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
REAL = Path(os.environ.get("MEDSEG_REALDATA", REPO.parent / "shared" / "realdata"))
RUNTIMES = ("torch", "openvino")
log = logging.getLogger("bench.runtimes")


def env_line() -> dict[str, Any]:
    """CPU model, the SIMD flags that decide the kernels, load and versions: printed with every result."""
    import torch

    from medseg.engine.openvino_runtime import openvino_version

    model, flags = "unknown", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and model == "unknown":
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    simd = [f for f in ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16") if f in flags]
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "simd": simd,
        "load_average": [round(v, 2) for v in os.getloadavg()],
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "openvino": openvino_version(),
    }


_LAUNCHER = """
import os, sys
pid = os.fork()
if pid == 0:
    os.execvp(sys.argv[1], sys.argv[1:])
_, status, usage = os.wait4(pid, 0)
sys.stderr.write("\\nMEDSEG_BENCH_MAXRSS_KB %d\\n" % usage.ru_maxrss)
sys.exit(os.waitstatus_to_exitcode(status))
"""


def _child_peak_rss(argv: list[str], env: dict[str, str]) -> tuple[float, float, int, str, str]:
    """Run a child and return (wall, its own peak RSS in MB, rc, stdout, stderr).

    Through a small launcher process: Linux carries a process's RSS high-water mark across fork
    and exec, so a child forked straight from this (large) benchmark process would report ours.
    """
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", _LAUNCHER, *argv], env=env, capture_output=True, text=True, check=False
    )
    wall = time.perf_counter() - t0
    rss_kb, err_lines = 0.0, []
    for line in proc.stderr.splitlines():
        if line.startswith("MEDSEG_BENCH_MAXRSS_KB "):
            rss_kb = float(line.split()[1])
        else:
            err_lines.append(line)
    return wall, rss_kb / 1024, proc.returncode, proc.stdout, "\n".join(err_lines)


def interleaved_commands(
    make_argv: Callable[[str, int], list[str]], *, repeats: int, env: dict[str, str]
) -> dict[str, Any]:
    """Each runtime ``repeats`` times, order alternating (T O, O T, ...): best and median wall, peak RSS."""
    runs: dict[str, list[dict[str, Any]]] = {r: [] for r in RUNTIMES}
    for rep in range(repeats):
        order = RUNTIMES if rep % 2 == 0 else RUNTIMES[::-1]
        for runtime in order:
            wall, rss, rc, out, err = _child_peak_rss(make_argv(runtime, rep), env)
            doc = None
            try:
                doc = json.loads(out) if out.strip() else None
            except json.JSONDecodeError:
                pass
            if rc not in (0, 5):
                raise RuntimeError(f"{runtime} run exited {rc}: {err.strip()[-600:]}")
            runs[runtime].append({"wall_s": round(wall, 2), "peak_rss_mb": round(rss), "json": doc})
            log.info("  %s run %d: %.1f s, peak RSS %.0f MB", runtime, rep + 1, wall, rss)
    out: dict[str, Any] = {}
    for runtime, rs in runs.items():
        walls = sorted(r["wall_s"] for r in rs)
        out[runtime] = {
            "walls_s": [r["wall_s"] for r in rs],
            "best_s": walls[0],
            "median_s": float(np.median(walls)),
            "peak_rss_mb": max(r["peak_rss_mb"] for r in rs),
        }
    out["ratio_best"] = round(out["torch"]["best_s"] / out["openvino"]["best_s"], 2)
    out["ratio_median"] = round(out["torch"]["median_s"] / out["openvino"]["median_s"], 2)
    out["runs"] = runs
    return out


def child_env(cache: Path, threads: int | None) -> dict[str, str]:
    env = dict(os.environ, MEDSEG_CACHE_DIR=str(cache), PYTHONPATH=str(REPO))
    env.pop("MEDSEG_RUNTIME", None)
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    return env


def startup_cost(build: Callable[[], Any], cache: Path) -> dict[str, Any]:
    """Convert + compile with an empty cache (cold), then again from the cache (a later run's start)."""
    shutil.rmtree(cache / "openvino", ignore_errors=True)
    before = os.environ.get("MEDSEG_CACHE_DIR")
    os.environ["MEDSEG_CACHE_DIR"] = str(cache)
    try:
        cold = build().startup
        cached = build().startup
    finally:
        if before is None:
            os.environ.pop("MEDSEG_CACHE_DIR", None)
        else:
            os.environ["MEDSEG_CACHE_DIR"] = before
    assert not cold["cached"] and cached["cached"], (cold, cached)
    return {
        "cold_s": round(cold["convert_s"] + cold["compile_s"], 2),
        "cold_convert_s": cold["convert_s"],
        "cached_s": round(cached["convert_s"] + cached["compile_s"], 2),
        "cached_load_s": cached["convert_s"],
        "compile_s": cached["compile_s"],
    }


def interleaved_calls(fns: dict[str, Callable[[Any], Any]], inputs: list[Any]) -> dict[str, Any]:
    """Every input through every function, order alternating per input; outputs kept for comparison."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    outs: dict[str, list[Any]] = {k: [] for k in fns}
    names = list(fns)
    for i, x in enumerate(inputs):
        for name in names if i % 2 == 0 else names[::-1]:
            t0 = time.perf_counter()
            outs[name].append(fns[name](x))
            times[name].append(time.perf_counter() - t0)
    res = {
        k: {"median_s": round(float(np.median(v)), 4), "total_s": round(sum(v), 2)} for k, v in times.items()
    }
    return {"times": res, "outputs": outs, "raw": times}


def matmul_peak_gflops(n: int = 4096, repeats: int = 4) -> float:
    """The CPU's fp32 peak as PyTorch's (MKL/oneDNN) large matmul reaches it right now (best of runs)."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best = min(_timed(lambda: torch.mm(a, b)) for _ in range(repeats))
    return 2 * n**3 / best / 1e9


def _timed(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def conv_flops(model: Any, shape: tuple[int, ...]) -> float:
    """FLOPs (2 x multiply-adds) of the convolutions for one input of ``shape`` (hooks on a real pass)."""
    import torch
    from torch import nn

    total = [0.0]

    def hook(mod: nn.Conv2d, _inp: Any, out: torch.Tensor) -> None:
        k = mod.kernel_size[0] * mod.kernel_size[1]
        total[0] += 2.0 * out.numel() * k * mod.in_channels / mod.groups

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Conv2d)]
    try:
        with torch.no_grad():
            model(torch.zeros(shape))
    finally:
        for h in handles:
            h.remove()
    return total[0]


def print_result(name: str, result: dict[str, Any], out: Path | None) -> None:
    """One JSON document on stdout (and in ``out``), without the bulky per-run documents."""

    def strip(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: strip(x) for k, x in v.items() if k not in ("json", "outputs", "raw")}
        if isinstance(v, list):
            return [strip(x) for x in v]
        return v

    doc = {"benchmark": name, "env": env_line(), **strip(result)}
    text = json.dumps(doc, indent=2, default=str)
    print(text)
    if out is not None:
        Path(out).write_text(text)


def _repeats(args: Any) -> int:
    """Timed runs per runtime: at least 2, so each runtime runs once first and once second."""
    return max(2, int(getattr(args, "repeats", None) or getattr(args, "repeat", None) or 2))


def medseg_argv(*args: Any) -> list[str]:
    return [sys.executable, "-m", "medseg", *map(str, args)]


# --- the pipelines ----------------------------------------------------------------------------------


def ct(args: Any) -> dict[str, Any]:
    """CT net on the real Philips YA (bone) slab: HU agreement, net alone, physical limit, ct-convert."""
    import torch

    from medseg.ct.models import find_model, load_net, slice_predictor
    from medseg.io.dicom import open_series, read_series

    series_dir = REAL / "ct_philips_two_kernels" / "YA_bone"
    volume, _ = read_series(open_series(series_dir))
    entry = find_model("B50f", "B30f")
    net = load_net(entry)
    work = Path(tempfile.mkdtemp(prefix="bench_rt_ct_"))
    cache = work / "cache"
    result: dict[str, Any] = {
        "input": f"{series_dir} ({volume.shape[0]} x {volume.shape[1]}x{volume.shape[2]})"
    }
    result["startup"] = startup_cost(lambda: slice_predictor(net, device="cpu", runtime="openvino"), cache)
    os.environ["MEDSEG_CACHE_DIR"] = str(cache)
    preds: dict[str, Callable[[Any], Any]] = {
        r: slice_predictor(net, device="cpu", runtime=r) for r in RUNTIMES
    }
    a_mm, b_mm = torch.randn(2048, 2048), torch.randn(2048, 2048)
    preds["matmul"] = lambda _x: (torch.mm(a_mm, b_mm), None)[1]  # the CPU's peak, sampled between slices
    slices = [volume[i : i + 1, None] for i in range(volume.shape[0])][: args.slices or None]
    calls = interleaved_calls(preds, slices)
    a, b = (np.concatenate(calls["outputs"][r]) for r in RUNTIMES)
    diff = (b.astype(np.float64) - a.astype(np.float64)).ravel()
    result["precision_hu"] = {
        "slices": len(slices),
        "max_abs": float(np.abs(diff).max()),
        "rmse": float(np.sqrt(np.mean(diff**2))),
        "tolerance": "max <= 0.5 HU, RMSE <= 0.05 HU",
    }
    t = {r: calls["times"][r]["median_s"] for r in RUNTIMES}
    flops = conv_flops(net, (1, 1, volume.shape[1], volume.shape[2]))
    peak = 2 * 2048**3 / calls["times"]["matmul"]["median_s"] / 1e9  # median, as the nets' times
    result["net_alone"] = {
        "median_s_per_slice": t,
        "ratio_median": round(t["torch"] / t["openvino"], 2),
        "ratio_total": round(calls["times"]["torch"]["total_s"] / calls["times"]["openvino"]["total_s"], 2),
    }
    result["physical_limit"] = {
        "gflop_per_slice": round(flops / 1e9, 1),
        "matmul_peak_gflops": round(peak, 1),
        "matmul_best_gflops": round(2 * 2048**3 / min(calls["raw"]["matmul"]) / 1e9, 1),
        **{f"{r}_gflops": round(flops / t[r] / 1e9, 1) for r in RUNTIMES},
        **{f"{r}_of_peak": round(flops / t[r] / 1e9 / peak, 2) for r in RUNTIMES},
    }
    if not getattr(args, "skip_command", False):
        out_dir = work / "out"
        out_dir.mkdir()

        def argv(runtime: str, rep: int) -> list[str]:
            return medseg_argv(
                "ct-convert", series_dir, "--from", "B50f", "--to", "B30f", "--weights", entry.path,
                "--out", out_dir / f"{runtime}{rep}.nii.gz", "--device", "cpu", "--runtime", runtime,
                "-q", "--json",
            )  # fmt: skip

        result["command"] = interleaved_commands(argv, repeats=_repeats(args), env=child_env(cache, None))
        result["command"]["runtime_recorded"] = {
            r: result["command"]["runs"][r][0]["json"]["summary"].get("runtime") for r in RUNTIMES
        }
    shutil.rmtree(work, ignore_errors=True)
    return result


def brain(args: Any) -> dict[str, Any]:
    """brain-segment on a real BraTS 2018 validation case per runtime: labels equal, wall, start-up."""
    from medseg.brain.segment import DEMO_WEIGHTS, load_brain_model, make_predictor
    from medseg.engine.weights import resolve_weights

    case = REAL / "brain_brats2018" / (getattr(args, "runtime_case", None) or "Brats18_2013_20_1")
    weights, _ = resolve_weights(getattr(args, "weights", None), demo=DEMO_WEIGHTS)
    model, _, _ = load_brain_model(weights)
    work = Path(tempfile.mkdtemp(prefix="bench_rt_brain_"))
    cache = work / "cache"
    result: dict[str, Any] = {"input": str(case), "weights": str(weights)}
    result["startup"] = startup_cost(lambda: make_predictor(model, device="cpu", runtime="openvino"), cache)

    def argv(runtime: str, rep: int) -> list[str]:
        out = work / f"{runtime}{rep}.nii.gz"
        return medseg_argv(
            "brain-segment", case, "--out", out, "--weights", weights, "--device", "cpu",
            "--runtime", runtime, "-q", "--json",
        )  # fmt: skip

    result["command"] = interleaved_commands(
        argv, repeats=_repeats(args), env=child_env(cache, getattr(args, "threads", None))
    )
    result["command"]["runtime_recorded"] = {
        r: result["command"]["runs"][r][0]["json"]["summary"].get("runtime") for r in RUNTIMES
    }
    result["precision_labels"] = _label_agreement(work / "torch0.nii.gz", work / "openvino0.nii.gz")
    shutil.rmtree(work, ignore_errors=True)
    return result


def _label_agreement(a_path: Path, b_path: Path) -> dict[str, Any]:
    """Share of equal voxels: all of them, and those either runtime labels as tumour (the hard part)."""
    import nibabel as nib

    a = np.asarray(nib.load(str(a_path)).dataobj)
    b = np.asarray(nib.load(str(b_path)).dataobj)
    tumour = (a > 0) | (b > 0)
    return {
        "voxels": int(a.size),
        "equal_all": float((a == b).mean()),
        "tumour_voxels": int(tumour.sum()),
        "equal_in_tumour": float((a[tumour] == b[tumour]).mean()) if tumour.any() else 1.0,
        "tolerance": ">= 99.9 % voxels equal",
    }


def cells(args: Any) -> dict[str, Any]:
    """Real DSB 2018 validation images: AP@0.5 per runtime (library path), cells-segment per runtime."""
    from medseg.cells.evaluate import evaluate_labels, summarise
    from medseg.cells.io import read_image, read_mask
    from medseg.cells.predict import make_predictor
    from medseg.cells.segment import CellSegmenter, SegmentConfig
    from medseg.cells.weights import instances_from_mask
    from medseg.engine.openvino_runtime import runtime_scope

    data = REAL / "nuclei_dsb2018_stage1"
    weights = getattr(args, "weights", None)
    split = json.loads((REPO / "medseg" / "weights" / "cells" / "dsb2018_split.json").read_text())
    ids = sorted(split["validation"])[: getattr(args, "runtime_images", None) or None]
    work = Path(tempfile.mkdtemp(prefix="bench_rt_cells_"))
    cache = work / "cache"
    os.environ["MEDSEG_CACHE_DIR"] = str(cache)
    segs = {}
    for runtime in RUNTIMES:
        with runtime_scope(runtime):
            segs[runtime] = CellSegmenter(SegmentConfig(weights=weights, device="cpu", stain="auto"))
    seg = segs["openvino"]
    result: dict[str, Any] = {"input": f"{data} ({len(ids)} validation images)", "weights": str(seg.weights)}
    result["startup"] = startup_cost(
        lambda: make_predictor(
            seg.predictor.model, device="cpu", runtime="openvino", config=seg.model_config
        ),
        cache,
    )
    truths, planes = [], []
    for i in ids:
        image, _ = read_image(data / "images" / f"{i}.png", allow_stack=False, keep_color=True)
        planes.append(image[0])
        truths.append(instances_from_mask(read_mask(data / "masks" / f"{i}.tif")))
    calls = interleaved_calls({r: segs[r].analyse for r in RUNTIMES}, planes)
    ap = {}
    for runtime in RUNTIMES:
        rows = [evaluate_labels(t, r.labels) for t, r in zip(truths, calls["outputs"][runtime])]
        ap[runtime] = round(summarise(rows)["ap50"], 4)
    prob_diff = max(
        float(np.abs(a.prob - b.prob).max())
        for a, b in zip(calls["outputs"]["torch"], calls["outputs"]["openvino"])
    )
    result["precision"] = {
        "images": len(ids),
        "ap50": ap,
        "ap50_difference": round(abs(ap["torch"] - ap["openvino"]), 4),
        "max_probability_difference": prob_diff,
        "tolerance": "AP@0.5 within 0.005",
    }
    t = {r: calls["times"][r]["total_s"] for r in RUNTIMES}
    result["library_path"] = {"total_s": t, "ratio": round(t["torch"] / t["openvino"], 2)}
    if not getattr(args, "skip_command", False):
        folder = work / "images"
        folder.mkdir()
        for i in ids[: getattr(args, "command_images", None) or None]:
            (folder / f"{i}.png").symlink_to(data / "images" / f"{i}.png")

        def argv(runtime: str, rep: int) -> list[str]:
            out = work / f"{runtime}{rep}"
            extra = ["--weights", weights] if weights else []
            return medseg_argv(
                "cells-segment", folder, "--out", out, *extra, "--device", "cpu", "--runtime", runtime,
                "-q", "--json",
            )  # fmt: skip

        result["command"] = interleaved_commands(
            argv, repeats=_repeats(args), env=child_env(cache, getattr(args, "threads", None))
        )
        result["command"]["images"] = len(list(folder.iterdir()))
        result["command"]["runtime_recorded"] = {
            r: result["command"]["runs"][r][0]["json"]["summary"].get("runtime") for r in RUNTIMES
        }
    shutil.rmtree(work, ignore_errors=True)
    return result


def slide(args: Any) -> dict[str, Any]:
    """slide-score per runtime on the shipped sample slide (detection counts equal) and, for speed, on
    a synthetic slide with ``--tissue-mm`` of tissue (the sample slide has too few tiles to time)."""
    from medseg.engine.weights import resolve_weights
    from medseg.pathology.detector import DEMO_WEIGHTS, load_detector
    from medseg.synthetic.slides import SlideSpec, write_slide

    sample = REPO / "sample_data" / "pathology" / "sample_slide.tiff"
    weights, _ = resolve_weights(getattr(args, "weights", None), demo=DEMO_WEIGHTS)
    work = Path(tempfile.mkdtemp(prefix="bench_rt_slide_"))
    cache = work / "cache"
    result: dict[str, Any] = {"weights": str(weights)}
    result["startup"] = startup_cost(
        lambda: load_detector(weights, device="cpu", runtime="openvino").predictor, cache
    )
    size, side = int(args.sizes[0]), int(args.tissue_mm * 1000 / 0.5)
    c = size // 2
    big = work / f"synthetic_{size}.tiff"
    box = (c - side // 2, c - side // 2, c + side // 2, c + side // 2)
    write_slide(big, SlideSpec(width=size, height=size, seed=99, tissue_box=box, tissue_fraction=0.95))
    for name, path in (("sample", sample), (f"synthetic_{size}px_{args.tissue_mm:g}mm", big)):

        def argv(runtime: str, rep: int, path: Path = path, name: str = name) -> list[str]:
            return medseg_argv(
                "slide-score", path, "--out", work / f"{name}_{runtime}{rep}", "--weights", weights,
                "--device", "cpu", "--runtime", runtime, "-q", "--json",
            )  # fmt: skip

        res = interleaved_commands(argv, repeats=_repeats(args), env=child_env(cache, None))
        counts = {}
        for runtime in RUNTIMES:
            geo = next((work / f"{name}_{runtime}0").rglob("detections.geojson"))
            counts[runtime] = len(json.loads(geo.read_text())["features"])
        res["runtime_recorded"] = {r: res["runs"][r][0]["json"]["summary"].get("runtime") for r in RUNTIMES}
        res["runtime_part"] = res["runs"]["openvino"][0]["json"]["summary"].get("runtime_part")
        res["detections"] = counts
        res["detections_equal"] = len(set(counts.values())) == 1
        result[name] = res
    shutil.rmtree(work, ignore_errors=True)
    return result
