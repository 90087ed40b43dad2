"""scripts/ct_linear_bound.py: the least-squares radial filter recovers a known kernel change."""

from __future__ import annotations

import numpy as np


def test_a_radial_blur_is_recovered_and_undone_in_the_rmse(repo_script):
    mod = repo_script("scripts/ct_linear_bound.py")
    rng = np.random.default_rng(3)
    px = 0.7
    sharp = rng.normal(0, 100, size=(4, 96, 96))
    fy, fx = np.fft.fftfreq(96, d=px), np.fft.rfftfreq(96, d=px)
    gain = np.exp(-((fy[:, None] ** 2 + fx[None, :] ** 2) / 0.3**2))  # a smooth kernel: radial Gaussian MTF
    soft = np.stack([np.fft.irfft2(np.fft.rfft2(s) * gain, s=s.shape) for s in sharp])
    h = mod.fit_radial(sharp, soft, px)
    assert h[0] > 0.95 and h[-1] < 0.05 and np.all(np.diff(h) <= 1e-6)  # falls from 1 towards 0
    out = np.stack([mod.apply_radial(h, s, px) for s in sharp])
    pct, before, after = mod.reduction(sharp, soft, out)
    assert before > 50 and pct > 90


def test_padding_outside_the_scan_circle_is_kept(repo_script):
    mod = repo_script("scripts/ct_linear_bound.py")
    img = np.full((32, 32), 40.0)
    img[:4] = -3024.0
    out = mod.apply_radial(np.full(mod.BINS, 0.5), img, 0.5)
    assert np.all(out[:4] == -3024.0) and not np.allclose(out[4:], img[4:])
