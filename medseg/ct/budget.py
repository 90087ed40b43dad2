"""``ct-train --max-minutes``: a one-cycle learning-rate schedule fitted to a CPU time budget.

The paper's recipe (Adam 1e-4, 30 whole-slice epochs, step decay) is a GPU recipe: on a 2-core CPU
five minutes buy a few hundred steps of 128 px crops, and a constant small learning rate is still
far from converged when the budget ends. So with a time budget the run measures its own speed and
plans the whole schedule from it:

- the first :data:`MEASURE_STEPS` steps run at the warm-up learning rate and are timed; the median
  step time then fixes the schedule's length: the steps that fit in what is left of the budget
  after the validations, the final held-out test and a small margin; every :data:`REPLAN_EVERY`
  steps the length is refitted to the latest step times and the measured validation time, and the
  rate never lags the clock (it anneals by the deadline even where the machine slows down);
- the learning rate follows one cycle over those steps (cosine warm-up from ``peak / DIV`` to
  ``peak`` over the first :data:`WARMUP` of them, cosine decay to ``peak / FINAL_DIV``), stepped
  after every batch, so the run ends annealed instead of being cut off mid-schedule;
- the epochs split those steps evenly; each validates on a few evenly spaced slices of the
  validation slab, as many as keep all validations within :data:`VALIDATION_SHARE` of the budget
  (whole 512x512 slices cost about half a training step per 128 px crop pixel).

The plan (steps, step time, validation slices) is saved with the trainer's state, so ``--resume``
continues the same schedule.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

log = logging.getLogger("medseg.ct")

MEASURE_STEPS = 8  # steps timed before the schedule's length is fixed (the first is warm-up, not counted)
REPLAN_EVERY = 10  # then re-planned every this many steps from the latest step times
WARMUP = 0.25  # share of the steps spent warming the learning rate up
DIV = 25.0  # start at peak / DIV
FINAL_DIV = 1000.0  # end at peak / FINAL_DIV
VALIDATION_SHARE = 0.08  # all validations together take at most this share of the budget
FORWARD_COST = 0.5  # a forward pass costs about this share of a training step, per pixel
MARGIN = 0.03  # share of the budget kept free (the machine's speed varies)
BUDGET_CROP = 128  # crop (px) when a budget is given and no --crop
BUDGET_PEAK_LR = 1e-3  # one-cycle peak when no --lr, from scratch
FINETUNE_PEAK_LR = (
    5e-4  # ... and from starting weights (real Philips pair, 60 steps: 5e-4 beat 1e-3 both ways)
)


def budget_epochs(max_minutes: float) -> int:
    """Epochs (validations) for a budget: about one per minute, 2 to 10."""
    return int(min(10, max(2, round(max_minutes))))


def one_cycle_lr(step: int, total: int, peak: float) -> float:
    """Learning rate at ``step`` (0-based) of a one-cycle schedule of ``total`` steps."""
    if total <= 1:
        return peak
    warm = max(1, int(round(WARMUP * total)))
    if step < warm:
        lo, hi, frac = peak / DIV, peak, step / warm
    else:
        lo, hi, frac = peak, peak / FINAL_DIV, min(1.0, (step - warm) / max(1, total - 1 - warm))
    return hi + (lo - hi) * (1 + math.cos(math.pi * frac)) / 2


@dataclass
class BudgetPlan:
    """What the budget allows, fixed after the first timed steps (saved with the training state)."""

    total_steps: int | None = None  # None until measured
    step_seconds: float | None = None
    val_slices: list[int] = field(default_factory=list)  # indices into the validation stack
    planned_at_s: float | None = None  # seconds into the budget when the plan was fixed
    reserve_s: dict[str, float] = field(default_factory=dict)  # validations, test, margin


class OneCycleSchedule:
    """Per-step one-cycle learning rate whose length is fixed by the budget (or given).

    The engine trainer steps schedulers once per epoch (``step()``: notes when the epoch's steps
    ended, so the validation gets timed); the CT task calls :meth:`before_step` before each batch.
    ``total_steps`` given: no measuring, no re-planning.
    """

    def __init__(
        self,
        optimizer: Any,
        peak_lr: float,
        *,
        epochs: int,
        total_steps: int | None = None,
        budget_s: float | None = None,
        clock_start: float | None = None,
        pixels_per_step: int = 1,
        val_pixels: tuple[int, int] = (0, 0),  # (slices, pixels per slice)
        test_pixels: int = 0,
        on_plan: Callable[[BudgetPlan], None] | None = None,
    ) -> None:
        self.optimizer, self.peak, self.epochs = optimizer, float(peak_lr), max(1, int(epochs))
        self.budget_s, self.clock_start = (
            budget_s,
            clock_start if clock_start is not None else time.perf_counter(),
        )
        self.pixels_per_step, self.val_pixels, self.test_pixels = pixels_per_step, val_pixels, test_pixels
        self.on_plan = on_plan
        self.plan = BudgetPlan(total_steps=total_steps)
        self._fixed = total_steps is not None  # given, not planned: a resume with more epochs keeps it
        self.step_count = 0
        self._stamps: list[float] = []
        self._recent: list[float] = []  # durations of the latest steps (validations left out)
        self._prev: float | None = None  # when the previous step started
        self._epoch_ended: float | None = None  # when the last epoch's steps ended (then it validated)
        self._val_s: float | None = None  # measured time of one validation (and saving the epoch)
        self._replanned_at = 0  # step count of the last (re)plan
        self._epochs_done = 0
        self._set_lr()

    # --- the learning rate -------------------------------------------------------------------
    def _set_lr(self, now: float | None = None) -> None:
        total = self.plan.total_steps
        step = self.step_count
        if total is not None and now is not None and not self._fixed and self.budget_s:
            # never behind the clock: where the machine slows down, the rate still anneals by the deadline
            plan = self.plan
            start = plan.planned_at_s or 0.0
            end = self.budget_s - plan.reserve_s.get("test_s", 0.0) - plan.reserve_s.get("margin_s", 0.0)
            if end > start:
                done = (now - self.clock_start - start) / (end - start)
                step = max(step, int(done * total))
        lr = self.peak / DIV if total is None else one_cycle_lr(step, total, self.peak)
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def before_step(self) -> None:
        """Called before each training batch: time the first steps, fix the plan, set the rate."""
        now = time.perf_counter()
        if self._prev is not None:
            ended = self._epoch_ended if self._epoch_ended is not None else now
            self._recent = [*self._recent[-(REPLAN_EVERY - 1) :], ended - self._prev]
            if self._epoch_ended is not None:
                self._val_s = now - self._epoch_ended
        self._prev, self._epoch_ended = now, None
        if self.plan.total_steps is None:
            self._stamps.append(now)
            if len(self._stamps) > MEASURE_STEPS:
                self._fix_plan()
                self._replanned_at = self.step_count
        elif not self._fixed and self.step_count - self._replanned_at >= REPLAN_EVERY:
            self._replan(now)
        self._set_lr(now)
        self.step_count += 1

    def epoch_end(self, epoch: int) -> float:
        """The step count at which ``epoch`` (1-based) ends (infinite until the plan is fixed)."""
        total = self.plan.total_steps
        if total is None:
            return math.inf
        return max(epoch, int(round(total * epoch / self.epochs)))

    # --- the plan ----------------------------------------------------------------------------
    def _fix_plan(self) -> None:
        diffs = sorted(b - a for a, b in zip(self._stamps[1:], self._stamps[2:]))  # the first is warm-up
        step_s = diffs[len(diffs) // 2]
        now = time.perf_counter() - self.clock_start
        budget = self.budget_s or 0.0
        slice_s = FORWARD_COST * step_s * self.val_pixels[1] / max(1, self.pixels_per_step)
        n_val, _ = self.val_pixels
        per_epoch = VALIDATION_SHARE * budget / self.epochs
        keep = min(n_val, max(1, int(per_epoch // slice_s))) if n_val and slice_s > 0 else n_val
        reserve = {
            "validations_s": round(self.epochs * keep * slice_s, 1),
            "test_s": round(FORWARD_COST * step_s * self.test_pixels / max(1, self.pixels_per_step), 1),
            "margin_s": round(MARGIN * budget, 1),
        }
        left = budget - now - sum(reserve.values())
        total = self.step_count + max(self.epochs, int(left // step_s))
        picks = sorted({int(round(v)) for v in _spaced(n_val, keep)})
        self.plan = BudgetPlan(total, round(step_s, 4), picks, round(now, 1), reserve)
        log.info(
            "time budget %.1f min: %.2f s per step measured, so %d steps in %d epochs of one-cycle "
            "learning rate (peak %g); validation on %s",
            budget / 60,
            step_s,
            total,
            self.epochs,
            self.peak,
            f"{len(picks)} of {n_val} slices" if n_val else "no slices",
        )
        if self.on_plan is not None:
            self.on_plan(self.plan)

    def _replan(self, now: float) -> None:
        """Every few steps: refit the length to the latest steps' speed and the measured validation
        time (a shared machine is busier or freer than in the first steps, which also carry one-time
        start-up costs)."""
        self._replanned_at = self.step_count
        if not self._recent or self.budget_s is None:
            return
        step_s = sorted(self._recent)[len(self._recent) // 2]
        reserve = self.plan.reserve_s
        val_s = self._val_s if self._val_s is not None else reserve.get("validations_s", 0.0) / self.epochs
        remaining = max(1, self.epochs - self._epochs_done)  # validations still to come
        reserve["test_s"] = round(FORWARD_COST * step_s * self.test_pixels / max(1, self.pixels_per_step), 1)
        left = self.budget_s - (now - self.clock_start) - remaining * val_s
        left -= reserve["test_s"] + reserve.get("margin_s", 0.0)
        total = self.step_count + max(remaining, int(left // step_s))
        old = self.plan.total_steps or total
        if abs(total - old) > 0.1 * old:
            log.info(
                "re-planned: %.2f s per step, %.1f s per validation: %d steps in all", step_s, val_s, total
            )
        self.plan.total_steps, self.plan.step_seconds = total, round(step_s, 4)

    # --- what the trainer calls ----------------------------------------------------------------
    def step(self) -> None:
        """Epoch end (the engine trainer's call; the rate itself is set per batch): note the time, so the
        next step knows how long the validation took."""
        self._epoch_ended = time.perf_counter()
        self._epochs_done += 1

    def state_dict(self) -> dict[str, Any]:
        return {"step_count": self.step_count, "peak": self.peak, "plan": asdict(self.plan)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step_count = int(state["step_count"])
        if not self._fixed:  # the budget's plan goes on as measured; a given length is this run's
            self.plan = BudgetPlan(**state["plan"])
        if self.plan.total_steps:
            self._epochs_done = min(
                self.epochs, int(round(self.epochs * self.step_count / self.plan.total_steps))
            )
        if self.plan.total_steps is not None and self.on_plan is not None:
            self.on_plan(self.plan)
        self._set_lr()


def _spaced(n: int, k: int) -> list[float]:
    """``k`` evenly spaced positions in ``range(n)`` (both ends when k > 1)."""
    if n <= 0 or k <= 0:
        return []
    if k == 1:
        return [(n - 1) / 2]
    return [i * (n - 1) / (k - 1) for i in range(k)]


def settle_config(cfg: Any) -> None:
    """Fill in what ``ct-train`` leaves to the budget (a :class:`medseg.ct.train.CTTrainConfig`, in
    place): with ``max_minutes`` a one-cycle schedule (its peak, :func:`peak_lr`, once the starting
    weights are known), 128 px crops and about one epoch per minute; without, the paper's recipe
    (30 epochs, 1e-4, step decay)."""
    from medseg.errors import InputError

    if cfg.schedule not in ("auto", "onecycle", "step"):
        raise InputError(f"unknown learning-rate schedule '{cfg.schedule}' (auto, onecycle or step)")
    budget = cfg.max_minutes
    if cfg.schedule == "auto":
        cfg.schedule = "onecycle" if budget else "step"
    if cfg.epochs is None:
        cfg.epochs = budget_epochs(budget) if budget and cfg.steps_per_epoch is None else 30
    if cfg.lr is None and cfg.schedule == "step":
        cfg.lr = 1e-4  # the one-cycle peak waits for the starting weights: :func:`peak_lr`
    if cfg.crop is None and budget:
        cfg.crop = BUDGET_CROP
    if cfg.augment is None:
        cfg.augment = bool(budget)


def peak_lr(fine_tune: bool) -> float:
    """One-cycle peak when no --lr: lower from starting weights, which a large step would undo."""
    return FINETUNE_PEAK_LR if fine_tune else BUDGET_PEAK_LR


def budget_summary(cfg: Any, task: Any, result: Any, seconds: float) -> dict[str, Any]:
    """What the run spent and how it was planned (``extra.budget`` of ct-train's result)."""
    schedule = task.schedule
    plan = asdict(schedule.plan) if schedule is not None else None
    return {
        "max_minutes": cfg.max_minutes,
        "used_minutes": round(seconds / 60, 2),  # loading, training, validation and the held-out test
        "training_minutes": round(result.seconds / 60, 2),
        "schedule": cfg.schedule,
        "peak_lr" if cfg.schedule == "onecycle" else "lr": cfg.lr,
        "steps": schedule.step_count if schedule is not None else None,
        "epochs": result.epochs,
        "crop": cfg.crop,
        "batch_size": cfg.batch_size,
        "augment": bool(cfg.augment),
        "validation_slices": int(len(task.x_va)),
        "plan": plan,
    }


def budget_text(extra: dict[str, Any]) -> str:
    """One line for the human summary: the budget and how it was spent, where the run started."""
    b, init = extra.get("budget") or {}, (extra.get("init") or {}).get("description")
    if not b:
        return ""
    spent = f"{b['used_minutes']:.1f} min used ({b['training_minutes']:.1f} min training)"
    head = f"time budget {b['max_minutes']:g} min, {spent}" if b.get("max_minutes") else spent
    steps = f"{b['steps']} steps" if b.get("steps") is not None else f"{b['epochs']} epoch(s)"
    lr = (
        f"one-cycle lr, peak {b['peak_lr']:g}"
        if b["schedule"] == "onecycle"
        else f"lr {b['lr']:g} in x0.1 steps"
    )
    crop = f"{b['crop']} px crops" if b.get("crop") else "whole slices"
    crop += " (turned and mirrored at random)" if b.get("augment") else ""
    return f"{head}: {steps} of {lr}, {crop} x {b['batch_size']}; started from {init}\n"
