"""Score a folder of slides from Python, then summarise the Banff categories.

    python examples/batch_slide_scoring.py SLIDE_DIR OUT_DIR [WEIGHTS]

The same library call as ``medseg slide-score SLIDE_DIR --out OUT_DIR --resume``: a slide that cannot
be read becomes a failed row (with its reason) and the batch goes on; rerunning skips finished slides.
"""

from __future__ import annotations

import collections
import logging
import sys
from pathlib import Path

from medseg.pathology.score import ScoreConfig, score_slides

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    if len(sys.argv) < 3:
        raise SystemExit(__doc__)
    slides, out = Path(sys.argv[1]), Path(sys.argv[2])
    weights = Path(sys.argv[3]) if len(sys.argv) > 3 else ROOT / "sample_data/pathology/c4d_light_demo.safetensors"
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    config = ScoreConfig(target_mpp=0.5, tile=1024, overlap=160, batch_size=4, workers=2, device="auto")
    result = score_slides([slides], out, weights=weights, config=config, resume=True)
    categories = collections.Counter(r.get("banff_category") for r in result["slides"] if r["status"] != "failed")
    print(f"scored {result['ok']}, skipped {result['skipped']}, failed {result['failed']}")
    for row in result["slides"]:
        if row["status"] == "failed":
            print(f"  FAILED {row['slide']}: {row['reason']}")
    print("Banff categories:", dict(categories))
    print("table:", result["csv"], "report:", result["report"])


if __name__ == "__main__":
    main()
