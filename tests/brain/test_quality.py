"""Demo weights on synthetic cases from seeds the weights never saw (training used seeds 100-127, 6001+ are the held-out measurement)."""

from __future__ import annotations

import numpy as np
import pytest

from medseg.brain.evaluate import region_metrics
from medseg.brain.io import find_case_files, load_case, load_seg
from medseg.brain.segment import load_brain_model, make_predictor, segment_array
from medseg.engine.weights import demo_weights_path
from medseg.synthetic.brain import make_brain_case, write_brain_case

UNSEEN_SEEDS = (5001, 5002, 5003, 5004)


@pytest.fixture(scope="module")
def unseen_cases(tmp_path_factory):
    root = tmp_path_factory.mktemp("unseen")
    return [write_brain_case(make_brain_case(s), root, name=f"SYN_{s}") for s in UNSEEN_SEEDS]


@pytest.mark.slow
@pytest.mark.parametrize(
    "weights", ["brain_input_cascade_demo.safetensors", "brain_twopath_demo.safetensors"]
)
def test_demo_weights_dice_on_unseen_seeds(weights, unseen_cases):
    model, meta, prep = load_brain_model(demo_weights_path("brain", weights))
    assert "synthetic" in meta.training_data.lower() and "5001" not in meta.training_data
    arch = meta.config["net"]["arch"]
    predictor = make_predictor(model, device="cpu")
    scores = []
    for case_dir in unseen_cases:
        files = find_case_files(case_dir)
        stack, geo = load_case(files)
        truth = load_seg(files, geo)
        pred = segment_array(predictor, stack, geo, arch=arch, prep=prep)
        scores.append(region_metrics(pred, truth, geo.spacing))
    mean = {r: float(np.mean([s[f"dice_{r}"] for s in scores])) for r in ("WT", "TC", "ET")}
    print(weights, mean)
    assert mean["WT"] >= 0.85 and mean["TC"] >= 0.75 and mean["ET"] >= 0.70, mean
