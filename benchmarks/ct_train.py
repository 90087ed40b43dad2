"""ct-train within a time budget on a REAL paired acquisition: held-out reduction, steps, CPU, memory.

    python benchmarks/ct_train.py --pair ../shared/realdata/ct_philips_two_kernels --minutes 5
    python benchmarks/ct_train.py --pair ... --minutes 1.5 --compare-augment --threads 2

Each run is the user's whole command, ``medseg ct-train PAIR --from X --to Y --out RUN --max-minutes M
--json`` with every other setting at its default, in a child process (loading, training, validations
and the held-out test all count, as for the user). Printed per run: the held-out test RMSE before and
after and its reduction, the steps the budget planned, the last epoch's validation RMSE (what chose
the defaults), wall time, CPU time (user + system of the child) and the child's peak RSS.
``--compare-augment`` runs every direction a second time with ``--no-augment`` right after, so the
two are measured on the same machine state, and prints the differences. The issue's target (issue
20): UB -> YA >= 80 % within 5 minutes on 2 cores. Results: docs/ct.md ("Training").
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DIRECTIONS = ("UB:YA", "YA:UB")  # the Philips pair's kernels: standard -> bone, bone -> standard


def _child_usage() -> tuple[float, float]:
    """(CPU seconds, peak RSS MB) of the children that finished so far (Linux: ru_maxrss in kB)."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime, r.ru_maxrss / 1024


def run_once(
    pair: Path, src: str, tgt: str, minutes: float, work: Path, *, augment: bool, threads: int
) -> dict:
    """One ``ct-train`` call; its summary figures."""
    out = work / f"{src}_{tgt}_{'aug' if augment else 'plain'}"
    cmd = [sys.executable, "-m", "medseg_cli.main", "ct-train", str(pair), "--from", src, "--to", tgt]
    cmd += ["--out", str(out), "--max-minutes", str(minutes), "--json", "--quiet", "--overwrite"]
    cmd += ["--augment" if augment else "--no-augment"]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    cpu0, _ = _child_usage()
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    wall = time.perf_counter() - t0
    cpu1, peak = _child_usage()
    if proc.returncode != 0:
        raise SystemExit(f"ct-train failed ({proc.returncode}): {proc.stdout[-2000:]} {proc.stderr[-2000:]}")
    doc = json.loads(proc.stdout)
    extra = doc.get("extra") or {}
    test, budget = extra.get("test", {}), extra.get("budget", {})
    history = doc.get("history") or []
    val = [h.get("val_rmse_hu") for h in history if h.get("val_rmse_hu") is not None]
    return {
        "direction": f"{src}->{tgt}",
        "augment": augment,
        "minutes": minutes,
        "steps": budget.get("steps"),
        "val_rmse_last_hu": round(val[-1], 2) if val else None,
        "test_rmse_before_hu": round(test.get("rmse_before_hu", float("nan")), 2),
        "test_rmse_after_hu": round(test.get("rmse_after_hu", float("nan")), 2),
        "reduction_pct": round(test.get("reduction_pct", float("nan")), 2),
        "wall_s": round(wall, 1),
        "cpu_s": round(cpu1 - cpu0, 1),
        "peak_rss_mb_children": round(peak, 1),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pair", type=Path, required=True, help="a study folder with both kernels' series")
    p.add_argument("--directions", nargs="+", default=list(DIRECTIONS), help="SRC:TGT kernel pairs")
    p.add_argument("--minutes", type=float, default=5.0, help="--max-minutes of each run")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--compare-augment", action="store_true", help="also run each with --no-augment")
    args = p.parse_args()
    if not args.pair.is_dir():
        raise SystemExit(f"{args.pair}: not a folder")
    rows = []
    with tempfile.TemporaryDirectory(prefix="medseg-ct-train-") as tmp:
        for direction in args.directions:
            src, tgt = direction.split(":")
            for augment in (True, False) if args.compare_augment else (True,):
                row = run_once(
                    args.pair, src, tgt, args.minutes, Path(tmp), augment=augment, threads=args.threads
                )
                rows.append(row)
                print(json.dumps({"benchmark": "ct_train", **row}), flush=True)
    print(
        f"\n{'direction':<10} {'crops':<18} {'steps':>6} {'val HU':>7} {'test HU':>16} {'reduction':>9} "
        f"{'wall s':>7} {'CPU s':>7}"
    )
    for r in rows:
        crops = "turned/mirrored" if r["augment"] else "as cut"
        test = f"{r['test_rmse_before_hu']:.1f} -> {r['test_rmse_after_hu']:.2f}"
        print(
            f"{r['direction']:<10} {crops:<18} {r['steps']!s:>6} {r['val_rmse_last_hu']!s:>7} {test:>16} "
            f"{r['reduction_pct']:>8.1f}% {r['wall_s']:>7.1f} {r['cpu_s']:>7.1f}"
        )
    if args.compare_augment:
        for direction in args.directions:
            d = direction.replace(":", "->")
            a = next(r for r in rows if r["direction"] == d and r["augment"])
            b = next(r for r in rows if r["direction"] == d and not r["augment"])
            print(
                f"{d}: augmented minus as cut: reduction {a['reduction_pct'] - b['reduction_pct']:+.2f} points, "
                f"validation {a['val_rmse_last_hu'] - b['val_rmse_last_hu']:+.2f} HU, "
                f"steps ratio {a['steps'] / max(b['steps'] or 1, 1):.2f}"
            )


if __name__ == "__main__":
    main()
