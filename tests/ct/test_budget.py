"""ct-train within a time budget: the one-cycle plan from measured step time, and the starting weights."""

from __future__ import annotations

import json
import math
import time

import numpy as np
import pytest

from medseg.ct import budget as budget_mod
from medseg.ct.budget import FINAL_DIV, MEASURE_STEPS, OneCycleSchedule, one_cycle_lr, peak_lr, settle_config
from medseg.ct.models import DEMO_MODELS
from medseg.ct.train import CTTrainConfig, train, train_text
from medseg.ct.train_init import nearest_direction, resolve_init
from medseg.errors import InputError, ModelError
from medseg.synthetic.ct_phantom import PhantomConfig, write_cohort

from .conftest import run_cli


class _Opt:
    def __init__(self) -> None:
        self.param_groups = [{"lr": 0.0}]


def test_one_cycle_warms_up_then_anneals():
    lrs = [one_cycle_lr(i, 100, 1e-3) for i in range(100)]
    top = int(np.argmax(lrs))
    assert lrs[0] == pytest.approx(1e-3 / 25) and lrs[top] == pytest.approx(1e-3) and top == 25
    assert all(a <= b for a, b in zip(lrs[:top], lrs[1 : top + 1]))  # rising
    assert all(a >= b for a, b in zip(lrs[top:], lrs[top + 1 :]))  # then falling
    assert lrs[-1] == pytest.approx(1e-3 / FINAL_DIV)


def test_plan_is_fitted_to_the_measured_step_time(monkeypatch):
    clock = iter(np.arange(10.0, 1000.0, 0.5))  # every step takes 0.5 s; 10 s spent before training
    monkeypatch.setattr(budget_mod.time, "perf_counter", lambda: next(clock))
    opt = _Opt()
    sched = OneCycleSchedule(
        opt,
        1e-3,
        epochs=2,
        budget_s=120.0,
        clock_start=0.0,
        pixels_per_step=4 * 128 * 128,
        val_pixels=(20, 512 * 512),  # a 512^2 slice forward: 0.5 * 0.5 s * 4 = 1 s
        test_pixels=10 * 512 * 512,  # 10 s
    )
    assert math.isinf(sched.epoch_end(1))  # not planned yet
    for _ in range(MEASURE_STEPS + 1):
        sched.before_step()
    plan = sched.plan
    assert plan.step_seconds == pytest.approx(0.5) and plan.total_steps is not None
    # validations: 8 % of 120 s over 2 epochs = 4.8 s each -> 4 slices of 1 s, evenly spaced
    assert plan.val_slices == [0, 6, 13, 19] and plan.reserve_s["validations_s"] == pytest.approx(8.0)
    assert plan.reserve_s["test_s"] == pytest.approx(10.0)
    left = 120.0 - plan.planned_at_s - sum(plan.reserve_s.values())
    assert plan.total_steps == MEASURE_STEPS + int(left // 0.5)  # steps so far + what fits
    assert sched.epoch_end(2) == plan.total_steps and sched.epoch_end(1) == round(plan.total_steps / 2)
    state = json.loads(json.dumps(sched.state_dict()))  # saved with the trainer's state
    again = OneCycleSchedule(_Opt(), 1e-3, epochs=2, budget_s=60.0)
    again.load_state_dict(state)
    assert again.plan == plan and again.step_count == sched.step_count


def test_settle_config_defaults_with_and_without_budget():
    with_budget = CTTrainConfig(max_minutes=5)
    settle_config(with_budget)
    assert (with_budget.schedule, with_budget.lr, with_budget.crop, with_budget.epochs) == (
        "onecycle",
        None,  # the peak once the starting weights are known
        128,
        5,
    )
    assert (peak_lr(fine_tune=True), peak_lr(fine_tune=False)) == (5e-4, 1e-3)
    paper = CTTrainConfig()
    settle_config(paper)
    assert (paper.schedule, paper.lr, paper.crop, paper.epochs) == ("step", 1e-4, None, 30)
    with pytest.raises(InputError, match="unknown learning-rate schedule"):
        settle_config(CTTrainConfig(schedule="cosine"))


def test_nearest_shipped_direction_by_measured_sharpness():
    """The real Philips pair measures UB 0.46, YA 1.56: the nearest shipped directions are the ones
    that convert it best before any training (YA->UB 68 % from B50f->B10f, UB->YA 54 % from B10f->B50f)."""
    assert nearest_direction(1.56, 0.46)[:2] == ("B50f", "B10f")
    assert nearest_direction(0.46, 1.56)[:2] == ("B10f", "B50f")
    assert nearest_direction(1.0, 1.0) is None and nearest_direction(float("nan"), 1.0) is None


def test_resolve_init_choices(tmp_path):
    stack = np.zeros((1, 32, 32), np.int16)
    demo = resolve_init("demo", "B50f", "B30f", (stack, stack), 0.7, channels=64, depth=6)
    assert demo.path == str(DEMO_MODELS / "B50f_to_B30f.safetensors") and demo.net["channels"] == 64
    other = resolve_init("demo", "YA", "UB", (stack, stack), 0.7, channels=8, depth=3)
    assert other.path is None and "not the demo net's shape" in other.description
    assert resolve_init("scratch", "YA", "UB", (stack, stack), 0.7, channels=64, depth=6).path is None
    named = resolve_init("demo", "B40f", "B20f", (stack, stack), 0.7, channels=64, depth=6)  # unmeasurable
    assert "from the names" in named.description and named.path is not None
    with pytest.raises(ModelError, match="weights file not found"):
        resolve_init(
            str(tmp_path / "none.safetensors"), "YA", "UB", (stack, stack), 0.7, channels=64, depth=6
        )


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    root = tmp_path_factory.mktemp("pairs")
    write_cohort(
        root, [7201, 7202, 7203], kernels=("B30f", "B50f"), config=PhantomConfig(size=48, n_slices=3)
    )
    return root


def test_a_budgeted_run_plans_its_steps_and_says_what_it_spent(pairs, tmp_path):
    cfg = CTTrainConfig(
        source_kernel="B50f", target_kernel="B30f", channels=8, depth=3, batch_size=2, max_minutes=0.25
    )
    t0 = time.perf_counter()
    result = train([pairs], tmp_path / "run", cfg, device="cpu")
    assert time.perf_counter() - t0 < 0.25 * 60 + 20  # the trainer stops at the budget; then the test
    b = result.extra["budget"]
    assert b["schedule"] == "onecycle" and b["max_minutes"] == 0.25 and b["steps"] > MEASURE_STEPS
    assert b["plan"]["total_steps"] >= b["steps"] - 1 and b["crop"] == 128  # (of 48 px slices: whole)
    assert result.history[-1]["lr"] < 1e-3 / 10  # annealed by the end
    assert result.extra["init"]["weights"] is None  # an 8-channel net: scratch
    text = train_text(result)
    assert "time budget 0.25 min" in text and "one-cycle lr, peak 0.001" in text  # scratch: 1e-3
    assert text.splitlines()[-1].startswith("test:")


def test_onecycle_resume_keeps_counting_steps(pairs, tmp_path):
    def cfg(epochs):
        return CTTrainConfig(
            source_kernel="B50f",
            target_kernel="B30f",
            channels=8,
            depth=3,
            batch_size=2,
            crop=32,
            epochs=epochs,
            steps_per_epoch=3,
            schedule="onecycle",
            lr=1e-3,
        )

    straight = train([pairs], tmp_path / "a", cfg(2), device="cpu")
    train([pairs], tmp_path / "b", cfg(1), device="cpu")
    resumed = train([pairs], tmp_path / "b", cfg(2), device="cpu", resume=True)
    assert resumed.history[-1]["lr"] == pytest.approx(straight.history[-1]["lr"])


def test_cli_init_file_must_exist(pairs, tmp_path):
    r = run_cli(
        "ct-train", pairs, "--from", "B50f", "--to", "B30f", "--out", tmp_path / "r", "--init",
        tmp_path / "missing.safetensors", "--json", "-q",
    )  # fmt: skip
    assert (
        r.exit_code == 4 and "weights file not found" in json.loads(r.stdout)["error"]
    )  # as every weights file


def test_dihedral_keeps_source_and_target_aligned_and_covers_all_eight_views():
    from medseg.ct.train import dihedral

    rng = np.random.default_rng(0)
    x = rng.normal(size=(1, 1, 5, 5)).astype(np.float32)
    views = {
        tuple(np.round(v.ravel(), 5))
        for k in range(4)
        for v in (np.rot90(x[0, 0], k), np.rot90(x[0, 0], k)[:, ::-1])
    }
    seen = set()
    for _ in range(200):
        xa, ya = dihedral(x, 2 * x + 1, rng)
        assert xa.shape == x.shape and xa.flags["C_CONTIGUOUS"] and ya.flags["C_CONTIGUOUS"]
        np.testing.assert_array_equal(ya, 2 * xa + 1)  # the pair moved together
        seen.add(tuple(np.round(xa[0, 0].ravel(), 5)))
    assert seen == views and len(views) == 8


def test_augment_is_on_with_a_budget_and_recorded(pairs, tmp_path):
    cfg = CTTrainConfig(max_minutes=5)
    settle_config(cfg)
    paper = CTTrainConfig()
    settle_config(paper)
    assert cfg.augment is True and paper.augment is False
    assert CTTrainConfig(max_minutes=5, augment=False).augment is False
    run = CTTrainConfig(
        source_kernel="B50f", target_kernel="B30f", channels=8, depth=3, batch_size=2, max_minutes=0.1
    )
    result = train([pairs], tmp_path / "run", run, device="cpu")
    assert result.extra["budget"]["augment"] is True
    assert "turned and mirrored at random" in train_text(result)
    saved = json.loads((tmp_path / "run" / "train_config.json").read_text())
    assert "augment" in json.dumps(saved)
