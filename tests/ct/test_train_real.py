"""Training on a real scanner pair: Philips YA (bone) -> UB (standard), one acquisition reconstructed twice.

Slow (about 30-60 s on 2 CPU cores: 3 short epochs of 128 px crops on 16 training slices, plus
validation and test on full 512x512 slices): it is the one test that shows ct-train learns a real
kernel conversion from what a physicist has (one scan, two reconstructions), split by slabs along z,
and is judged on a held-out slab the weights never saw. Skips where the shared real data are absent.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from medseg.ct.train import CTTrainConfig, train, train_text

REPO = Path(__file__).resolve().parents[2]
PAIR = Path(os.environ.get("MEDSEG_REALDATA", REPO.parent / "shared" / "realdata")) / "ct_philips_two_kernels"


@pytest.mark.slow
@pytest.mark.skipif(
    not (PAIR / "YA_bone").is_dir(), reason=f"real data folder absent: {PAIR} (set MEDSEG_REALDATA)"
)
def test_ya_to_ub_on_slabs_of_the_real_philips_pair(tmp_path):
    cfg = CTTrainConfig(
        source_kernel="YA",
        target_kernel="UB",
        epochs=3,
        batch_size=4,
        lr=1e-3,
        crop=128,
        steps_per_epoch=20,
        channels=32,
        depth=5,
        max_minutes=2.0,
        seed=0,
    )
    result = train([PAIR], tmp_path / "run", cfg, device="cpu")
    split, test = result.extra["split"], result.extra["test"]
    assert split["mode"] == "slabs" and result.validated_on == "held-out data"
    (slab,) = split["slabs"]
    assert slab["gap_slices"] >= 2 and slab["test"][0] - slab["val"][1] > slab["gap_slices"]
    assert test["on"] == "held-out test slabs" and test["slices"] >= 4
    assert test["rmse_before_hu"] > 40  # the kernels really differ on the held-out slab (about 64 HU)
    assert test["reduction_pct"] >= 60.0, train_text(result)
