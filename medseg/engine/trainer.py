"""One training loop for every pipeline (``ct-train``, ``slide-train``, ``cells-train``, ``brain-train``).

A pipeline supplies a :class:`TrainTask` (model, optimiser, batches, loss, validation metric,
weights metadata); :func:`fit` owns everything else, the same way everywhere:

- files in ``out_dir``: ``best.safetensors`` (best validation metric), ``last.safetensors``,
  ``state.pt`` (optimiser, scheduler, epoch, history, RNG states: only what resume needs; the
  weights themselves resume from ``last.safetensors``), ``history.json``, ``train_config.json``;
- 1-based epochs; ``resume=True`` without ``state.pt`` is an input error (exit 2);
- a progress bar with loss and metric; a time budget (``max_minutes``) checked after every step;
- a clear warning when the task has no held-out validation data;
- interruption (Ctrl-C, a crash): the folder always holds whole epochs. An epoch's files are saved
  with Ctrl-C held back, ``train_config.json`` is written with the first saved epoch, and a run
  stopped before its first epoch ended leaves no training file, so the plain rerun starts afresh;
  a later epoch leaves the state of the last finished one, which ``--resume`` continues;
- one run per folder: the folder stays locked while training (a second run is refused, exit 3).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import signal
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from medseg.errors import InputError, OutputExistsError
from medseg.results import json_safe, note_partial

if TYPE_CHECKING:
    import torch

    from medseg.engine.checkpoint import CheckpointMeta

log = logging.getLogger("medseg.train")

BEST, LAST, STATE, HISTORY, CONFIG = (
    "best.safetensors",
    "last.safetensors",
    "state.pt",
    "history.json",
    "train_config.json",
)
TRAIN_FILES = (BEST, LAST, STATE, HISTORY, CONFIG)


@dataclass
class TrainConfig:
    """What the loop itself needs; pipeline configs hold one of these (or its fields)."""

    epochs: int = 10
    seed: int = 0
    max_minutes: float | None = None  # stop after the step that exceeds this budget
    grad_clip: float | None = None  # clip the gradient norm to this value
    amp: str = "auto"  # autocast on CUDA (bf16/fp16), off on CPU
    slim: float = 0.0  # network slimming: L1 penalty on batch-norm scales (medseg.engine.slim)
    # exponential moving average of the weights (decay per step, e.g. 0.999; 0 = off): validation and
    # best/last weights use the average, which is smoother than the last step's weights when batches are
    # small and noisy; the raw weights go on training (kept in the state for --resume)
    ema: float = 0.0


@runtime_checkable
class TrainTask(Protocol):
    """What a pipeline plugs into :func:`fit`.

    ``metric`` names the validation value that chooses ``best.safetensors``; ``mode`` is ``"min"``
    or ``"max"``. ``has_validation`` is False when validation runs on training data (the trainer
    then warns). ``train_batches`` yields one epoch of batches; ``train_step`` returns the loss.
    """

    metric: str
    mode: str
    has_validation: bool

    def build_model(self) -> torch.nn.Module: ...

    def build_optimizer(self, model: torch.nn.Module) -> torch.optim.Optimizer: ...

    def build_scheduler(self, optimizer: torch.optim.Optimizer) -> Any | None: ...

    def train_batches(self, epoch: int, rng: np.random.Generator) -> Iterable[Any]: ...

    def train_step(self, model: torch.nn.Module, batch: Any, device: torch.device) -> torch.Tensor: ...

    def validate(self, model: torch.nn.Module, device: torch.device) -> dict[str, float]: ...

    def weights_meta(self, metrics: dict[str, float], epoch: int) -> CheckpointMeta: ...

    def config_dict(self) -> dict[str, Any]: ...


@dataclass
class TrainResult:
    out_dir: str
    best_weights: str
    last_weights: str
    metric: str
    best_metric: float
    best_epoch: int
    epochs: int  # epochs completed in total (including resumed ones)
    stopped: str  # "completed" | "time budget"
    device: str
    seconds: float
    validated_on: str  # "held-out data" | "training data"
    history: list[dict[str, Any]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return json_safe(asdict(self))


def preflight(
    out_dir: str | Path, *, resume: bool, overwrite: bool, inputs: Iterable[str | Path | None] = ()
) -> Path:
    """Check the training folder before any work: resume needs state, a new run needs a free folder.

    ``inputs`` (training data, initial weights) may not be, contain or lie inside the folder.
    """
    from medseg.io.atomic import check_apart, check_writable

    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError("--out must be a folder for the training run; this is a file", path=out_dir)
    check_apart(out_dir, list(inputs), what="the training folder")
    if resume:
        if not (out_dir / STATE).is_file() or not (out_dir / LAST).is_file():
            raise InputError(f"--resume: no training state ({STATE} and {LAST}) to resume from", path=out_dir)
    elif not overwrite:
        existing = [name for name in TRAIN_FILES if (out_dir / name).exists()]
        if existing:
            raise OutputExistsError(
                f"holds a training run ({', '.join(existing)}); use --resume to continue or "
                "--overwrite to start again",
                path=out_dir,
            )
    check_writable(out_dir)
    return out_dir


@dataclass
class _Partial:
    """What an interrupted run prints with ``--json``: the epochs finished so far."""

    out_dir: str
    metric: str
    history: list[dict[str, Any]]
    epochs: int = 0  # epochs whose files are saved (a validated but unsaved epoch is not reported)

    def to_dict(self) -> dict[str, Any]:
        history = self.history[: self.epochs]
        return json_safe(
            {"out_dir": self.out_dir, "metric": self.metric, "epochs": self.epochs, "history": history}
        )


def _left_behind(
    out_dir: Path, done: int, saved: int, *, resume: bool, exc: BaseException, hint: str | None = None
) -> None:
    """After an interruption or a crash: a folder of whole epochs, and the user told what to rerun.

    ``done`` is the last epoch whose files are saved, ``saved`` how many of them this run saved.
    """
    interrupted = isinstance(exc, KeyboardInterrupt)
    if not saved and not resume:  # nothing of this run is worth keeping, nothing may block the rerun
        for name in TRAIN_FILES:
            (out_dir / name).unlink(missing_ok=True)
        if interrupted:
            log.warning(
                "interrupted in epoch 1: nothing was saved; %s",
                hint or "rerun the same command to start again",
            )
    elif interrupted:
        log.warning(
            "interrupted in epoch %d: epochs up to %d are saved; rerun with --resume to continue",
            done + 1,
            done,
        )


def _identity_of(task: Any) -> str | None:
    """What a resumed run must share with the run it continues (network, data, split), as JSON text;
    None for a task that does not say (its optional ``resume_identity()``)."""
    describe = getattr(task, "resume_identity", None)
    if describe is None:
        return None
    return json.dumps(json_safe(describe()), sort_keys=True, default=str)


def _differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    """'key: old -> new' for each leaf that differs between two JSON documents (a few, shortened)."""
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[str] = []
        for key in sorted(set(old) | set(new), key=str):
            out += _differences(old.get(key), new.get(key), f"{prefix}{key}.")
        return out
    if old == new:
        return []

    def short(value: Any) -> str:
        text = json.dumps(value, default=str)
        return text if len(text) <= 120 else text[:117] + "..."

    return [f"{prefix.rstrip('.') or 'settings'} {short(old)} -> {short(new)}"]


def _check_same_run(out_dir: Path, state: dict[str, Any], identity: str | None) -> None:
    """--resume continues the same run: the same network, trained on the same data with the same split."""
    saved = state.get("identity") if isinstance(state, dict) else None
    if identity is None or not isinstance(saved, str) or saved == identity:
        return
    changed = _differences(json.loads(saved), json.loads(identity))
    raise InputError(
        "--resume: this run was trained with other data or network settings ("
        + "; ".join(changed[:4])
        + (f"; {len(changed) - 4} more" if len(changed) > 4 else "")
        + f"): resume with the first run's options (see {CONFIG}), or start a new run "
        "(another --out, or --overwrite)",
        path=out_dir,
    )


def _restore(
    out_dir: Path,
    state: Any,
    *,
    model: Any,
    optimizer: Any,
    scheduler: Any,
    ema: Any,
    rng: np.random.Generator,
) -> tuple[int, list[dict[str, Any]], float, int]:
    """Load a saved run's weights, optimiser, scheduler and RNG states into this one; a state that is not
    a medseg run's, or weights that do not fit this network, are refused in one line (exit 4)."""
    import torch

    from medseg.engine.checkpoint import load_weights
    from medseg.errors import ModelError

    mismatch = (
        "--resume: the saved weights do not fit the network these options build ({error}); resume "
        f"with the first run's options (see {CONFIG}), or start a new run (another --out, or --overwrite)"
    )
    try:
        if ema is not None:
            if state.get("ema") is None:
                raise InputError(f"{out_dir}: this run was trained without --ema; resume it without --ema")
            _load_fitting(ema.module, state["ema"]["weights"], path=out_dir / STATE, message=mismatch)
            ema.n_averaged.fill_(int(state["ema"]["n"]))
        if "model" in state:
            _load_fitting(model, state["model"], path=out_dir / STATE, message=mismatch)
        else:
            _load_fitting(model, load_weights(out_dir / LAST)[0], path=out_dir / LAST, message=mismatch)
        try:
            optimizer.load_state_dict(state["optimizer"])
        except ValueError as exc:  # other parameter groups or sizes
            raise ModelError(mismatch.format(error=str(exc).splitlines()[0]), path=out_dir / STATE) from None
        if scheduler is not None and state.get("scheduler") is not None:
            scheduler.load_state_dict(state["scheduler"])
        start_epoch, history = int(state["epoch"]), list(state["history"])
        best, best_epoch = float(state["best"]), int(state["best_epoch"])
        rng.bit_generator.state = json.loads(state["numpy_rng"])
        torch.set_rng_state(state["torch_rng"])
    except (KeyError, TypeError, AttributeError, IndexError, json.JSONDecodeError) as exc:
        raise ModelError(
            f"not a readable training state (an entry is missing or wrong: {exc.__class__.__name__} {exc}; "
            "damaged, or not written by a medseg training run); start without --resume or restore the run folder",
            path=out_dir / STATE,
        ) from None
    return start_epoch, history, best, best_epoch


def _load_fitting(model: Any, weights: dict, *, path: Path, message: str) -> None:
    """``model.load_state_dict(weights)``, or one ModelError line naming ``path`` with torch's first
    finding (which keys are missing or of another size), not its header line."""
    from medseg.errors import ModelError

    try:
        model.load_state_dict(weights)
    except RuntimeError as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        detail = next(
            (line for line in lines if not line.startswith("Error(s) in loading")), lines[0] if lines else ""
        )
        detail = detail if len(detail) <= 200 else detail[:197] + "..."
        raise ModelError(message.format(error=detail), path=path) from None


def _ema_of(model: Any, decay: float) -> Any:
    """torch's AveragedModel keeping an exponential moving average of ``model``'s weights and its
    batch-norm statistics (``use_buffers``)."""
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)


def _better(value: float, best: float, mode: str) -> bool:
    if not math.isfinite(value):
        return False
    if not math.isfinite(best):
        return True
    return value < best if mode == "min" else value > best


@contextlib.contextmanager
def _hold_ctrl_c() -> Iterator[None]:
    """Ctrl-C waits until an epoch's files are all saved (weights, state, history agree)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, _frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught:
        raise KeyboardInterrupt


def fit(
    task: TrainTask,
    out_dir: str | Path,
    config: TrainConfig,
    *,
    device: str = "auto",
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = False,
) -> TrainResult:
    """Train ``task`` for ``config.epochs`` (1-based) epochs, validating after each; see module doc."""
    from medseg.engine.openvino_runtime import runtime_scope
    from medseg.io.atomic import output_session

    # validation runs PyTorch: the weights change every epoch (no conversion per epoch)
    with output_session(), runtime_scope("torch"):  # the folder stays locked while this run trains in it
        return _fit(
            task, out_dir, config, device=device, resume=resume, overwrite=overwrite, progress=progress
        )


def _fit(
    task: TrainTask,
    out_dir: str | Path,
    config: TrainConfig,
    *,
    device: str = "auto",
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = False,
) -> TrainResult:
    import torch

    from medseg.engine.checkpoint import load_training_state, load_weights, save_training_state, save_weights
    from medseg.engine.progress import progress_bar
    from medseg.engine.runtime import autocast, resolve_amp_dtype, seed_everything, select_device
    from medseg.engine.slim import add_bn_l1_grad, has_batch_norm
    from medseg.io.atomic import write_text

    if task.mode not in ("min", "max"):
        raise ValueError("task.mode must be 'min' or 'max'")
    out_dir = preflight(out_dir, resume=resume, overwrite=overwrite)
    t_start = time.perf_counter()
    dev = select_device(device)
    rng = seed_everything(config.seed)
    amp_dtype = resolve_amp_dtype(dev, config.amp)
    model = task.build_model().to(dev)
    if config.slim < 0 or not math.isfinite(config.slim):
        raise InputError(f"--slim must be a finite number >= 0, got {config.slim}")
    if config.slim and not has_batch_norm(model):
        raise InputError("--slim penalises batch-norm scales, and this net has no batch norm")
    if not 0.0 <= config.ema < 1.0:
        raise InputError(f"--ema must be a decay in [0, 1), got {config.ema}")
    ema = _ema_of(model, config.ema) if config.ema else None
    optimizer = task.build_optimizer(model)
    scheduler = task.build_scheduler(optimizer)
    scaler = torch.amp.GradScaler(dev.type) if amp_dtype == torch.float16 else None
    history: list[dict[str, Any]] = []
    best, best_epoch, start_epoch = float("nan"), 0, 0
    identity = _identity_of(task)
    if resume:
        state = load_training_state(out_dir / STATE)
        _check_same_run(out_dir, state, identity)
        start_epoch, history, best, best_epoch = _restore(
            out_dir, state, model=model, optimizer=optimizer, scheduler=scheduler, ema=ema, rng=rng
        )
        log.info(
            "resuming after epoch %d (best %s %.4g at epoch %d)", start_epoch, task.metric, best, best_epoch
        )
    if start_epoch >= config.epochs:
        log.warning(
            "already trained %d of %d epoch(s): nothing to do (raise --epochs to continue)",
            start_epoch,
            config.epochs,
        )
    if not task.has_validation and not getattr(task, "validation_warned", False):
        log.warning(
            "no held-out validation data: %s is computed on the training data, so 'best' may overfit",
            task.metric,
        )
    created = not out_dir.exists()  # a folder this run made is removed again when it saved nothing
    out_dir.mkdir(parents=True, exist_ok=True)
    if not resume:  # --overwrite: nothing of an older run may pass for this one's (e.g. its best weights)
        for name in TRAIN_FILES:
            (out_dir / name).unlink(missing_ok=True)
    config_text = json.dumps({"train": asdict(config), "task": task.config_dict()}, indent=2, default=str)
    partial = _Partial(str(out_dir), task.metric, history, start_epoch)
    note_partial(partial)
    budget = config.max_minutes * 60.0 if config.max_minutes else None
    stopped, saved = "completed", 0
    epoch = start_epoch
    try:
        for epoch in range(start_epoch + 1, config.epochs + 1):
            t0, losses = time.perf_counter(), []
            model.train()
            bar = progress_bar(
                task.train_batches(epoch, rng),
                desc=f"epoch {epoch}/{config.epochs}",
                enabled=progress,
                unit="batch",
            )
            for batch in bar:
                with autocast(dev, amp_dtype):
                    loss = task.train_step(model, batch, dev)
                optimizer.zero_grad(set_to_none=True)
                if scaler is not None:
                    scaler.scale(loss).backward()
                    scaler.unscale_(optimizer)
                else:
                    loss.backward()
                if config.slim:  # lambda * sign(gamma): the sub-gradient of lambda * sum |gamma|
                    add_bn_l1_grad(model, config.slim)
                if config.grad_clip:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
                if scaler is not None:
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    optimizer.step()
                if ema is not None:
                    ema.update_parameters(model)
                losses.append(float(loss.detach()))
                if hasattr(bar, "set_postfix"):
                    bar.set_postfix(loss=f"{np.mean(losses):.4g}")
                if budget is not None and time.perf_counter() - t_start > budget:
                    stopped = "time budget"
                    break
            if scheduler is not None:
                scheduler.step()
            net = ema.module if ema is not None else model  # what is validated and saved
            net.eval()
            metrics = {k: float(v) for k, v in task.validate(net, dev).items()}
            if task.metric not in metrics:
                raise ValueError(f"validate() did not return {task.metric!r}")
            value = metrics[task.metric]
            record = {
                "epoch": epoch,
                "train_loss": float(np.mean(losses)) if losses else float("nan"),
                **metrics,
                "lr": float(optimizer.param_groups[0]["lr"]),
                "seconds": round(time.perf_counter() - t0, 3),
            }
            history.append(record)
            log.info(
                "epoch %d/%d: loss %.4g, %s %.4g",
                epoch,
                config.epochs,
                record["train_loss"],
                task.metric,
                value,
            )
            meta = task.weights_meta(metrics, epoch)
            # how much training these weights had (resumed epochs included), and where
            meta.metrics.setdefault("training_seconds", round(sum(float(h["seconds"]) for h in history), 1))
            meta.metrics.setdefault("device", str(dev))
            with _hold_ctrl_c():  # an epoch's files are saved whole
                if _better(value, best, task.mode):
                    best, best_epoch = value, epoch
                    save_weights(out_dir / BEST, net.state_dict(), meta)
                save_weights(out_dir / LAST, net.state_dict(), meta)
                save_training_state(
                    out_dir / STATE,
                    {
                        "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict() if scheduler else None,
                        "epoch": epoch,
                        "best": best,
                        "best_epoch": best_epoch,
                        "history": history,
                        "numpy_rng": json.dumps(rng.bit_generator.state),
                        "torch_rng": torch.get_rng_state(),
                        **({"identity": identity} if identity is not None else {}),
                        **(
                            {
                                "model": model.state_dict(),  # LAST holds the average
                                "ema": {"weights": ema.module.state_dict(), "n": int(ema.n_averaged)},
                            }
                            if ema is not None
                            else {}
                        ),
                    },
                )
                write_text(out_dir / HISTORY, json.dumps(json_safe(history), indent=2) + "\n")
                if not saved:  # with the first saved epoch: a config alone is not a run to resume
                    write_text(out_dir / CONFIG, config_text + "\n")
                saved += 1
                partial.epochs = start_epoch + saved
            if stopped != "completed":
                log.warning(
                    "stopped after epoch %d: the time budget of %.3g minute(s) is spent",
                    epoch,
                    config.max_minutes,
                )
                break
    except BaseException as exc:
        # a task that is one step of a longer run (brain's phases) says what its rerun is
        hint = getattr(task, "rerun_hint", None)
        _left_behind(out_dir, start_epoch + saved, saved, resume=resume, exc=exc, hint=hint)
        if created and not saved:
            with contextlib.suppress(OSError):  # not empty (the user put something there): kept
                out_dir.rmdir()
        raise
    if not (out_dir / BEST).is_file() and (out_dir / LAST).is_file():
        # no finite validation value yet: the last weights are the best we have
        save_weights(out_dir / BEST, *load_weights(out_dir / LAST))
    return TrainResult(
        out_dir=str(out_dir),
        best_weights=str(out_dir / BEST),
        last_weights=str(out_dir / LAST),
        metric=task.metric,
        best_metric=best,
        best_epoch=best_epoch,
        epochs=len(history),
        stopped=stopped,
        device=str(dev),
        seconds=round(time.perf_counter() - t_start, 3),
        validated_on="held-out data" if task.has_validation else "training data",
        history=history,
    )
