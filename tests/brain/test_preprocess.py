"""Havaei preprocessing: clipping, N4 on T1/T1c, z-score inside the brain."""

from __future__ import annotations

import numpy as np
import pytest

from medseg.brain.preprocess import N4_MODALITIES, PreprocessConfig, brain_mask, n4_correct, preprocess
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


def _monai_preprocess(stack, spacing, cfg):
    """The reference: MONAI's channel-wise percentile clipping and z-score on the brain voxels."""
    from monai.transforms import ClipIntensityPercentiles, NormalizeIntensity

    mask = np.any(stack != 0, axis=0)
    brain = np.asarray(stack[:, mask], np.float32)
    clip = ClipIntensityPercentiles(lower=cfg.clip_percent, upper=100.0 - cfg.clip_percent, channel_wise=True)
    brain = np.asarray(clip(brain), np.float32)
    if cfg.n4:
        for c in N4_MODALITIES:
            vol = np.zeros(mask.shape, np.float32)
            vol[mask] = np.maximum(brain[c], 1e-3)
            brain[c] = n4_correct(vol, mask, spacing, shrink=cfg.n4_shrink, iterations=cfg.n4_iterations)[
                mask
            ]
    out = np.zeros(stack.shape, np.float32)
    out[:, mask] = np.asarray(NormalizeIntensity(channel_wise=True)(brain), np.float32)
    return out, mask


@pytest.mark.parametrize("n4", [False, True])
def test_numpy_preprocessing_equals_monai_transforms(n4):
    """preprocess() avoids importing MONAI (~8 CPU-s per call) but must give what its transforms give."""
    case = make_brain_case(31, BrainPhantomConfig(shape=(12, 40, 40)))
    stack = _stack(case)
    stack[0, 6, 18:22, 18:22] = (
        0  # zeros inside the brain in one channel: statistics still over the brain mask
    )
    stack[3, 6, 20, 20] = 50 * stack[3].max()  # an outlier the 1 % clipping removes
    cfg = PreprocessConfig(n4=n4, n4_shrink=2, n4_iterations=[10, 5])
    out, mask = preprocess(stack, case.spacing, cfg)
    ref, ref_mask = _monai_preprocess(stack, case.spacing, cfg)
    assert np.array_equal(mask, ref_mask)
    np.testing.assert_allclose(out, ref, atol=1e-5, rtol=1e-5)
    assert out[3].max() < 10  # the outlier was clipped before the z-score


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


@pytest.mark.slow
def test_shrunk_n4_recovers_a_known_bias_field_like_full_resolution_n4(monkeypatch):
    """N4 fitted and evaluated on a shrunk grid, upsampled: about as good as N4 on every voxel.

    Shrunk 3x here (16 x 16 x 8 voxels: fewer per axis than the ~30 the N4_MAX_AXIS rule leaves
    on a BraTS volume); at 4x (12 x 12 x 8) this small phantom leaves a 1.6x larger residual.
    """
    spacing = (4.0, 4.0, 4.0)
    case = make_brain_case(3, BrainPhantomConfig(shape=(24, 48, 48), spacing=spacing, bias=False, noise=0.02))
    t1, mask = case.images["t1"], case.brain_mask
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, n) for n in t1.shape], indexing="ij")
    field = np.exp(0.2 * (0.8 * x + 0.5 * y - 0.4 * z + 0.6 * x * y - 0.5 * x**2)).astype(np.float32)
    biased = t1 * field

    def residual(img):  # SD of the log-bias left inside the brain (a constant gain does not count)
        return float(np.std(np.log(img[mask]) - np.log(t1[mask])))

    shrunk = n4_correct(biased, mask, spacing, shrink=3, iterations=[50, 50])
    monkeypatch.setattr("medseg.brain.preprocess.N4_MAX_AXIS", 10**6)  # the reference: every voxel
    full = n4_correct(biased, mask, spacing, shrink=1, iterations=[50, 50])
    assert not shrunk[~mask].any()
    assert residual(full) < 0.35 * residual(biased)  # the test field is recoverable at all
    assert residual(shrunk) < 0.35 * residual(biased)
    assert residual(shrunk) < 1.2 * residual(full)


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
