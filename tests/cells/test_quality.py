"""Demo weights on synthetic images from a seed they never saw (training seed 1, validation 2).

Pass marks from the issue: AP@0.5 >= 0.8, pixel IoU >= 0.85, cell count within 10 %.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from medseg.cells.evaluate import evaluate_labels, summarise
from medseg.cells.model import DEMO_WEIGHTS
from medseg.cells.segment import CellSegmenter, SegmentConfig
from medseg.engine.weights import demo_weights_path
from medseg.synthetic.cells import SyntheticCellsConfig, synthetic_cells

UNSEEN_SEED = 7


@pytest.mark.slow
@pytest.mark.parametrize("modality", ["fluorescence", "phase"])
def test_demo_weights_quality_on_unseen_seed(modality):
    import torch

    from medseg.engine.checkpoint import read_meta

    torch.set_num_threads(2)
    assert "SYNTHETIC" in read_meta(demo_weights_path(DEMO_WEIGHTS)).training_data
    segmenter = CellSegmenter(SegmentConfig(device="cpu", tile=316))  # no --weights: the shipped demo weights
    assert segmenter.is_demo and segmenter.predictor.channels_last
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
