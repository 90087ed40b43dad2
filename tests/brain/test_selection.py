"""Epoch selection by held-out Dice (issue 19): the kept epoch is the best-scoring one, the score is the
mean WT/TC/ET Dice of whole slices, phase 1 is scored with natural priors, resume keeps the choice."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from medseg.brain.models import BrainNetConfig, build_model
from medseg.brain.preprocess import PreprocessConfig
from medseg.brain.sampling import TrainingCase
from medseg.brain.selection import (
    SCORE,
    best_epoch,
    build_slice_sets,
    dice_scores,
    natural_log_prior,
    region_dice,
    slice_logits,
    tumour_slices,
)
from medseg.brain.train import BrainTrainConfig, PhaseConfig, _result_from_disk, train
from medseg.engine.checkpoint import read_meta
from medseg.errors import InputError


def _case(seed: int = 0) -> TrainingCase:
    rng = np.random.default_rng(seed)
    labels = np.zeros((12, 40, 40), np.uint8)
    labels[3:9, 10:25, 10:25] = 2
    labels[4:8, 14:20, 14:20] = 4
    mask = np.zeros_like(labels, bool)
    mask[:, 2:38, 2:38] = True
    stack = rng.normal(size=(4, *labels.shape)).astype(np.float32) * mask
    return TrainingCase.build("fake", stack, labels, mask)


def test_best_epoch_is_the_best_held_out_dice_of_a_fake_history(tmp_path):
    history = [
        {"epoch": 1, "val_loss": 0.70, SCORE: 0.41},
        {"epoch": 2, "val_loss": 0.74, SCORE: 0.55},
        {"epoch": 3, "val_loss": 0.80, SCORE: 0.62},
        {"epoch": 4, "val_loss": 0.71, SCORE: float("nan")},
        {"epoch": 5, "val_loss": 0.90, SCORE: 0.62},  # a tie: the earlier epoch is kept, as the trainer does
    ]
    assert best_epoch(history, SCORE, "max") == (0.62, 3)
    assert best_epoch(history, "val_loss", "min") == (0.70, 1)  # the old rule: epoch 1
    assert best_epoch([], SCORE, "max") == (None, 0)
    (tmp_path / "history.json").write_text(json.dumps(history))
    res = _result_from_disk(tmp_path, SCORE, "max")  # a phase kept by --resume reports the same choice
    assert (res["best_epoch"], res["best_metric"]) == (3, 0.62)


def test_region_dice_and_slices_through_the_tumour():
    truth = np.zeros((2, 10, 10), np.uint8)
    truth[0, 2:6, 2:6] = 4  # 16 voxels, all WT, TC and ET
    pred = np.zeros_like(truth)
    pred[0, 2:6, 2:4] = 2  # 8 voxels of edema inside
    d = region_dice(pred, truth)
    assert d["WT"] == pytest.approx(2 * 8 / 24) and d["TC"] == 0.0 and d["ET"] == 0.0
    assert region_dice(np.zeros_like(truth), np.zeros_like(truth)) == {"WT": 1.0, "TC": 1.0, "ET": 1.0}
    case = _case()
    zs = tumour_slices(case.labels, case.mask, 4)
    assert zs[0] == 3 and zs[-1] == 8 and len(zs) == 4
    assert tumour_slices(case.labels, case.mask, 50).tolist() == list(range(3, 9))


def test_natural_prior_shift_reflects_class_frequencies():
    case = _case()
    lp = natural_log_prior([case])
    counts = np.bincount(case.labels[case.mask], minlength=5)
    assert np.argmax(lp) == 0 and lp[2] > lp[4] > lp[1]  # healthy >> edema > enhancing > absent necrosis
    assert np.exp(lp[0]) == pytest.approx(counts[0] / counts.sum(), rel=1e-3)


@pytest.mark.parametrize("arch", ["twopath", "input-cascade"])
def test_slice_scores_equal_the_whole_slice_prediction(arch):
    """The scoring slices give the same logits as the net on the whole padded slices (cropping to the
    brain box changes nothing inside the brain), so the Dice is brain-segment's on those slices."""
    torch.manual_seed(0)
    model = build_model(config=BrainNetConfig(arch=arch, local_channels=4, global_channels=6)).eval()
    case = _case()
    psize = None
    if arch != "twopath":
        from medseg.brain.segment import make_predictor

        model.freeze_first()
        case.set_first_stage(make_predictor(model.first, device="cpu", postprocess="softmax"), arch)
        psize = model.probs_size
    (s,) = build_slice_sets([case], 3, probs_size=psize)
    logits = slice_logits(model, s, torch.device("cpu"))
    zs = tumour_slices(case.labels, case.mask, 3)
    from medseg.brain.segment import make_predictor, predict_volume

    full = predict_volume(
        make_predictor(model, device="cpu", postprocess="float"),
        case.padded[:, :, 16:-16, 16:-16],
        arch=arch,
    )
    ref = full[:, zs, 2:38, 2:38].transpose(1, 0, 2, 3)
    np.testing.assert_allclose(logits, ref, atol=1e-4)
    scores = dice_scores(model, [s], torch.device("cpu"))
    assert 0.0 <= scores[SCORE] <= 1.0 and set(scores) == {SCORE, f"{SCORE}_WT", f"{SCORE}_TC", f"{SCORE}_ET"}
    # a huge prior for enhancing tumour makes every brain voxel ET: WT Dice = 2|T| / (|brain| + |T|)
    shifted = dice_scores(model, [s], torch.device("cpu"), log_prior=np.array([0, 0, 0, 0, 1e4]))
    t, b = int((s.labels > 0).sum()), int(s.mask.sum())
    assert shifted[f"{SCORE}_WT"] == pytest.approx(2 * t / (b + t))


def _cfg(**kw) -> BrainTrainConfig:
    return BrainTrainConfig(
        net=BrainNetConfig(arch="twopath", local_channels=4, global_channels=6),
        preprocess=PreprocessConfig(n4=False),
        phase1=PhaseConfig(epochs=2, steps_per_epoch=2),
        phase2=PhaseConfig(epochs=1, steps_per_epoch=1, lr=0.001),
        batch_size=16,
        val_patches=40,
        training_data="synthetic test cases",
        **kw,
    )


@pytest.mark.slow
def test_training_keeps_the_epoch_with_the_best_held_out_dice(brain_cases, tmp_path):
    res = train(brain_cases, tmp_path / "run", _cfg(select="dice", select_slices=4), device="cpu")
    assert res.metric == SCORE
    p1 = [h for h in res.history if h["stage"] == "phase1"]
    assert all(SCORE in h and "val_loss" in h for h in p1)
    kept = res.extra["stages"]["phase1"]["best_epoch"]
    assert p1[kept - 1][SCORE] == max(h[SCORE] for h in p1)
    meta = read_meta(tmp_path / "run" / "phase1" / "best.safetensors")
    assert meta.metrics["epoch"] == kept and meta.metrics[SCORE] == max(h[SCORE] for h in p1)
    # --resume after the run keeps both phases and the same choice
    again = train(
        brain_cases, tmp_path / "run", _cfg(select="dice", select_slices=4), device="cpu", resume=True
    )
    assert again.extra["stages"]["phase1"]["best_epoch"] == kept
    with pytest.raises(InputError, match="select"):
        train(brain_cases, tmp_path / "bad", _cfg(select="accuracy"), device="cpu")


def test_rotated_training_case_is_the_case_turned_180_degrees_in_plane():
    case = _case()
    rot = case.rotated()
    assert rot.name.endswith("(rotated)") and rot.probs is None
    assert np.array_equal(rot.labels, case.labels[:, ::-1, ::-1])
    assert np.array_equal(rot.mask, case.mask[:, ::-1, ::-1])
    # padding is symmetric: the rotated case's unpadded stack is the rotated stack
    assert np.array_equal(
        rot.padded[:, :, 16:-16, 16:-16], case.padded[:, :, 16:-16, 16:-16][..., ::-1, ::-1]
    )
    assert np.array_equal(rot.rotated().padded, case.padded)
