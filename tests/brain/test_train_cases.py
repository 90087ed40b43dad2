"""Training cases: cropped to the brain (same patches), cached, and an explicit held-out split recorded."""

from __future__ import annotations

import numpy as np
import pytest

from medseg.brain import train_cases as tc
from medseg.brain.io import find_case_files, load_case, load_seg
from medseg.brain.models import BrainNetConfig
from medseg.brain.preprocess import PreprocessConfig, preprocess
from medseg.brain.sampling import TrainingCase, windows
from medseg.brain.train import BrainTrainConfig, PhaseConfig, train
from medseg.engine.checkpoint import read_meta

PREP = PreprocessConfig(n4=False)


def test_cropped_case_gives_the_same_patches(brain_cases):
    files = find_case_files(brain_cases[0])
    stack, geo = load_case(files)
    norm, mask = preprocess(stack, geo.spacing, PREP)
    seg = load_seg(files, geo)
    full = TrainingCase.build("full", norm, seg, mask)
    (crop,) = tc.load_training_cases([brain_cases[0]], labels="brats2021", prep=PREP)
    box = tc.brain_box(mask)
    assert crop.labels.shape == seg[box].shape and crop.labels.size < seg.size
    rng = np.random.default_rng(0)
    inside = np.argwhere(crop.mask)[rng.integers(0, int(crop.mask.sum()), 200)]
    offset = np.array([b.start for b in box])
    assert np.array_equal(windows(crop.padded, inside, 33), windows(full.padded, inside + offset, 33))
    assert np.array_equal(crop.labels[tuple(inside.T)], seg[tuple((inside + offset).T)])


def test_cache_skips_reading_and_preprocessing(brain_cases, tmp_path, monkeypatch):
    first = tc.load_training_cases(brain_cases, labels="brats2021", prep=PREP, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("*.npz"))) == 2

    def no_read(*a, **k):
        raise AssertionError("read again despite the cache")

    monkeypatch.setattr(tc, "load_case", no_read)
    again = tc.load_training_cases(brain_cases, labels="brats2021", prep=PREP, cache_dir=tmp_path)
    for a, b in zip(first, again):
        assert np.array_equal(a.padded, b.padded) and np.array_equal(a.labels, b.labels)
        assert a.spacing == b.spacing and a.name == b.name
    with pytest.raises(AssertionError, match="read again"):  # other preprocessing: another cache entry
        tc.load_training_cases(
            brain_cases, labels="brats2021", prep=PreprocessConfig(n4=False, clip_percent=2)
        )


def test_split_given_explicitly_is_recorded_in_the_weights(brain_cases, tmp_path):
    cfg = BrainTrainConfig(
        net=BrainNetConfig(arch="twopath", local_channels=4, global_channels=6),
        preprocess=PREP,
        phase1=PhaseConfig(epochs=1, steps_per_epoch=1),
        phase2=PhaseConfig(epochs=1, steps_per_epoch=1, lr=0.001),
        batch_size=8,
        val_patches=20,
        val_fraction=0.0,
    )
    res = train([brain_cases[1]], tmp_path, cfg, val_case_dirs=[brain_cases[0]], device="cpu")
    assert res.validated_on == "held-out data"
    meta = read_meta(res.best_weights)
    assert meta.config["training_cases"] == [brain_cases[1].name]
    assert meta.config["validation_cases"] == [brain_cases[0].name]
