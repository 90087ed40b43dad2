"""Two-phase training of the Havaei networks, cascades in two stages, with checkpoints and resume.

* Phase 1: the whole network (for a cascade: the second stage) on class-balanced patches,
  SGD with momentum, dropout, L1 + L2 penalties, early stopping on a held-out balanced set.
* Phase 2: only the output layer, on patches from the natural class distribution, so the
  softmax learns the real (98 % healthy) priors again.
* Cascades: a TwoPathCNN is trained first (both phases) or loaded (``first_weights``), frozen, and
  its maps are precomputed fully convolutionally; then the second stage is trained.

Every epoch writes ``train_state.pt`` (weights, optimizer, history; ``weights_only`` loadable)
so ``resume=True`` continues where a run stopped; the result is a self-describing safetensors file.
"""

from __future__ import annotations

import copy
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from medseg.brain.io import find_case_files, load_case, load_seg
from medseg.brain.models import BrainNetConfig, build_model, is_cascade, output_layer
from medseg.brain.preprocess import PreprocessConfig, preprocess
from medseg.brain.sampling import TrainingCase, sample_batch
from medseg.brain.segment import MODEL_PREFIX, TASK
from medseg.errors import InputError, ModelError

log = logging.getLogger("medseg.brain")


@dataclass
class PhaseConfig:
    epochs: int = 5
    steps_per_epoch: int = 30
    lr: float = 0.003
    patience: int = 3  # early stopping: epochs without validation improvement


@dataclass
class TrainConfig:
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
    seed: int = 0
    labels: str = "brats2021"
    training_data: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def load_training_cases(case_dirs: list[Path], *, labels: str, prep: PreprocessConfig) -> list[TrainingCase]:
    """Read, preprocess and pad every training case once."""
    cases = []
    for d in case_dirs:
        files = find_case_files(d)
        stack, geo = load_case(files)
        seg = load_seg(files, geo, labels=labels)
        norm, mask = preprocess(stack, geo.spacing, prep)
        cases.append(TrainingCase.build(files.name, norm, seg, mask))
    if not cases:
        raise InputError("no training cases")
    return cases


def _penalty(model, l1: float):
    import torch

    if l1 <= 0:
        return 0.0
    return l1 * sum(p.abs().sum() for p in model.parameters() if p.requires_grad and p.dim() > 1) + torch.zeros(())


def _forward(model, x, p):
    return (model.combine(x, p) if p is not None else model(x))[:, :, 0, 0]


def _val_loss(model, val, device) -> float:
    import torch

    x, p, y = val
    model.eval()
    with torch.inference_mode():
        losses = []
        for s in range(0, len(y), 512):
            pp = torch.from_numpy(p[s:s + 512]).to(device) if p is not None else None
            logits = _forward(model, torch.from_numpy(x[s:s + 512]).to(device), pp)
            losses.append(torch.nn.functional.cross_entropy(logits, torch.from_numpy(y[s:s + 512]).to(device),
                                                            reduction="sum").item())
    model.train()
    return float(sum(losses) / len(y))


def run_phase(model, cases: list[TrainingCase], *, phase: int, cfg: TrainConfig, device, state: dict,
              state_path: Path | None, probs_size: int | None) -> None:
    """Train one phase (1 balanced, all trainable layers; 2 natural, output layer only)."""
    import torch

    pcfg = cfg.phase1 if phase == 1 else cfg.phase2
    trainable = [p for p in model.parameters() if p.requires_grad]
    if phase == 2:
        for p in model.parameters():
            p.requires_grad_(False)
        trainable = list(output_layer(model).parameters())
        for p in trainable:
            p.requires_grad_(True)
    opt = torch.optim.SGD(trainable, lr=pcfg.lr, momentum=cfg.momentum, weight_decay=cfg.l2)
    key = f"phase{phase}"
    rec = state.setdefault(key, {"epoch": 0, "best": float("inf"), "bad": 0, "history": [], "done": False})
    if rec["done"]:
        return
    if rec["epoch"] and "optimizer" in state:
        opt.load_state_dict(state["optimizer"])
    val = sample_batch(cases, cfg.val_patches, np.random.default_rng(cfg.seed + 10_000 * phase),
                       balanced=(phase == 1), probs_size=probs_size)
    best_state = state.get("best_model") or copy.deepcopy(model.state_dict())
    model.train()
    while rec["epoch"] < pcfg.epochs:
        rng = np.random.default_rng(cfg.seed + 1000 * phase + rec["epoch"])
        t0, total = time.perf_counter(), 0.0
        for g in opt.param_groups:  # step decay of the learning rate
            g["lr"] = pcfg.lr * (0.5 ** (rec["epoch"] // 3))
        for _ in range(pcfg.steps_per_epoch):
            x, p, y = sample_batch(cases, cfg.batch_size, rng, balanced=(phase == 1), probs_size=probs_size)
            pp = torch.from_numpy(p).to(device) if p is not None else None
            logits = _forward(model, torch.from_numpy(x).to(device), pp)
            loss = torch.nn.functional.cross_entropy(logits, torch.from_numpy(y).to(device))
            loss = loss + _penalty(model, cfg.l1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable, cfg.clip_grad)
            opt.step()
            total += loss.item()
        vloss = _val_loss(model, val, device)
        rec["epoch"] += 1
        rec["history"].append({"epoch": rec["epoch"], "train_loss": total / pcfg.steps_per_epoch, "val_loss": vloss,
                               "seconds": round(time.perf_counter() - t0, 2)})
        log.info("phase %d epoch %d: train %.4f, val %.4f (%.1f s)", phase, rec["epoch"],
                 total / pcfg.steps_per_epoch, vloss, time.perf_counter() - t0)
        if vloss < rec["best"] - 1e-4:
            rec["best"], rec["bad"] = vloss, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            rec["bad"] += 1
        state["best_model"] = best_state
        state["optimizer"] = opt.state_dict()
        state["model"] = model.state_dict()
        if rec["bad"] >= pcfg.patience:
            log.info("phase %d: early stop after %d epochs without improvement", phase, rec["bad"])
            break
        if state_path is not None:
            from medseg.engine.checkpoint import save_training_state

            save_training_state(state_path, state)
    model.load_state_dict(best_state)
    rec["done"] = True
    state["model"] = model.state_dict()
    state.pop("optimizer", None)
    state.pop("best_model", None)
    if state_path is not None:
        from medseg.engine.checkpoint import save_training_state

        save_training_state(state_path, state)


def train_twopath_stages(model, cases, cfg: TrainConfig, *, device, state: dict, state_path: Path | None) -> None:
    """Both phases for a TwoPathCNN or a cascade's second stage (first stage already frozen)."""
    probs_size = None
    if is_cascade(model):
        model.freeze_first()
        for c in cases:
            c.set_first_stage(model.first, cfg.net.arch, device=device)
        probs_size = model.probs_size
    for phase in (1, 2):
        run_phase(model, cases, phase=phase, cfg=cfg, device=device, state=state, state_path=state_path,
                  probs_size=probs_size)


def _meta(cfg: TrainConfig, arch: str, metrics: dict):
    from medseg.engine.checkpoint import CheckpointMeta

    net = asdict(cfg.net)
    net["arch"] = arch
    return CheckpointMeta(model=MODEL_PREFIX + arch, task=TASK, config={"net": net, "preprocess": asdict(cfg.preprocess),
                                                                       "train": cfg.to_dict()},
                          training_data=cfg.training_data, normalisation={"per_channel": "z-score inside brain"},
                          metrics=metrics,
                          notes="Havaei et al. 2017 architecture; labels: Havaei order (0 healthy, 1 necrosis, "
                                "2 edema, 3 non-enhancing, 4 enhancing)")


def train(case_dirs: list[Path], out_dir: Path, cfg: TrainConfig, *, first_weights: Path | None = None,
          device: str = "auto", resume: bool = False, overwrite: bool = False) -> dict:
    """Train ``cfg.net.arch`` on case folders; writes ``<out_dir>/brain_<arch>.safetensors``."""
    import torch

    from medseg.engine.checkpoint import load_training_state, load_weights, save_weights
    from medseg.engine.runtime import seed_everything, select_device
    from medseg.io.atomic import check_output, write_text

    out_dir = Path(out_dir)
    arch = cfg.net.arch
    final = out_dir / f"brain_{arch.replace('-', '_')}.safetensors"
    if not resume:
        check_output(final, overwrite=overwrite)
    out_dir.mkdir(parents=True, exist_ok=True)
    dev = select_device(device)
    seed_everything(cfg.seed)
    t0 = time.perf_counter()
    cases = load_training_cases(case_dirs, labels=cfg.labels, prep=cfg.preprocess)
    log.info("loaded %d training case(s) in %.1f s", len(cases), time.perf_counter() - t0)
    model = build_model(config=cfg.net).to(dev)
    state_path = out_dir / "train_state.pt"
    state: dict = load_training_state(state_path) if resume and state_path.exists() else {}
    if state and state.get("arch") != arch:
        raise ModelError(f"training state is for {state.get('arch')!r}, not {arch!r}", path=state_path)
    state["arch"] = arch
    if is_cascade(model):
        if "first" in state:
            model.first.load_state_dict(state["first"])
        elif first_weights is not None:
            fstate, fmeta = load_weights(first_weights, expect_model=MODEL_PREFIX + "twopath")
            try:
                model.first.load_state_dict(fstate)
            except RuntimeError as exc:
                raise ModelError(f"first-stage weights do not fit: {str(exc).splitlines()[0]}",
                                 path=first_weights) from None
        else:
            log.info("training the first stage (TwoPathCNN) of the cascade")
            first_state: dict = state.setdefault("first_stage_state", {"arch": "twopath"})
            train_twopath_stages(model.first, cases, cfg, device=dev, state=first_state, state_path=None)
        state["first"] = model.first.state_dict()
        state.pop("first_stage_state", None)
    if "model" in state and (state.get("phase1") or {}).get("epoch"):
        model.load_state_dict(state["model"])
    train_twopath_stages(model, cases, cfg, device=dev, state=state, state_path=state_path)
    history = {k: state[k]["history"] for k in ("phase1", "phase2") if k in state}
    metrics = {"val_loss_phase1": state["phase1"]["best"], "val_loss_phase2": state["phase2"]["best"]}
    save_weights(final, model.state_dict(), _meta(cfg, arch, metrics))
    seconds = round(time.perf_counter() - t0, 1)
    write_text(out_dir / f"brain_{arch.replace('-', '_')}_train.json",
               json.dumps({"config": cfg.to_dict(), "history": history, "seconds": seconds,
                           "cases": [c.name for c in cases]}, indent=2, default=str) + "\n")
    log.info("wrote %s (%.0f s)", final, seconds)
    torch.set_grad_enabled(True)
    return {"weights": str(final), "arch": arch, "history": history, "seconds": seconds, "metrics": metrics}
