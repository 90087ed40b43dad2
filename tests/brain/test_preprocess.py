"""Havaei preprocessing: clipping, N4 on T1/T1c, z-score inside the brain."""

from __future__ import annotations

import numpy as np
import pytest

from medseg.brain.preprocess import PreprocessConfig, brain_mask, clip_intensities, n4_correct, preprocess
from medseg.errors import InputError
from medseg.synthetic.brain import MODALITIES, BrainPhantomConfig, make_brain_case


def _stack(case):
    return np.stack([case.images[m] for m in MODALITIES])


def test_normalised_inside_brain_zero_outside():
    case = make_brain_case(21)
    out, mask = preprocess(_stack(case), case.spacing, PreprocessConfig(n4=False))
    assert np.array_equal(mask, case.brain_mask)
    for c in range(4):
        assert abs(out[c][mask].mean()) < 1e-4 and abs(out[c][mask].std() - 1) < 1e-4
        assert not out[c][~mask].any()


def test_clip_removes_one_percent_tails():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(10, 20, 20)).astype(np.float32)
    x[0, 0, 0] = 1e6
    mask = np.ones_like(x, bool)
    y = clip_intensities(x, mask, 1.0)
    assert y.max() <= np.percentile(x, 99) + 1e-6 and y.min() >= np.percentile(x, 1) - 1e-6
    assert np.mean(y == y.max()) == pytest.approx(0.01, abs=0.003)


def test_n4_reduces_bias_in_white_matter():
    cfg = BrainPhantomConfig(noise=0.01)
    case = make_brain_case(8, cfg)
    t1 = case.images["t1"]
    # a strong left-right bias field on top of the phantom's own
    ramp = np.exp(0.4 * np.linspace(-1, 1, t1.shape[2]))[None, None, :].astype(np.float32)
    biased = t1 * ramp
    mask = case.brain_mask
    wm = mask & (t1 > 0.9 * np.percentile(t1[mask], 90))
    corrected = n4_correct(biased, mask, case.spacing, shrink=2)
    cv = lambda a: a[wm].std() / a[wm].mean()  # noqa: E731
    assert cv(corrected) < 0.6 * cv(biased)


@pytest.mark.parametrize("bad,msg", [("nan", "NaN"), ("zero", "all zero"), ("2d", "expected a")])
def test_bad_stacks(bad, msg):
    case = make_brain_case(2)
    stack = _stack(case)
    if bad == "nan":
        stack[0, 3, 3, 3] = np.nan
    elif bad == "zero":
        stack[2] = 0
    else:
        stack = stack[:, 0]
    with pytest.raises(InputError, match=msg):
        preprocess(stack, case.spacing, PreprocessConfig(n4=False))


def test_empty_brain():
    with pytest.raises(InputError):
        brain_mask(np.zeros((4, 3, 3, 3), np.float32))
