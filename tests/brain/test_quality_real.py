"""The default brain weights (trained on 9 real BraTS 2018 cases) on a real validation case they never saw.

``tests/data/real/brats2018_val_crop``: 48 axial slices through the tumour of Brats18_2013_20_1, a
validation case of the recorded split (terms in ``tests/data/real/LICENSES.md``).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from medseg_cli.main import cli

from medseg.brain.evaluate import EvalPair, evaluate_pair
from medseg.brain.segment import DEMO_WEIGHTS
from medseg.engine.checkpoint import read_meta
from medseg.engine.weights import demo_weights_path

ROOT = Path(__file__).resolve().parents[2]
CASE = ROOT / "tests" / "data" / "real" / "brats2018_val_crop"
NAME = "Brats18_2013_20_1"
SPLIT = ROOT / "medseg" / "weights" / "brain" / "brats2018_split.json"
# measured on this crop with the default (InputCascadeCNN averaged with its 180-degree rotated view, +
# SegResNet, probabilities averaged): WT 0.910, TC 0.799, ET 0.837 (ET 33.7 mL for 38.8 true); without the
# rotated view 0.918 / 0.801 / 0.834; the InputCascadeCNN alone gave 0.913 / 0.804 / 0.815, the TwoPathCNN
# (its first stage) 0.874 / 0.802 / 0.796
WT_MIN, TC_MIN, ET_MIN = 0.8, 0.7, 0.7


def test_split_and_terms_recorded_in_the_default_weights():
    meta = read_meta(demo_weights_path(*DEMO_WEIGHTS.split("/")))
    split = meta.config["split"]
    saved = json.loads(SPLIT.read_text(encoding="utf-8"))
    assert (split["train"], split["validation"]) == (saved["train"], saved["validation"])
    assert NAME in split["validation"] and NAME not in split["train"]
    # --select dice holds training cases out to choose the epochs: trained on or held out, never validation
    trained, held = meta.config["training_cases"], meta.config.get("selection_cases") or []
    assert sorted(trained + held) == sorted(split["train"]) and not set(trained) & set(held)
    assert meta.config["validation_cases"] == split["validation"]
    assert meta.config["train_spacing_mm"] == [1.0, 1.0]
    text = meta.training_data + meta.notes
    for phrase in ("BraTS 2018", "Menze", "Bakas", "arXiv:1811.02629", "not for clinical use"):
        assert phrase in text, phrase


@pytest.mark.slow
def test_default_weights_on_a_real_validation_case(tmp_path):
    out = tmp_path / "seg.nii.gz"
    res = CliRunner().invoke(
        cli, ["brain-segment", str(CASE), "--out", str(out), "--device", "cpu", "--json"]
    )
    assert res.exit_code == 0, res.output
    m, *_ = evaluate_pair(EvalPair(NAME, out, CASE / f"{NAME}_seg.nii.gz"))
    print({k: round(v, 3) for k, v in m.items()})
    assert m["dice_WT"] >= WT_MIN and m["dice_TC"] >= TC_MIN and m["dice_ET"] >= ET_MIN, m
    assert m["pred_ET_ml"] > 0 and m["truth_ET_ml"] > 1
