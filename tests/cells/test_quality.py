"""The synthetic-data weights (the demo weights before issue 18, kept as test data) on synthetic
images from a seed they never saw (training seed 1, validation 2): the local-contrast inference path.
The shipped DSB 2018 demo weights are tested on real images in ``test_quality_real.py``.

Pass marks from the issue: AP@0.5 >= 0.8, pixel IoU >= 0.85, cell count within 10 %.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from medseg.cells.evaluate import evaluate_labels, summarise
from medseg.cells.segment import CellSegmenter, SegmentConfig
from medseg.synthetic.cells import SyntheticCellsConfig, synthetic_cells

UNSEEN_SEED = 7
SYNTHETIC_WEIGHTS = Path(__file__).resolve().parents[1] / "data" / "cells_synthetic_demo_unet2015.safetensors"


@pytest.mark.slow
@pytest.mark.parametrize("modality", ["fluorescence", "phase"])
def test_demo_weights_quality_on_unseen_seed(modality):
    import torch

    from medseg.engine.checkpoint import read_meta

    torch.set_num_threads(2)
    assert "SYNTHETIC" in read_meta(SYNTHETIC_WEIGHTS).training_data
    segmenter = CellSegmenter(SegmentConfig(device="cpu", tile=316, weights=SYNTHETIC_WEIGHTS))
    assert segmenter.predictor.channels_last
    rows = []
    for i in range(2):
        image, truth = synthetic_cells(
            UNSEEN_SEED * 1000 + i, replace(SyntheticCellsConfig(height=256, width=288), modality=modality)
        )
        _, labels = segmenter.segment_plane(image)
        rows.append(evaluate_labels(truth, labels))
    s = summarise(rows)
    print(modality, {k: round(v, 4) for k, v in s.items() if isinstance(v, float)})
    assert s["ap50"] >= 0.8
    assert s["mean_pixel_iou"] >= 0.85
    assert abs(s["count_rel_error"]) <= 0.10
