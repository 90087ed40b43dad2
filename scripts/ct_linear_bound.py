"""How far can a *linear* filter take one real kernel to another? (issue 20, leave-one-vendor-out)

Two reconstructions of the same raw data differ by the reconstruction kernel; if that were exactly a
radial filter in the image, the best radial filter would convert one into the other. This fits that
filter by least squares per radial frequency bin on a pair's training slices (an oracle: fitted on the
very pair it is scored on) and reports the whole-slice RMSE reduction on the test slab (in-sample for
the 4 Toshiba slices), the metric of ``ct-train`` and the conditioned converter's table in docs/ct.md:

    python scripts/ct_linear_bound.py --data ../shared/realdata
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
BINS = 48


def _bins(shape: tuple[int, int], px: float) -> tuple[np.ndarray, np.ndarray]:
    """Radial bin index of each rfft2 frequency, and its fractional position (for interpolation)."""
    fy = np.fft.fftfreq(shape[0], d=px)
    fx = np.fft.rfftfreq(shape[1], d=px)
    pos = np.sqrt(fy[:, None] ** 2 + fx[None, :] ** 2) / (np.sqrt(2) / (2 * px)) * BINS
    return np.clip(pos.astype(int), 0, BINS - 1), pos - 0.5


def fit_radial(src: np.ndarray, dst: np.ndarray, px: float) -> np.ndarray:
    """Least-squares radial transfer H(f) with dst ~ H * src, over all slices."""
    num, den = np.zeros(BINS), np.zeros(BINS)
    for s, t in zip(src, dst):
        fs, ft = np.fft.rfft2(s.astype(np.float64)), np.fft.rfft2(t.astype(np.float64))
        b, _ = _bins(s.shape, px)
        num += np.bincount(b.ravel(), (ft * np.conj(fs)).real.ravel(), BINS)
        den += np.bincount(b.ravel(), (np.abs(fs) ** 2).ravel(), BINS)
    return num / np.maximum(den, 1e-9)


def apply_radial(h: np.ndarray, img: np.ndarray, px: float) -> np.ndarray:
    _, pos = _bins(img.shape, px)
    out = np.fft.irfft2(
        np.fft.rfft2(img.astype(np.float64)) * np.interp(pos, np.arange(BINS), h), s=img.shape
    )
    return np.where(img < -1500, img, out)  # padding outside the scan circle kept, as ct-convert keeps it


def reduction(src: np.ndarray, dst: np.ndarray, out: np.ndarray) -> tuple[float, float, float]:
    from medseg.ct.train import rmse_hu

    before, after = rmse_hu(src, dst), rmse_hu(out, dst)
    return 100.0 * (before - after) / before, before, after


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, required=True, help="the shared realdata folder")
    args = p.parse_args()
    logging.disable(logging.WARNING)
    from train_conditioned_ct import PAIRS  # the real pairs of the conditioned converter's validation

    from medseg.ct.conditioned_train import load_real_pair

    for vendor, (default_folder, ka, kb) in PAIRS.items():
        pair = load_real_pair(args.data / default_folder.name, ka, kb, vendor)
        px = pair.pixel_mm
        held = pair.test_a is not None and len(pair.test_a) > 0
        test_a, test_b = (pair.test_a, pair.test_b) if held else (pair.a, pair.b)
        where = "test slab" if held else "in-sample"
        for label, s, t, se, te in (
            (f"{ka}->{kb}", pair.a, pair.b, test_a, test_b),
            (f"{kb}->{ka}", pair.b, pair.a, test_b, test_a),
        ):
            h = fit_radial(s, t, px)
            out = np.stack([apply_radial(h, x, px) for x in se])
            pct, before, after = reduction(se, te, out)
            peak = float(h.max())
            print(
                f"{vendor} {label} ({where}, {len(se)} slices): RMSE {before:.1f} -> {after:.1f} HU, "
                f"reduction {pct:.1f} %, filter gain max {peak:.2f}"
            )


if __name__ == "__main__":
    main()
