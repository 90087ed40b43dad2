"""Demo weights on slides from seeds they never saw: F1 >= 0.8 per class and the right Banff category."""

from __future__ import annotations

import pytest

from medseg.pathology.batch import score_slides
from medseg.pathology.evaluate import evaluate_slide
from medseg.pathology.score import ScoreConfig
from medseg.synthetic.slides import SlideSpec, write_slide

from .conftest import UNSEEN_SEED


@pytest.mark.slow
@pytest.mark.parametrize(
    "seed, fraction, category", [(UNSEEN_SEED, 0.3, "C4d2"), (UNSEEN_SEED + 1, 0.75, "C4d3")]
)
def test_demo_weights_on_unseen_slide(demo_weights, tmp_path, seed, fraction, category):
    import torch

    torch.set_num_threads(2)
    path, truth = tmp_path / f"unseen{seed}.tiff", tmp_path / f"unseen{seed}.geojson"
    synth = write_slide(
        path, SlideSpec(width=4096, height=3072, seed=seed, positive_fraction=fraction), geojson=truth
    )
    res = score_slides(
        [path], tmp_path / "out", ScoreConfig(device="cpu"), weights=demo_weights, report=False
    )
    (item,) = res.items
    assert item.ok, item.reason
    row = item.metrics
    import json

    summary = json.loads((tmp_path / "out" / path.stem / "summary.json").read_text())
    m = evaluate_slide(
        tmp_path / "out" / path.stem / "detections.geojson",
        truth,
        margins=summary["margins"],
        scale=1.0,
        summary=summary,
    )
    counts = synth.counts()
    assert m["truth_category"] == category  # the generator made what we asked for
    assert m["C4d+_f1"] >= 0.8, m
    assert m["C4d-_f1"] >= 0.8, m
    assert row["banff_category"] == category, (row, counts)
    # the slide-level counts are close to the truth too (not only within the scored tiles)
    assert abs(row["c4d_pos"] - counts["C4d+"]) <= 0.25 * counts["C4d+"] + 3


@pytest.mark.slow
def test_demo_weights_count_border_ptcs_once(demo_weights, border_slide):
    """Same border slide as the colour-detector test, now with the trained detector."""
    import numpy as np

    from medseg.pathology.detector import load_detector
    from medseg.pathology.score import score_slide

    path, sites = border_slide
    result = score_slide(
        path, load_detector(demo_weights, device="cpu"), ScoreConfig(device="cpu", feasibility="none")
    )
    assert result.summary["c4d_pos"] == len(sites), result.summary
    centres = np.c_[
        (result.boxes[:, 0] + result.boxes[:, 2]) / 2, (result.boxes[:, 1] + result.boxes[:, 3]) / 2
    ]
    pos = centres[result.labels == 1]
    for x, y in sites:  # one C4d+ detection per site
        assert (np.hypot(pos[:, 0] - x, pos[:, 1] - y) < 10).sum() == 1
    neg = centres[result.labels == 2]
    assert (np.hypot(neg[:, 0] - 300, neg[:, 1] - 300) < 10).sum() == 1


@pytest.mark.cuda
def test_cuda_amp_matches_cpu_counts(demo_weights, small_slide, tmp_path):
    """On a GPU (bf16/fp16 autocast, pinned memory) the counts match the CPU run within a PTC or two."""
    from medseg.pathology.detector import load_detector
    from medseg.pathology.score import score_slide

    path, _ann, _s = small_slide
    cpu = score_slide(path, load_detector(demo_weights, device="cpu"), ScoreConfig(device="cpu"))
    detector = load_detector(demo_weights, device="cuda", amp="auto")
    assert detector.describe()["amp"] in ("bf16", "fp16")
    gpu = score_slide(path, detector, ScoreConfig(device="cuda", batch_size=8))
    assert abs(gpu.summary["c4d_pos"] - cpu.summary["c4d_pos"]) <= 2
    assert abs(gpu.summary["c4d_neg"] - cpu.summary["c4d_neg"]) <= 2
