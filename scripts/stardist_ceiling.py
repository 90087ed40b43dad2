"""How well star-convex polygons can describe real annotated nuclei: the StarDist representation's ceiling.

Decodes each validation mask's own perfect maps (object probability = normalised distance to the
edge, exact ray distances) with :func:`medseg.cells.stardist.polygons_to_labels` and scores the result
against the mask like ``cells-eval`` (dataset AP@0.5 from pooled TP/FP/FN, mAP@0.5:0.95), per kind.
A net trained on these targets can at best reach this; the 3class decoder's own ceiling (perfect
interior/boundary maps) is measured the same way for comparison. No image is trained on here.

    python scripts/stardist_ceiling.py --data ../shared/realdata/nuclei_dsb2018_stage1 [--rays 32 64]
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SPLIT = ROOT / "medseg" / "weights" / "cells" / "dsb2018_split.json"
log = logging.getLogger("stardist_ceiling")


def three_class_ceiling(labels: np.ndarray) -> np.ndarray:
    """The shipped decoder on perfect 3class maps (one-hot interior / boundary)."""
    from medseg.cells.instances import InstanceConfig, instances_from_maps
    from medseg.cells.targets import THREE_CLASS, three_class_target

    target = three_class_target(labels)
    maps = np.stack([(target == k).astype(np.float32) for k in range(3)])
    return instances_from_maps(maps, THREE_CLASS, InstanceConfig())


def main() -> None:
    from medseg.cells.evaluate import evaluate_labels, summarise
    from medseg.cells.io import read_mask
    from medseg.cells.stardist import ceiling_labels
    from medseg.cells.weights import instances_from_mask

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True)
    p.add_argument("--rays", type=int, nargs="+", default=[32])
    p.add_argument("--nms", type=float, default=0.4)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    val = json.loads(SPLIT.read_text())["validation"]
    rows: dict[str, list[tuple[str, dict]]] = {}
    seconds: dict[str, float] = {}
    for image_id, kind in val.items():
        labels = instances_from_mask(read_mask(Path(args.data) / "masks" / f"{image_id}.tif"))
        methods = {f"stardist_{n}": (lambda lab, n=n: ceiling_labels(lab, n, args.nms)) for n in args.rays}
        methods["3class"] = three_class_ceiling
        for name, fn in methods.items():
            t = time.perf_counter()
            pred = fn(labels)
            seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - t
            rows.setdefault(name, []).append((kind, evaluate_labels(labels, pred)))
    report = {}
    for name, rs in rows.items():
        overall = summarise([r for _, r in rs])
        kinds = {k: summarise([r for kk, r in rs if kk == k])["ap50"] for k in sorted({k for k, _ in rs})}
        report[name] = {
            "ap50": round(overall["ap50"], 4),
            "map_50_95": round(overall["map_50_95"], 4),
            "ap50_by_kind": {k: round(v, 4) for k, v in kinds.items()},
            "decode_seconds": round(seconds[name], 1),
        }
        log.info("%s %s", name, json.dumps(report[name]))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
