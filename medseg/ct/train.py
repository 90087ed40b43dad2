"""``medseg ct-train``: train one kernel-direction converter on paired series (Lee et al. 2019).

Whole-slice training with L2 loss, Adam (lr 1e-4, weight decay 1e-6) and step decay x0.1;
split by exam (6/2/2 by default), validation RMSE in HU every epoch, resumable. Paired series
are held in memory as int16 HU (about 0.5 MB per 512x512 slice and kernel).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from medseg.errors import InputError, OutputExistsError

log = logging.getLogger("medseg.ct")


@dataclass
class CTTrainConfig:
    source_kernel: str = "B50f"
    target_kernel: str = "B30f"
    epochs: int = 30
    batch_size: int = 4
    lr: float = 1e-4
    weight_decay: float = 1e-6
    lr_step_epochs: int = 20  # multiply lr by lr_gamma every this many epochs
    lr_gamma: float = 0.1
    split: tuple[float, float, float] = (0.6, 0.2, 0.2)
    seed: int = 0
    crop: int | None = None  # random square crops instead of whole slices (faster on CPU)
    steps_per_epoch: int | None = None  # default: one pass over the training slices
    channels: int = 64
    depth: int = 6
    training_data: str = ""  # free-text description stored in the weights
    extra: dict = field(default_factory=dict)


def _load_pairs(exams, source: str, target: str) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for exam in exams:
        missing = [k for k in (source, target) if k not in exam.series]
        if missing:
            raise InputError(f"no {' or '.join(missing)} series", path=exam.path)
        x, _ = exam.series[source].load()
        y, _ = exam.series[target].load()
        if x.shape != y.shape:
            raise InputError(f"{source} {x.shape} and {target} {y.shape} series differ in shape", path=exam.path)
        xs.append(np.clip(np.rint(x), -32768, 32767).astype(np.int16))
        ys.append(np.clip(np.rint(y), -32768, 32767).astype(np.int16))
    if not xs:
        return np.zeros((0, 1, 1), np.int16), np.zeros((0, 1, 1), np.int16)
    shapes = {a.shape[1:] for a in xs}
    if len(shapes) > 1:
        raise InputError(f"exams have different slice sizes {sorted(shapes)}; train on one matrix size")
    return np.concatenate(xs), np.concatenate(ys)


def _val_rmse(net, x: np.ndarray, y: np.ndarray, device, batch_size: int) -> float:
    import torch

    if len(x) == 0:
        return float("nan")
    sq, count = 0.0, 0
    net.eval()
    with torch.inference_mode():
        for i in range(0, len(x), batch_size):
            xb = torch.from_numpy(x[i:i + batch_size, None].astype(np.float32)).to(device)
            yb = torch.from_numpy(y[i:i + batch_size, None].astype(np.float32)).to(device)
            sq += float(((net(xb) - yb) ** 2).sum())
            count += yb.numel()
    net.train()
    return float(np.sqrt(sq / count))


def train(pairs: list[str | Path], out_dir: str | Path, config: CTTrainConfig, *, device: str = "auto",
          resume: bool = False, overwrite: bool = False, progress: bool = False) -> dict:
    """Train, validate each epoch, keep the best weights (lowest validation RMSE)."""
    import torch

    from medseg.ct.cohort import discover_exams, split_exams
    from medseg.ct.model import MODEL_NAME, KernelNetConfig, build_kernel_net
    from medseg.ct.models import canonical_kernel
    from medseg.engine.checkpoint import (
        CheckpointMeta,
        load_training_state,
        save_training_state,
        save_weights,
    )
    from medseg.engine.progress import progress as progress_bar
    from medseg.engine.runtime import seed_everything, select_device
    from medseg.io.atomic import write_text

    cfg = config
    cfg.source_kernel, cfg.target_kernel = canonical_kernel(cfg.source_kernel), canonical_kernel(cfg.target_kernel)
    out_dir = Path(out_dir)
    state_path = out_dir / "last_state.pt"
    weights_path = out_dir / f"{cfg.source_kernel}_to_{cfg.target_kernel}.safetensors"
    if not resume and weights_path.exists() and not overwrite:
        raise OutputExistsError("weights exist (use --resume to continue or --overwrite)", path=weights_path)
    rng = seed_everything(cfg.seed)
    dev = select_device(device)

    exams = discover_exams(list(pairs))
    split = split_exams(exams, tuple(cfg.split), cfg.seed)
    x_tr, y_tr = _load_pairs(split["train"], cfg.source_kernel, cfg.target_kernel)
    x_va, y_va = _load_pairs(split["val"], cfg.source_kernel, cfg.target_kernel)
    if len(x_tr) == 0:
        raise InputError("no training slices found", path=pairs[0])
    if len(x_va) == 0:
        log.warning("no validation exams (only %d exam(s)); validation RMSE is computed on training data", len(exams))
        x_va, y_va = x_tr, y_tr
    net_cfg = KernelNetConfig(cfg.source_kernel, cfg.target_kernel, cfg.channels, cfg.depth,
                              hu_mean=float(x_tr.mean()), hu_scale=1000.0)
    net = build_kernel_net(config=net_cfg).to(dev)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=cfg.lr_step_epochs, gamma=cfg.lr_gamma)
    history: list[dict] = []
    best = float("inf")
    start_epoch = 0
    if resume and state_path.exists():
        state = load_training_state(state_path)
        net_cfg = KernelNetConfig.from_dict(state["net_config"])
        net = build_kernel_net(config=net_cfg).to(dev)
        net.load_state_dict(state["model"])
        opt = torch.optim.Adam(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        opt.load_state_dict(state["optimizer"])
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=cfg.lr_step_epochs, gamma=cfg.lr_gamma)
        sched.load_state_dict(state["scheduler"])
        start_epoch, best, history = int(state["epoch"]), float(state["best"]), list(state["history"])
        rng = np.random.default_rng(cfg.seed + start_epoch)
        log.info("resuming at epoch %d (best validation RMSE %.2f HU)", start_epoch, best)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_text(out_dir / "train_config.json", json.dumps(asdict(cfg), indent=2))
    write_text(out_dir / "split.json", json.dumps({k: [e.name for e in v] for k, v in split.items()}, indent=2))

    n = len(x_tr)
    steps = cfg.steps_per_epoch or max(1, n // cfg.batch_size)
    h, w = x_tr.shape[1:]
    crop = min(cfg.crop or max(h, w), h, w)
    net.train()
    for epoch in range(start_epoch, cfg.epochs):
        t0, losses = time.perf_counter(), []
        for _ in progress_bar(range(steps), total=steps, desc=f"epoch {epoch + 1}/{cfg.epochs}", enabled=progress):
            idx = rng.integers(0, n, cfg.batch_size)
            oy, ox = rng.integers(0, h - crop + 1), rng.integers(0, w - crop + 1)
            xb = torch.from_numpy(x_tr[idx, None, oy:oy + crop, ox:ox + crop].astype(np.float32)).to(dev)
            yb = torch.from_numpy(y_tr[idx, None, oy:oy + crop, ox:ox + crop].astype(np.float32)).to(dev)
            # L2 loss on the residual, in units of hu_scale (same optimum as on HU)
            loss = torch.mean(((net(xb) - yb) / net_cfg.hu_scale) ** 2)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
        sched.step()
        val = _val_rmse(net, x_va, y_va, dev, cfg.batch_size)
        history.append({"epoch": epoch + 1, "train_rmse_hu": float(np.sqrt(np.mean(losses))) * net_cfg.hu_scale,
                        "val_rmse_hu": val, "lr": opt.param_groups[0]["lr"], "seconds": time.perf_counter() - t0})
        log.info("epoch %d: train RMSE %.2f HU, validation RMSE %.2f HU", epoch + 1,
                 history[-1]["train_rmse_hu"], val)
        if val < best:
            best = val
            meta = CheckpointMeta(
                model=MODEL_NAME, task=f"{cfg.source_kernel}->{cfg.target_kernel}", config=net_cfg.to_dict(),
                training_data=cfg.training_data or f"{len(split['train'])} exam(s) from {', '.join(map(str, pairs))}",
                normalisation={"hu_mean": net_cfg.hu_mean, "hu_scale": net_cfg.hu_scale, "input": "raw HU"},
                metrics={"val_rmse_hu": val, "epoch": epoch + 1}, notes=json.dumps(cfg.extra) if cfg.extra else "")
            save_weights(weights_path, net.state_dict(), meta)
        save_training_state(state_path, {
            "model": net.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
            "epoch": epoch + 1, "best": best, "history": history, "net_config": net_cfg.to_dict()})
        write_text(out_dir / "history.json", json.dumps(history, indent=2))
    return {"weights": str(weights_path), "best_val_rmse_hu": best, "epochs": len(history),
            "split": {k: [e.name for e in v] for k, v in split.items()}, "history": history}
