"""Train (and measure) the sharpness-conditioned CT kernel converter, leave-one-vendor-out.

    OMP_NUM_THREADS=1 python scripts/train_conditioned_ct.py --out runs/no_philips --holdout Philips \\
        --max-minutes 7 [--resume] [--init FILE] [--results results.json]

``--holdout Philips``: trains on synthetic phantoms over a continuum of kernels plus the Toshiba
pairs, and measures the RMSE reduction on the Philips pair (its held-out test slab, the one the
per-direction ct-train figures use, and all 32 slices) in both directions. ``--holdout Canon``
likewise for the Toshiba pairs. ``--holdout none``: every vendor (the Philips test slab still held
out). ``--max-minutes`` is CPU time (``time.process_time``), pool building included; ``--resume``
continues a run from its state.pt (the budget is the total). The held-out synthetic check converts
two phantoms of the demo weights' test set (seeds 9001-9002, 192^2 x 8) B50f->B30f and B30f->B50f,
conditioned on each series' measured sharpness, next to the direction-specific demo weights.
Real data: ../shared/realdata (read only). Weights: OUT/last.safetensors (demo weights, NOT FOR
CLINICAL USE); copy to medseg/weights/ct/conditioned_demo.safetensors to ship.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
REAL = ROOT.parent / "shared" / "realdata"
PAIRS = {  # vendor -> (folder, kernel a, kernel b)
    "Philips": (REAL / "ct_philips_two_kernels", "UB", "YA"),
    "Canon": (REAL / "ct_toshiba_fc13_fc51", "FC13", "FC51"),
}
EVAL_SEEDS = (9001, 9002)


def synthetic_check(weights: Path) -> dict:
    """B50f<->B30f on held-out demo-test phantoms: conditioned (measured sharpness) vs the demo weights."""
    from medseg.ct.conditioned import ConditionedNetConfig, FixedConditionNet, build_conditioned_net
    from medseg.ct.fingerprint import kernel_fingerprint
    from medseg.ct.metrics import rmse_region, segment_regions
    from medseg.ct.models import DEMO_MODELS, find_model, load_net, slice_predictor
    from medseg.engine.checkpoint import load_weights
    from medseg.synthetic.ct_phantom import PhantomConfig, make_exam, varied_config

    state, meta = load_weights(weights)
    net = build_conditioned_net(config=ConditionedNetConfig.from_dict(meta.config))
    net.load_state_dict(state)
    net.eval()
    out: dict = {}
    exams = [
        make_exam(s, kernels=("B30f", "B50f"), config=varied_config(s, PhantomConfig(size=192, n_slices=8)))
        for s in EVAL_SEEDS
    ]
    for src, tgt in (("B50f", "B30f"), ("B30f", "B50f")):
        dedicated = slice_predictor(load_net(find_model(src, tgt, models_dirs=[DEMO_MODELS])), device="cpu")
        sums = {"before": 0.0, "conditioned": 0.0, "dedicated": 0.0, "n": 0.0, "diff": 0.0}
        for exam in exams:
            x, y = np.rint(exam.volumes[src]), np.rint(exam.volumes[tgt])
            px = exam.spacing_zyx[1:]
            s, t = kernel_fingerprint(x, px).sharpness, kernel_fingerprint(y, px).sharpness
            cond = slice_predictor(FixedConditionNet(net, s, t), device="cpu", runtime="torch")
            conv_c = np.rint(
                np.concatenate([cond(x[i : i + 1, None].astype(np.float32)) for i in range(len(x))])
            )
            conv_d = np.rint(
                np.concatenate([dedicated(x[i : i + 1, None].astype(np.float32)) for i in range(len(x))])
            )
            region = rmse_region(segment_regions(y, exam.spacing_zyx), x, y)
            sums["before"] += float(np.sum((x - y)[region] ** 2))
            sums["conditioned"] += float(np.sum((conv_c - y)[region] ** 2))
            sums["dedicated"] += float(np.sum((conv_d - y)[region] ** 2))
            sums["diff"] += float(np.sum((conv_c - conv_d)[region] ** 2))
            sums["n"] += float(region.sum())
        rm = {k: float(np.sqrt(v / sums["n"])) for k, v in sums.items() if k != "n"}
        out[f"{src}->{tgt}"] = {
            "rmse_before_hu": round(rm["before"], 2),
            "conditioned_rmse_hu": round(rm["conditioned"], 2),
            "conditioned_reduction_pct": round(100 * (1 - rm["conditioned"] / rm["before"]), 1),
            "dedicated_rmse_hu": round(rm["dedicated"], 2),
            "dedicated_reduction_pct": round(100 * (1 - rm["dedicated"] / rm["before"]), 1),
            "conditioned_vs_dedicated_rmse_hu": round(rm["diff"], 2),
        }
    return out


def main() -> None:
    from medseg.ct.conditioned import ConditionedNetConfig, build_conditioned_net
    from medseg.ct.conditioned_train import (
        ConditionedTrainConfig,
        evaluate_pair,
        load_real_pair,
        train_conditioned,
    )
    from medseg.engine.checkpoint import load_weights

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--holdout", choices=["Philips", "Canon", "none"], required=True)
    ap.add_argument("--max-minutes", type=float, default=7.0, help="CPU minutes (process time), in all")
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--init", type=Path, default=None, help="conditioned weights to start from")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--exams", type=int, default=24)
    ap.add_argument(
        "--shaped-kernels", type=int, default=0, help="per exam, kernels with a mid-frequency boost (0: off)"
    )
    ap.add_argument("--results", type=Path, default=None)
    ap.add_argument("--skip-synthetic-check", action="store_true")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    holdout = None if args.holdout == "none" else args.holdout
    cpu0 = time.process_time()
    pairs = {v: load_real_pair(folder, a, b, v) for v, (folder, a, b) in PAIRS.items() if folder.is_dir()}
    for v, p in pairs.items():
        logging.info(
            "%s %s: sharpness %.2f / %.2f, %d training slices", v, p.kernels, p.sharp_a, p.sharp_b, len(p.a)
        )
    cfg = ConditionedTrainConfig(
        holdout=holdout,
        max_cpu_minutes=args.max_minutes,
        lr=args.lr,
        synthetic_exams=args.exams,
        shaped_kernels=args.shaped_kernels,
    )
    summary = train_conditioned(
        args.out, cfg, [p for v, p in pairs.items() if v != holdout], resume=args.resume, init=args.init
    )
    state, meta = load_weights(args.out / "last.safetensors")
    net = build_conditioned_net(config=ConditionedNetConfig.from_dict(meta.config))
    net.load_state_dict(state)
    results = {
        "holdout": holdout,
        "steps": summary["steps"],
        "train_cpu_s": summary["cpu_s"],
        "sharpness_range": [meta.config["sharpness_min"], meta.config["sharpness_max"]],
        "real": {v: evaluate_pair(net, p, held_out_vendor=v == holdout) for v, p in pairs.items()},
    }
    if not args.skip_synthetic_check:
        results["synthetic"] = synthetic_check(args.out / "last.safetensors")
    results["total_cpu_s_this_call"] = round(time.process_time() - cpu0, 1)
    text = json.dumps(results, indent=1)
    print(text)
    (args.results or args.out / "results.json").write_text(text)


if __name__ == "__main__":
    main()
