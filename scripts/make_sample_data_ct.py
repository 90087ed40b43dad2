"""Regenerate the CT sample exam (sample_data/ct/exam01): one synthetic chest exam, four kernels.

One phantom (``medseg.synthetic.ct_phantom``, seed 7, default 160 x 160 x 12 geometry, about
2.5 MB) reconstructed with B10f/B30f/B50f/B70f from one shared noise realisation, written as
four DICOM series in kernel folders; the README quick start converts its B50f series and compares
with its B30f series. The demo weights are made by ``scripts/train_demo_weights_ct.py``. Seconds:

    python scripts/make_sample_data_ct.py [--out sample_data/ct]
"""

from __future__ import annotations

import argparse
import logging
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SAMPLE_SEED = 7


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=ROOT / "sample_data" / "ct", help="sample exam folder")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    from medseg.synthetic.ct_phantom import make_exam, write_exam_dicom

    exam_dir = args.out / "exam01"
    if exam_dir.exists():
        shutil.rmtree(exam_dir)
    write_exam_dicom(make_exam(SAMPLE_SEED), exam_dir, seed=SAMPLE_SEED, name="exam01")
    logging.info("wrote %s", exam_dir)


if __name__ == "__main__":
    main()
