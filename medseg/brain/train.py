"""Two-phase training of the Havaei networks on the shared trainer (:func:`medseg.engine.trainer.fit`).

* Phase 1: the whole network (for a cascade: the second stage) on class-balanced patches,
  SGD with momentum, dropout, L1 + L2 penalties, step-decayed learning rate; the epoch with the
  lowest validation loss (``select="loss"``) or the best mean WT/TC/ET Dice on fixed whole slices of
  the held-out cases (``select="dice"``, :mod:`medseg.brain.selection`) is kept (``best.safetensors``).
* Phase 2: only the output layer, starting from phase 1's best weights, on patches from the
  natural class distribution, so the softmax learns the real (98 % healthy) priors again.
* Cascades: a TwoPathCNN is trained first (both phases) or loaded (``first_weights``), frozen, and
  its maps are precomputed fully convolutionally through the engine predictor; then the second
  stage is trained with both phases. The frozen first stage stays bit-identical.

Each phase is one ``fit()`` call in its own folder (``OUT/phase1``, ``OUT/phase2``; a cascade that
trains its first stage also ``OUT/first/phase1``, ``OUT/first/phase2``), with the trainer's files
(``best.safetensors``, ``last.safetensors``, ``state.pt``, ``history.json``, ``train_config.json``).
The finished model is ``OUT/best.safetensors`` (phase 2's best). A time budget (``max_minutes``)
covers every stage: what is left is shared among the stages still to run by their steps
(:func:`stage_budget`), a stage whose share is spent stops early and the next starts from its best
weights, so a budgeted run always ends with ``OUT/best.safetensors``. ``resume=True`` keeps completed
phases, continues the interrupted or shortened one (weights, optimiser, scheduler, RNG) and restarts
the phases after it. With two or more cases, ``val_fraction`` of them (at least one) are held out for
validation; with one case the trainer warns that validation uses the training case.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch  # already imported by medseg.brain.models
from torch import nn

from medseg.brain.io import expand_case_dirs
from medseg.brain.models import BrainNetConfig, build_model, is_cascade, output_layer
from medseg.brain.preprocess import PreprocessConfig
from medseg.brain.sampling import TrainingCase, sample_batch
from medseg.brain.segment import MODEL_PREFIX, TASK, make_predictor
from medseg.brain.selection import SCORE, build_slice_sets, dice_scores, natural_log_prior
from medseg.brain.train_cases import load_training_cases, split_cases, training_spacing
from medseg.errors import InputError, ModelError, OutputExistsError

if TYPE_CHECKING:
    from medseg.engine.checkpoint import CheckpointMeta
    from medseg.engine.trainer import TrainResult

log = logging.getLogger("medseg.brain")

METRIC = "val_loss"
SELECT_MODES = {"loss": (METRIC, "min"), "dice": (SCORE, "max")}  # select -> (metric, trainer mode)
STAGE_KEYS = ("best_weights", "last_weights", "best_metric", "best_epoch", "epochs", "stopped")


@dataclass
class PhaseConfig:
    epochs: int = 5
    steps_per_epoch: int = 30
    lr: float = 0.003
    lr_halving_epochs: int = 3  # the learning rate halves every this many epochs


@dataclass
class BrainTrainConfig:
    """What is trained and how (saved in the weights' metadata)."""

    net: BrainNetConfig = field(default_factory=BrainNetConfig)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    phase1: PhaseConfig = field(default_factory=PhaseConfig)
    phase2: PhaseConfig = field(default_factory=lambda: PhaseConfig(epochs=2, steps_per_epoch=20, lr=0.001))
    batch_size: int = 128
    momentum: float = 0.9
    clip_grad: float = 5.0
    l1: float = 1e-6
    l2: float = 1e-4
    val_patches: int = 2000
    val_fraction: float = 0.2  # of the cases held out for validation (at least one when there are >= 2)
    seed: int = 0
    labels: str = "brats2021"
    training_data: str = ""
    max_minutes: float | None = None  # time budget for the whole run (all phases)
    amp: str = "auto"
    train_spacing_mm: list[float] | None = None  # in-plane (row, col) of the training cases; set by train
    slim: float = 0.0  # network slimming: L1 on the batch-norm scales in phase 1 (needs net.batch_norm)
    prune_ratio: float | None = None  # then prune this share of the maxout features (twopath) ...
    finetune_epochs: int = 3  # ... and fine-tune the pruned net (phase-1 patches) before phase 2
    init_weights: str | None = None  # phase 1 starts from these weights (same network), not at random
    select: str = "loss"  # which epoch each phase keeps: lowest validation "loss" or best "dice"
    select_slices: int = 16  # select="dice": axial slices through each held-out case's tumour
    rotate_cases: bool = False  # each training case also rotated 180 degrees in-plane (the TTA view)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Stage:
    """One fit() call: a network, a phase, and where its starting weights come from."""

    name: str  # sub-folder of the output folder, e.g. "phase1" or "first/phase2"
    net: BrainNetConfig
    phase: int
    init: Path | None = None  # full weights to start from (phase 2: phase 1's best)
    first: Path | None = None  # a cascade's frozen first stage (TwoPathCNN weights)
    slim: float = 0.0  # L1 penalty on the batch-norm scales (network slimming)
    prune: float | None = None  # before this stage: prune ``init`` at this ratio (it fine-tunes the result)


def phase_config(cfg: BrainTrainConfig, stage: Stage) -> PhaseConfig:
    """The epochs, steps and learning rate of ``stage`` (a pruned net's fine-tuning: phase-1 settings)."""
    if stage.prune is not None:
        return replace(cfg.phase1, epochs=cfg.finetune_epochs)
    return cfg.phase1 if stage.phase == 1 else cfg.phase2


FINETUNE, PRUNED = "pruned-finetune", "pruned.safetensors"


def check_slimming(cfg: BrainTrainConfig) -> None:
    """Refuse slimming options a net cannot take, in words, before any work."""
    if cfg.slim < 0 or cfg.slim != cfg.slim or cfg.slim == float("inf"):
        raise InputError(f"--slim must be a finite number >= 0, got {cfg.slim}")
    if cfg.prune_ratio is not None and not 0 < cfg.prune_ratio < 1:
        raise InputError(f"--prune-ratio must lie strictly between 0 and 1, got {cfg.prune_ratio}")
    if (cfg.slim > 0 or cfg.prune_ratio is not None) and not cfg.net.batch_norm:
        raise InputError(
            "--slim and --prune-ratio act on batch-norm scales: this net has no batch norm (add --batch-norm)"
        )
    if cfg.prune_ratio is not None and cfg.net.arch != "twopath":
        raise InputError(f"--prune-ratio prunes a twopath net, not {cfg.net.arch}")
    if cfg.select not in SELECT_MODES:
        raise InputError(f"select must be one of {', '.join(SELECT_MODES)}, got {cfg.select!r}")


def prune_stage_weights(src: Path, dst: Path, ratio: float) -> tuple[BrainNetConfig, dict[str, Any]]:
    """Prune phase 1's best twopath weights (:func:`medseg.brain.models.prune_twopath`) into ``dst``,
    an ordinary weights file whose config holds the per-layer widths."""
    from medseg.brain.models import prune_twopath
    from medseg.engine.checkpoint import load_weights, save_weights

    state, meta = load_weights(src, expect_model=MODEL_PREFIX + "twopath")
    net_cfg = BrainNetConfig.from_dict(meta.config["net"])
    model = build_model(config=net_cfg)
    model.load_state_dict(state)
    new, new_cfg, summary = prune_twopath(model, net_cfg, ratio)
    meta = replace(meta, config={**meta.config, "net": asdict(new_cfg)})
    save_weights(dst, new.state_dict(), meta)
    log.info(
        "pruned %.0f%% of the maxout features: widths %s, %d -> %d parameters",
        100 * ratio,
        new_cfg.widths,
        summary["params_before"],
        summary["params_after"],
    )
    return new_cfg, summary


def plan_stages(out_dir: Path, cfg: BrainTrainConfig, first_weights: Path | None) -> list[Stage]:
    """The fit() calls of one brain-train run, in order."""
    stages: list[Stage] = []
    first = first_weights
    if cfg.net.arch != "twopath" and first is None:
        tp = BrainNetConfig(**{**asdict(cfg.net), "arch": "twopath"})
        stages += [
            Stage("first/phase1", tp, 1),
            Stage("first/phase2", tp, 2, init=out_dir / "first/phase1/best.safetensors"),
        ]
        first = out_dir / "first/phase2/best.safetensors"
    if cfg.net.arch == "twopath":
        first = None
    init = Path(cfg.init_weights) if cfg.init_weights else None
    stages.append(Stage("phase1", cfg.net, 1, init=init, first=first, slim=cfg.slim))
    tuned = out_dir / "phase1/best.safetensors"
    if cfg.prune_ratio is not None:  # network slimming: prune phase 1's best, fine-tune, then phase 2
        stages.append(Stage(FINETUNE, cfg.net, 1, init=tuned, prune=cfg.prune_ratio))
        tuned = out_dir / FINETUNE / "best.safetensors"
    stages.append(Stage("phase2", cfg.net, 2, init=tuned, first=first))
    return stages


class CentreLogits(nn.Module):
    """A network as ``(patches, first-stage windows or None) -> centre-pixel logits``, for the predictor."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, inputs: tuple[torch.Tensor, torch.Tensor | None]) -> torch.Tensor:
        x, p = inputs
        return (self.net.combine(x, p) if p is not None else self.net(x))[:, :, 0, 0]


class BrainTask:
    """A :class:`~medseg.engine.trainer.TrainTask` for one phase of one network."""

    metric = METRIC
    mode = "min"

    def __init__(
        self,
        stage: Stage,
        cfg: BrainTrainConfig,
        train_cases: list[TrainingCase],
        val_cases: list[TrainingCase],
        *,
        device: str = "auto",
    ) -> None:
        self.stage, self.cfg, self.device = stage, cfg, device
        self.train_cases, self.val_cases = train_cases, val_cases
        self.has_validation = bool(val_cases)
        self.pcfg = phase_config(cfg, stage)
        self.probs_size: int | None = None
        self._val: tuple[np.ndarray, np.ndarray | None, np.ndarray] | None = None
        self.metric, self.mode = SELECT_MODES[cfg.select]
        self._slices: list | None = None  # select="dice": the held-out cases' scoring slices
        self._log_prior: np.ndarray | None = None

    def build_model(self) -> torch.nn.Module:
        model = build_model(config=self.stage.net)
        if self.stage.init is not None:
            _load_into(model, self.stage.init, expect=MODEL_PREFIX + self.stage.net.arch)
        elif self.stage.first is not None:
            _load_into(model.first, self.stage.first, expect=MODEL_PREFIX + "twopath")
        if is_cascade(model):
            model.freeze_first()
            self.probs_size = model.probs_size
            source = str(self.stage.first)
            todo = [c for c in self.train_cases + self.val_cases if c.probs_source != source]
            if todo:
                predictor = make_predictor(
                    model.first, device=self.device, amp=self.cfg.amp, postprocess="softmax"
                )
                for case in todo:
                    case.set_first_stage(predictor, self.stage.net.arch)
                    case.probs_source = source
        if self.stage.phase == 2:  # only the output layer learns
            for p in model.parameters():
                p.requires_grad_(False)
            for p in output_layer(model).parameters():
                p.requires_grad_(True)
        self._val = sample_batch(
            self.val_cases or self.train_cases,
            self.cfg.val_patches,
            np.random.default_rng(self.cfg.seed + 10_000 * self.stage.phase),
            balanced=self.stage.phase == 1,
            probs_size=self.probs_size,
        )
        if self.cfg.select == "dice":
            cases = self.val_cases or self.train_cases
            self._slices = build_slice_sets(cases, self.cfg.select_slices, probs_size=self.probs_size)
            # phase 1 samples class-balanced patches: score it with natural priors (selection module doc)
            self._log_prior = natural_log_prior(self.train_cases) if self.stage.phase == 1 else None
        return model.to(memory_format=torch.channels_last)

    def build_optimizer(self, model: torch.nn.Module) -> torch.optim.Optimizer:
        trainable = [p for p in model.parameters() if p.requires_grad]
        return torch.optim.SGD(
            trainable, lr=self.pcfg.lr, momentum=self.cfg.momentum, weight_decay=self.cfg.l2
        )

    def build_scheduler(self, optimizer: torch.optim.Optimizer) -> Any:
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=self.pcfg.lr_halving_epochs, gamma=0.5)

    def train_batches(self, epoch: int, rng: np.random.Generator):
        for _ in range(self.pcfg.steps_per_epoch):
            yield sample_batch(
                self.train_cases,
                self.cfg.batch_size,
                rng,
                balanced=self.stage.phase == 1,
                probs_size=self.probs_size,
            )

    def train_step(self, model: torch.nn.Module, batch, device: torch.device) -> torch.Tensor:
        x, p, y = batch
        xt = torch.from_numpy(x).to(device).contiguous(memory_format=torch.channels_last)
        pt = (
            torch.from_numpy(p).to(device).contiguous(memory_format=torch.channels_last)
            if p is not None
            else None
        )
        logits = (model.combine(xt, pt) if pt is not None else model(xt))[:, :, 0, 0]
        loss = torch.nn.functional.cross_entropy(logits.float(), torch.from_numpy(y).to(device))
        if self.cfg.l1 > 0:
            loss = loss + self.cfg.l1 * sum(
                p.abs().sum() for p in model.parameters() if p.requires_grad and p.dim() > 1
            )
        return loss

    def validate(self, model: torch.nn.Module, device: torch.device) -> dict[str, float]:
        """Loss and accuracy on the fixed validation patches (held-out cases when there are any)."""
        from medseg.engine.predictor import Predictor

        assert self._val is not None, "build_model() samples the validation patches"
        x, p, y = self._val
        predictor = Predictor(CentreLogits(model), device=device, amp=self.cfg.amp, postprocess="none")
        loss, correct = 0.0, 0
        for s in range(0, len(y), 512):
            inputs = (
                predictor.to_device(x[s : s + 512]),
                predictor.to_device(p[s : s + 512]) if p is not None else None,
            )
            logits = predictor.forward(inputs).float()
            target = torch.from_numpy(y[s : s + 512]).to(logits.device)
            loss += float(torch.nn.functional.cross_entropy(logits, target, reduction="sum"))
            correct += int((logits.argmax(1) == target).sum())
        out = {METRIC: loss / len(y), "val_accuracy": correct / len(y)}
        if self._slices is not None:
            out.update(dice_scores(model, self._slices, device, log_prior=self._log_prior))
        return out

    def weights_meta(self, metrics: dict[str, float], epoch: int) -> CheckpointMeta:
        from medseg.engine.checkpoint import CheckpointMeta

        return CheckpointMeta(
            model=MODEL_PREFIX + self.stage.net.arch,
            task=TASK,
            config={
                "net": asdict(self.stage.net),
                "preprocess": asdict(self.cfg.preprocess),
                "train": {**self.cfg.to_dict(), "stage": self.stage.name},
                "train_spacing_mm": self.cfg.train_spacing_mm,
                "training_cases": [c.name for c in self.train_cases],
                "validation_cases": [c.name for c in self.val_cases],
            },
            training_data=self.cfg.training_data,
            normalisation={"per_channel": "z-score inside brain"},
            metrics={
                "stage": self.stage.name,
                "epoch": epoch,
                **metrics,
                "validated_on": "held-out cases" if self.has_validation else "training cases",
            },
            notes="Havaei et al. 2017 architecture; labels: Havaei order (0 healthy, 1 necrosis, 2 edema, "
            "3 non-enhancing, 4 enhancing)"
            + ("" if self.stage.phase == 2 else "; phase 1 only (class-balanced, not yet calibrated)"),
        )

    def resume_identity(self) -> dict[str, Any]:
        """What ``--resume`` must share with the run it continues: the network and the cases of the split."""
        return {
            "network": asdict(self.stage.net),
            "training_cases": [c.name for c in self.train_cases],
            "validation_cases": [c.name for c in self.val_cases],
        }

    def config_dict(self) -> dict[str, Any]:
        return {
            "stage": self.stage.name,
            "phase": self.stage.phase,
            "net": asdict(self.stage.net),
            "init": str(self.stage.init or ""),
            "first_stage": str(self.stage.first or ""),
            "training_cases": [c.name for c in self.train_cases],
            "validation_cases": [c.name for c in self.val_cases],
            "config": self.cfg.to_dict(),
        }


def _load_into(module: torch.nn.Module, path: Path, *, expect: str) -> None:
    from medseg.engine.checkpoint import load_weights

    state, _meta = load_weights(path, expect_model=expect)
    try:
        module.load_state_dict(state)
    except RuntimeError as exc:
        raise ModelError(
            f"weights do not fit the network being trained (other widths?): {str(exc).splitlines()[0]}",
            path=path,
        ) from None


def _stage_files(d: Path) -> list[Path]:
    from medseg.engine.trainer import TRAIN_FILES

    return [d / n for n in TRAIN_FILES if (d / n).exists()]


def _preflight(out_dir: Path, stages: list[Stage], *, resume: bool, overwrite: bool) -> None:
    """Before any work: resume needs a state, a new run needs a free folder, the folder must be writable."""
    from medseg.engine.trainer import LAST, STATE
    from medseg.io.atomic import check_writable

    dirs = [out_dir / s.name for s in stages]
    if resume:
        if not any((d / STATE).is_file() and (d / LAST).is_file() for d in dirs):
            raise InputError(
                f"--resume: no training state ({STATE} and {LAST} in "
                f"{', '.join(s.name for s in stages)}) to resume from",
                path=out_dir,
            )
        for d in dirs:  # a phase with some files but not its state would be trained again from scratch
            lacking = [n for n in (STATE, LAST) if not (d / n).is_file()]
            if lacking and _stage_files(d):
                raise InputError(
                    f"--resume: this phase holds training files but not {' and '.join(lacking)}, so it cannot "
                    "be continued (damaged run folder): restore it, or start again with --overwrite",
                    path=d,
                )
    elif not overwrite:
        existing = [
            p
            for p in [out_dir / "best.safetensors", *(f for d in dirs for f in _stage_files(d))]
            if p.exists()
        ]
        if existing:
            shown = ", ".join(str(p.relative_to(out_dir)) for p in existing[:3])
            raise OutputExistsError(
                f"holds a training run ({shown}{', ...' if len(existing) > 3 else ''}); "
                "use --resume to continue or --overwrite to start again",
                path=out_dir,
            )
    check_writable(out_dir)


def _history(d: Path) -> list[dict]:
    try:
        return list(json.loads((d / "history.json").read_text(encoding="utf-8")))
    except (OSError, ValueError):
        return []


def _check_resumable(d: Path, stage: Stage) -> None:
    """Refuse to resume a phase trained with another network (the weights would not load)."""
    try:
        saved = json.loads((d / "train_config.json").read_text(encoding="utf-8"))["task"]["net"]
    except (OSError, ValueError, KeyError, TypeError):
        return
    diff = [k for k, v in asdict(stage.net).items() if k in saved and saved[k] != v]
    if diff:
        raise InputError(
            f"--resume: {stage.name} was trained with other network settings "
            f"({', '.join(f'{k} {saved[k]} now {getattr(stage.net, k)}' for k in diff)})",
            path=d,
        )


PHASE2_STEP_COST = 0.5  # a phase-2 step (gradients of the output layer only) against a phase-1 step


def remaining_epochs(out_dir: Path, stages: list[Stage], cfg: BrainTrainConfig, *, resume: bool) -> list[int]:
    """Epochs each stage still has to train: 0 for a completed phase kept by ``resume``; once one phase
    runs, every phase after it is retrained in full (it starts from the new weights)."""
    from medseg.engine.trainer import LAST, STATE

    left, rerun = [], not resume
    for stage in stages:
        d, epochs = out_dir / stage.name, phase_config(cfg, stage).epochs
        has_state = (d / STATE).is_file() and (d / LAST).is_file()
        done = 0 if rerun or not has_state else min(len(_history(d)), epochs)
        left.append(epochs - done)
        rerun = rerun or done < epochs
    return left


def stage_budget(
    stages: list[Stage], cfg: BrainTrainConfig, epochs_left: list[int], index: int, elapsed_s: float
) -> float | None:
    """Minutes of ``cfg.max_minutes`` for stage ``index``: what is left, shared among it and the stages
    after it by their remaining steps (phase 2 steps cost less), so every stage runs and the run
    always ends with usable weights. A spent budget still gives each stage one step and a validation."""
    if cfg.max_minutes is None:
        return None

    def cost(i: int) -> float:
        pcfg = phase_config(cfg, stages[i])
        return epochs_left[i] * pcfg.steps_per_epoch * (1.0 if stages[i].phase == 1 else PHASE2_STEP_COST)

    total = sum(cost(i) for i in range(index, len(stages)))
    left = cfg.max_minutes - elapsed_s / 60.0
    return max(left * cost(index) / total if total > 0 else left, 1e-9)


def train(
    case_dirs: list[str | Path],
    out_dir: str | Path,
    cfg: BrainTrainConfig,
    *,
    val_case_dirs: list[str | Path] | None = None,
    first_weights: Path | None = None,
    device: str = "auto",
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = False,
    cache_dir: Path | None = None,
) -> TrainResult:
    """Train ``cfg.net.arch`` on case folders (see the module doc); returns the trainer's result shape.

    ``val_case_dirs``: the held-out validation cases (a recorded split); otherwise the last
    ``cfg.val_fraction`` of ``case_dirs`` are held out. ``cache_dir``: see :func:`load_training_cases`.
    """
    from medseg.engine.checkpoint import read_meta
    from medseg.engine.runtime import select_device
    from medseg.engine.trainer import LAST, STATE, TrainConfig, TrainResult, fit
    from medseg.io.atomic import atomic_path, check_apart

    out_dir = Path(out_dir)
    t_start = time.perf_counter()
    check_slimming(cfg)
    if resume and overwrite:
        raise InputError("--resume continues the run in --out and --overwrite replaces it: give one of them")
    stages = plan_stages(out_dir, cfg, Path(first_weights) if first_weights else None)
    check_apart(out_dir, [*case_dirs, *(val_case_dirs or []), first_weights, cfg.init_weights])
    _preflight(out_dir, stages, resume=resume, overwrite=overwrite)
    if first_weights is not None and (kind := read_meta(first_weights).model) != MODEL_PREFIX + "twopath":
        raise ModelError(
            f"first-stage weights must be a TwoPathCNN ({MODEL_PREFIX}twopath), not {kind}",
            path=first_weights,
        )
    dev = select_device(device)
    dirs = expand_case_dirs(list(case_dirs))
    val_dirs = expand_case_dirs(list(val_case_dirs)) if val_case_dirs else []
    described = bool(cfg.training_data)
    if not described:
        parents = sorted({str(d.resolve().parent) for d in dirs})
        cfg.training_data = (
            f"{len(dirs)} case(s) in {', '.join(parents[:3])}{' ...' if len(parents) > 3 else ''}: "
            f"{', '.join(d.name for d in dirs[:5])}{' ...' if len(dirs) > 5 else ''}"
        )
    cases = load_training_cases(
        dirs + val_dirs, labels=cfg.labels, prep=cfg.preprocess, progress=progress, cache_dir=cache_dir
    )
    if val_dirs:
        train_cases, val_cases = cases[: len(dirs)], cases[len(dirs) :]
    else:
        train_cases, val_cases = split_cases(cases, cfg.val_fraction)
    if not described:
        held = ", ".join(c.name for c in val_cases[:5]) + (" ..." if len(val_cases) > 5 else "")
        cfg.training_data += f"; validation on {held or 'the training cases (too few to hold any out)'}"
    cfg.train_spacing_mm = training_spacing(cases)
    if cfg.rotate_cases:  # augmentation: the in-plane view brain-segment's test-time augmentation adds
        train_cases = train_cases + [case.rotated() for case in train_cases]
    log.info(
        "%d training case(s); validation on %s",
        len(train_cases),
        ", ".join(c.name for c in val_cases) if val_cases else "the training case (no held-out case)",
    )
    final = out_dir / "best.safetensors"
    results: dict[str, dict[str, Any]] = {}
    history: list[dict[str, Any]] = []
    restart, warned, cut = False, False, []
    epochs_left = remaining_epochs(out_dir, stages, cfg, resume=resume)
    slimmed: dict[str, Any] = {}
    for index, stage in enumerate(stages):
        sdir = out_dir / stage.name
        pcfg = phase_config(cfg, stage)
        if stage.prune is not None:  # the pruned net is this stage's and every later stage's
            assert stage.init is not None
            pruned_cfg, slimmed = prune_stage_weights(stage.init, out_dir / PRUNED, stage.prune)
            stage.init = out_dir / PRUNED
            for later in stages[index:]:
                later.net = pruned_cfg
        has_state = (sdir / STATE).is_file() and (sdir / LAST).is_file()
        done = resume and not restart and has_state and len(_history(sdir)) >= pcfg.epochs
        if done:
            log.info("%s: already trained (%d epoch(s)), kept", stage.name, len(_history(sdir)))
            stage_result = _result_from_disk(sdir, *SELECT_MODES[cfg.select])
        else:
            cont = resume and not restart and has_state
            if cont:
                _check_resumable(sdir, stage)
            else:
                shutil.rmtree(sdir, ignore_errors=True)
            restart = True
            remaining = stage_budget(stages, cfg, epochs_left, index, time.perf_counter() - t_start)
            log.info(
                "training %s (%s, phase %d)%s",
                stage.name,
                stage.net.arch,
                stage.phase,
                "" if remaining is None else f", {remaining:.2f} minute(s) of the budget",
            )
            task = BrainTask(stage, cfg, train_cases, val_cases, device=str(dev))
            task.validation_warned = warned  # the trainer says "no held-out validation" once per run
            if index:  # the phases before it are saved: a plain rerun would be refused (exit 3)
                task.rerun_hint = (
                    f"{', '.join(s.name for s in stages[:index])} {'is' if index == 1 else 'are'} kept: "
                    f"rerun with --resume to train {stage.name} again"
                )
            warned = True
            res = fit(
                task,
                sdir,
                TrainConfig(
                    epochs=pcfg.epochs,
                    seed=cfg.seed + 1000 * index,
                    max_minutes=remaining,
                    grad_clip=cfg.clip_grad,
                    amp=cfg.amp,
                    slim=stage.slim,
                ),
                device=str(dev),
                resume=cont,
                progress=progress,
            )
            stage_result = {k: getattr(res, k) for k in STAGE_KEYS}
            stage_result["history"] = res.history
            if res.stopped != "completed":  # shortened, not abandoned: the next stages start from its best
                cut.append(stage.name)
                log.warning(
                    "%s: its share of the time budget is spent after %d of %d epoch(s); going on with its "
                    "best weights (--resume continues it later)",
                    stage.name,
                    len(res.history),
                    pcfg.epochs,
                )
        results[stage.name] = stage_result
        history += [{"stage": stage.name, **rec} for rec in stage_result["history"]]
    last = results[list(results)[-1]]
    if restart or not final.is_file():
        with atomic_path(final) as tmp:
            shutil.copyfile(last["best_weights"], tmp)
        log.info("wrote %s%s", final, f" (budget shortened {', '.join(cut)})" if cut else "")
    return TrainResult(
        out_dir=str(out_dir),
        best_weights=str(final),
        last_weights=last.get("last_weights", ""),
        metric=SELECT_MODES[cfg.select][0],
        best_metric=float(last.get("best_metric") if last.get("best_metric") is not None else float("nan")),
        best_epoch=int(last.get("best_epoch", 0)),
        epochs=len(history),
        stopped="time budget" if cut else "completed",
        device=str(dev),
        seconds=round(time.perf_counter() - t_start, 3),
        validated_on="held-out data" if val_cases else "training data",
        history=history,
        extra={
            "arch": cfg.net.arch,
            "stages": {k: {kk: vv for kk, vv in v.items() if kk != "history"} for k, v in results.items()},
            "training_cases": [c.name for c in train_cases],
            "validation_cases": [c.name for c in val_cases],
            "budget_shortened": cut,
            **({"slim": {k: v for k, v in slimmed.items() if k != "config"}} if slimmed else {}),
        },
    )


def _result_from_disk(d: Path, metric: str = METRIC, mode: str = "min") -> dict[str, Any]:
    """A completed phase's summary from its files (resume keeps completed phases)."""
    from medseg.brain.selection import best_epoch

    history = _history(d)
    best, epoch = best_epoch(history, metric, mode)
    return {
        "best_weights": str(d / "best.safetensors"),
        "last_weights": str(d / "last.safetensors"),
        "best_metric": best,
        "best_epoch": epoch,
        "epochs": len(history),
        "stopped": "completed",
        "history": history,
    }
