"""ct-train with only a time budget on a real scanner pair (issue 20 §1): the user's command.

``medseg ct-train <Philips pair> --from X --to Y --out run/ --max-minutes 1.5``: nothing else. The run
starts from the nearest shipped direction (B50f->B10f for YA->UB, B10f->B50f for UB->YA, chosen by
measured sharpness), times its first steps and fits a one-cycle schedule of 128 px crops into the
budget, then tests the best weights on the held-out slab (5 slices the weights never saw, 3 mm above
the validation slab). Measured with this very test on the 2-core development machine, one thread,
shared with other jobs (load average 5-9): see docs/ct.md. Slow (two runs of 1.5 minutes); skips
where the shared real data are absent.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from .conftest import run_cli

REPO = Path(__file__).resolve().parents[2]
PAIR = Path(os.environ.get("MEDSEG_REALDATA", REPO.parent / "shared" / "realdata")) / "ct_philips_two_kernels"


@pytest.mark.slow
@pytest.mark.skipif(
    not (PAIR / "YA_bone").is_dir(), reason=f"real data folder absent: {PAIR} (set MEDSEG_REALDATA)"
)
@pytest.mark.parametrize(
    ("source", "target", "start", "at_least"),
    [("YA", "UB", "B50f->B10f", 75.0), ("UB", "YA", "B10f->B50f", 68.0)],
)
def test_a_90_second_budget_on_the_real_philips_pair(tmp_path, source, target, start, at_least):
    out = tmp_path / "run"
    r = run_cli(
        "ct-train", PAIR, "--from", source, "--to", target, "--out", out, "--max-minutes", "1.5",
        "--device", "cpu", "--json", "-q",
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    extra = doc["extra"]
    budget, test = extra["budget"], extra["test"]
    assert f"nearest shipped direction {start}" in extra["init"]["description"]
    assert budget["schedule"] == "onecycle" and budget["peak_lr"] == 5e-4 and budget["crop"] == 128
    assert (
        budget["used_minutes"] <= 1.5 + 0.5
    )  # the whole command, test included (the trainer stops at the budget)
    assert test["on"] == "held-out test slabs" and test["slices"] == 5 and test["rmse_before_hu"] > 60
    assert test["reduction_pct"] >= at_least, json.dumps({"budget": budget, "test": test})
