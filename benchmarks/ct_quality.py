"""CT kernel conversion quality on synthetic Siemens-calibrated phantoms, through the commands' own calls.

    OMP_NUM_THREADS=1 python benchmarks/ct_quality.py directions [--seeds 9001 9002] [--also-conditioned]
    OMP_NUM_THREADS=1 python benchmarks/ct_quality.py agreement [--seeds 5001 ... 5006]

``directions``: the 12 directions among B10f/B30f/B50f/B70f, each through ``medseg.ct.convert.convert``
with ``--from X --to Y`` and a ``--reference`` (what ``ct-convert`` runs: whatever weights it picks,
direction-specific where they exist, else the sharpness-conditioned converter); prints the model that
ran and the RMSE reduction (inside the patient, without the table, as the QA report measures it).
``--also-conditioned`` runs every direction a second time with the conditioned weights forced (what
the fallback would do). Phantoms: ``varied_config`` (default seeds 9001-9004, the demo weights'
held-out test set), 192^2 x 8 slices. SYNTHETIC data: a stand-in for the real Siemens slices the
issue checks, not a measure of them.

``agreement``: ``ct-report`` both ways between B30f and B50f on the QA cohort of
``tests/ct/test_quality.py`` (default phantoms, seeds 5001-5006): RMSE and the Bland-Altman bias,
95 % limits of agreement and ICC(A,1) of LAA-950 and Perc15 for the direction weights and the
sharpness-conditioned converter (the report's 'conditioned vs reference' row).
"""

from __future__ import annotations

import argparse
import logging
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

KERNELS = ("B10f", "B30f", "B50f", "B70f")


def _write_phantoms(root: Path, seeds: list[int], size: int, slices: int) -> list[Path]:
    from medseg.synthetic.ct_phantom import PhantomConfig, make_exam, varied_config, write_exam_dicom

    folders = []
    for seed in seeds:
        exam = make_exam(
            seed, kernels=KERNELS, config=varied_config(seed, PhantomConfig(size=size, n_slices=slices))
        )
        folder = root / f"exam{seed}"
        write_exam_dicom(exam, folder, seed=seed, name=folder.name)
        folders.append(folder)
    return folders


def _direction(exams: list[Path], work: Path, src: str, tgt: str, weights: Path | None) -> dict:
    """One direction over the exams through convert(): per-exam RMSE before/after and the model."""
    from medseg.ct.convert import ConvertConfig, convert

    before, after, models = [], [], set()
    for exam in exams:
        out = work / f"{exam.name}_{src}_{tgt}_{'c' if weights else 'd'}"
        cfg = ConvertConfig(source=src, target=tgt, weights=weights, device="cpu", pdf=False, overwrite=True)
        res = convert(exam / src, out, cfg, reference=exam / tgt, report_dir=work / f"{out.name}_qa")
        m = res.items[0].metrics
        before.append(m["rmse_original_hu"])
        after.append(m["rmse_converted_hu"])
        model = res.summary.get("model", "direction")
        sharp = res.summary.get("sharpness")
        models.add(
            model + (f" {sharp['source']:.2f}->{sharp['target']:.2f}" if sharp and len(exams) == 1 else "")
        )
    b, a = np.asarray(before), np.asarray(after)
    per_exam = 100.0 * (b - a) / b
    return {
        "direction": f"{src} -> {tgt}",
        "model": ", ".join(sorted(models)),
        "rmse_before": float(b.mean()),
        "rmse_after": float(a.mean()),
        "reduction": float(100.0 * (b.mean() - a.mean()) / b.mean()),
        "min": float(per_exam.min()),
        "max": float(per_exam.max()),
    }


def directions(args: argparse.Namespace) -> None:
    from medseg.ct.conditioned import DEMO_FILE
    from medseg.ct.models import DEMO_MODELS
    from medseg.errors import MedsegError

    cpu0 = time.process_time()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        exams = _write_phantoms(root / "phantoms", args.seeds, args.size, args.slices)
        forced = args.conditioned or DEMO_MODELS / DEMO_FILE
        runs = [] if args.conditioned_only else [(None, "default")]
        runs += [(forced, "conditioned forced")] if args.also_conditioned or args.conditioned_only else []
        print("| direction | path | model that ran | mean RMSE before -> after (HU) | reduction (per exam) |")
        print("|---|---|---|---|---|")
        for weights, label in runs:
            for src in KERNELS:
                for tgt in KERNELS:
                    if src == tgt:
                        continue
                    try:
                        r = _direction(exams, root, src, tgt, weights)
                    except MedsegError as exc:  # e.g. a planned sharpness outside the trained range
                        print(f"| {src} -> {tgt} | {label} | refused: {exc} | | |", flush=True)
                        continue
                    print(
                        f"| {r['direction']} | {label} | {r['model']} | {r['rmse_before']:.1f} -> {r['rmse_after']:.1f} "
                        f"| {r['reduction']:.1f} % ({r['min']:.1f} to {r['max']:.1f}) |",
                        flush=True,
                    )
    print(f"seeds {args.seeds}, {args.size}^2 x {args.slices}; CPU {time.process_time() - cpu0:.0f} s")


def agreement(args: argparse.Namespace) -> None:
    from medseg.ct.report import ReportConfig, run_ct_report
    from medseg.synthetic.ct_phantom import write_cohort

    cpu0 = time.process_time()
    print("| direction | model | quantity | bias | 95 % LoA | ICC(A,1) | mean RMSE reduction |")
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        write_cohort(Path(tmp) / "cohort", args.seeds, kernels=("B30f", "B50f"))
        dirs: tuple = ()
        if args.conditioned:  # a candidate conditioned file: found first in the models folders
            (Path(tmp) / "models").mkdir()
            shutil.copy(args.conditioned, Path(tmp) / "models" / "candidate.safetensors")
            dirs = (Path(tmp) / "models",)
        for src, tgt in (("B50f", "B30f"), ("B30f", "B50f")):
            cfg = ReportConfig(src, tgt, device="cpu", pdf=False, conditioned=True, models_dirs=dirs)
            s = run_ct_report([Path(tmp) / "cohort"], Path(tmp) / f"qa_{src}", cfg).summary
            plan = f"sharpness {s['sharpness_plan_source_mean']:.2f} -> {s['sharpness_plan_target_mean']:.2f}"
            for comp, label, red in (
                ("original", "none (raw)", float("nan")),
                ("converted", "direction weights", s["rmse_reduction_pct_mean"]),
                ("conditioned", f"conditioned ({plan})", s["rmse_reduction_conditioned_pct_mean"]),
            ):
                for q, unit in (("laa950", "points"), ("perc15", "HU")):
                    v = s[f"bland_altman_{q}"][f"{comp}_vs_reference"]
                    print(
                        f"| {src} -> {tgt} | {label} | {q} ({unit}) | {v['bias']:+.2f} | {v['loa_low']:+.2f} to "
                        f"{v['loa_high']:+.2f} | {v['icc']:.3f} | {red:.1f} % |",
                        flush=True,
                    )
    print(f"seeds {args.seeds}; CPU {time.process_time() - cpu0:.0f} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="mode", required=True)
    d = sub.add_parser("directions")
    d.add_argument("--seeds", type=int, nargs="+", default=[9001, 9002, 9003, 9004])
    d.add_argument("--size", type=int, default=192)
    d.add_argument("--slices", type=int, default=8)
    d.add_argument("--also-conditioned", action="store_true")
    d.add_argument("--conditioned-only", action="store_true", help="only the forced conditioned runs")
    a = sub.add_parser("agreement")
    a.add_argument("--seeds", type=int, nargs="+", default=[5001, 5002, 5003, 5004, 5005, 5006])
    for p in (d, a):
        p.add_argument(
            "--conditioned", type=Path, default=None, help="conditioned weights (default: shipped)"
        )
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    (directions if args.mode == "directions" else agreement)(args)


if __name__ == "__main__":
    main()
