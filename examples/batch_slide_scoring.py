"""Score a folder of slides from Python, then summarise the Banff categories.

    python examples/batch_slide_scoring.py SLIDE_DIR OUT_DIR [WEIGHTS]

The same library call as ``medseg slide-score SLIDE_DIR --out OUT_DIR --resume``: a slide that cannot
be read becomes a failed item (with its reason) and the batch goes on; a slide the stain QC stops
(H&E, fluorescence, no tissue) is a skipped item with status ``qc_failed`` and no category; rerunning
keeps finished slides. Without WEIGHTS the demo detector is used (synthetic training data, not for
clinical use).
"""

from __future__ import annotations

import collections
import logging
import sys
from pathlib import Path

from medseg.pathology.batch import score_slides
from medseg.pathology.score import ScoreConfig, slide_text


def main() -> int:
    if len(sys.argv) < 3:
        raise SystemExit(__doc__)
    slides, out = Path(sys.argv[1]), Path(sys.argv[2])
    weights = Path(sys.argv[3]) if len(sys.argv) > 3 else None  # None: the shipped demo detector
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    config = ScoreConfig(target_mpp=0.5, tile=1024, overlap=160, batch_size=4, workers=2, device="auto")
    result = score_slides([slides], out, config, weights=weights, resume=True)
    counts = result.counts
    not_scored = [i for i in result.items if i.metrics.get("status") == "qc_failed"]
    print(
        f"scored {counts['ok']}, not scored by the stain QC {len(not_scored)}, "
        f"kept from earlier runs {counts['skipped'] - len(not_scored)}, failed {counts['failed']}"
    )
    for item in result.items:
        if item.status == "failed":
            text = f"FAILED: {item.reason}"
        elif item.metrics.get("status") == "qc_failed":  # H&E, fluorescence, no tissue: no category
            text = f"not scored: {item.reason}"
        else:
            text = slide_text(item.metrics)
        print(f"  {item.name}: {text}")
    categories = collections.Counter(
        i.metrics["banff_category"]
        for i in result.items
        if i.status != "failed" and i.metrics.get("status") != "qc_failed"
    )
    print("Banff categories: " + (", ".join(f"{n} x {c}" for c, n in sorted(categories.items())) or "none"))
    print(f"table: {result.outputs['table']}, report: {result.outputs.get('report', 'not written')}")
    return result.exit_code  # 0 (stain-QC failures included), or 5 when some slides failed


if __name__ == "__main__":
    sys.exit(main())
