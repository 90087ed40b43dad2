"""``medseg ct-train``: train one kernel-direction converter on paired series (Lee et al. 2019).

Whole-slice training with L2 loss, Adam (lr 1e-4, weight decay 1e-6) and step decay x0.1;
split by exam (6/2/2 by default), validation RMSE in HU on the held-out exams every epoch. The
loop is the engine's (:func:`medseg.engine.trainer.fit`): ``best.safetensors`` (lowest validation
RMSE), ``last.safetensors``, ``state.pt``, ``history.json``, ``train_config.json`` (with the
split) in the run folder, which is itself a models folder (``--models-dir run/``). Paired series
are held in memory as int16 HU (about 0.5 MB per 512x512 slice and kernel). Training runs in
fp32 (HU differences of a few units matter; bf16 resolves about 4 HU at -1000 HU) and in
channels_last, like inference.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from medseg.errors import InputError

if TYPE_CHECKING:
    import torch

    from medseg.engine.checkpoint import CheckpointMeta
    from medseg.engine.trainer import TrainResult

log = logging.getLogger("medseg.ct")

METRIC = "val_rmse_hu"


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
    max_minutes: float | None = None  # time budget (the trainer stops after the step that exceeds it)
    training_data: str = ""  # free-text description stored in the weights
    extra: dict = field(default_factory=dict)  # notes stored in the weights


def _to_int16(volume: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(volume), -32768, 32767).astype(np.int16)


def load_pairs(exams, source: str, target: str, *, progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Stack the (source, target) series of ``exams`` as int16 HU slices; InputError on a missing/odd pair."""
    from medseg.engine.progress import progress_bar

    xs, ys = [], []
    for exam in progress_bar(exams, total=len(exams), desc="loading", enabled=progress, unit="exam"):
        missing = [k for k in (source, target) if k not in exam.series]
        if missing:
            raise InputError(f"no {' or '.join(missing)} series", path=exam.path)
        x, _ = exam.series[source].load()
        y, _ = exam.series[target].load()
        if x.shape != y.shape:
            raise InputError(
                f"the {source} series ({x.shape[0]} slices of {x.shape[1]}x{x.shape[2]}) and the "
                f"{target} series ({y.shape[0]} slices of {y.shape[1]}x{y.shape[2]}) differ in shape",
                path=exam.path,
            )
        xs.append(_to_int16(x))
        ys.append(_to_int16(y))
    if not xs:
        return np.zeros((0, 1, 1), np.int16), np.zeros((0, 1, 1), np.int16)
    shapes = {a.shape[1:] for a in xs}
    if len(shapes) > 1:
        sizes = ", ".join(f"{h}x{w}" for h, w in sorted(shapes))
        raise InputError(f"exams have different slice sizes ({sizes}); train on one matrix size")
    return np.concatenate(xs), np.concatenate(ys)


def rmse_hu(x: np.ndarray, y: np.ndarray) -> float:
    """RMSE in HU between two int16 stacks (float64 sums, slice by slice to bound memory)."""
    if len(x) == 0:
        return float("nan")
    sq = sum(float(np.sum((a.astype(np.float64) - b) ** 2)) for a, b in zip(x, y))
    return float(np.sqrt(sq / x.size))


class CTTrainTask:
    """The CT converter as a :class:`medseg.engine.trainer.TrainTask`."""

    metric = METRIC
    mode = "min"

    def __init__(
        self,
        cfg: CTTrainConfig,
        net_config,
        train_xy: tuple[np.ndarray, np.ndarray],
        val_xy: tuple[np.ndarray, np.ndarray] | None,
        *,
        split: dict[str, list[str]],
        training_data: str,
    ) -> None:
        self.cfg, self.net_config = cfg, net_config
        self.x_tr, self.y_tr = train_xy
        self.has_validation = val_xy is not None
        self.x_va, self.y_va = val_xy if val_xy is not None else train_xy
        self.split, self.training_data = split, training_data
        self.input_rmse_hu = rmse_hu(self.x_va, self.y_va)  # what doing nothing scores

    def build_model(self) -> torch.nn.Module:
        import torch

        from medseg.ct.model import build_kernel_net

        return build_kernel_net(config=self.net_config).to(memory_format=torch.channels_last)

    def build_optimizer(self, model: torch.nn.Module) -> torch.optim.Optimizer:
        import torch

        return torch.optim.Adam(model.parameters(), lr=self.cfg.lr, weight_decay=self.cfg.weight_decay)

    def build_scheduler(self, optimizer: torch.optim.Optimizer) -> Any:
        import torch

        return torch.optim.lr_scheduler.StepLR(
            optimizer, step_size=self.cfg.lr_step_epochs, gamma=self.cfg.lr_gamma
        )

    def train_batches(self, epoch: int, rng: np.random.Generator) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """``steps_per_epoch`` random batches (default: one pass), each slice cropped at one random offset."""
        n, (h, w) = len(self.x_tr), self.x_tr.shape[1:]
        steps = self.cfg.steps_per_epoch or max(1, n // self.cfg.batch_size)
        crop = min(self.cfg.crop or max(h, w), h, w)
        for _ in range(steps):
            idx = rng.integers(0, n, self.cfg.batch_size)
            oy, ox = rng.integers(0, h - crop + 1), rng.integers(0, w - crop + 1)
            yield (
                self.x_tr[idx, None, oy : oy + crop, ox : ox + crop],
                self.y_tr[idx, None, oy : oy + crop, ox : ox + crop],
            )

    def train_step(
        self, model: torch.nn.Module, batch: tuple[np.ndarray, np.ndarray], device: torch.device
    ) -> torch.Tensor:
        import torch

        x, y = (
            torch.from_numpy(a).to(device, torch.float32).contiguous(memory_format=torch.channels_last)
            for a in batch
        )
        # L2 loss on the residual, in units of hu_scale (same optimum as on HU, well-conditioned for Adam)
        return torch.mean(((model(x) - y) / self.net_config.hu_scale) ** 2)

    def validate(self, model: torch.nn.Module, device: torch.device) -> dict[str, float]:
        """RMSE (HU) of the converted validation slices vs their target kernel, through the engine Predictor."""
        from medseg.ct.models import slice_predictor

        predictor = slice_predictor(model, device=str(device), amp="off")
        sq, bs = 0.0, self.cfg.batch_size
        for i in range(0, len(self.x_va), bs):
            out = predictor(self.x_va[i : i + bs, None].astype(np.float32))
            sq += float(np.sum((out.astype(np.float64) - self.y_va[i : i + bs]) ** 2))
        return {METRIC: float(np.sqrt(sq / self.y_va.size)) if self.y_va.size else float("nan")}

    def weights_meta(self, metrics: dict[str, float], epoch: int) -> CheckpointMeta:
        from medseg.ct.model import MODEL_NAME
        from medseg.engine.checkpoint import CheckpointMeta

        nc = self.net_config
        return CheckpointMeta(
            model=MODEL_NAME,
            task=f"{nc.source_kernel}->{nc.target_kernel}",
            config=nc.to_dict(),
            training_data=self.training_data,
            normalisation={"hu_mean": nc.hu_mean, "hu_scale": nc.hu_scale, "input": "raw HU"},
            metrics={
                **metrics,
                "input_rmse_hu": self.input_rmse_hu,
                "epoch": epoch,
                "validated_on": "held-out exams" if self.has_validation else "training exams",
            },
            notes=json.dumps(self.cfg.extra) if self.cfg.extra else "",
        )

    def config_dict(self) -> dict[str, Any]:
        return {"ct": asdict(self.cfg), "model": self.net_config.to_dict(), "split": self.split}


def _resumed_net_config(out_dir: Path, source: str, target: str):
    """The model config of the run being resumed (its hu_mean came from that run's training data)."""
    from medseg.ct.model import KernelNetConfig
    from medseg.engine.checkpoint import read_meta
    from medseg.engine.trainer import LAST

    meta = read_meta(out_dir / LAST)
    have = (meta.config.get("source_kernel"), meta.config.get("target_kernel"))
    if have != (source, target):
        raise InputError(
            f"--resume: this run trains {have[0]}->{have[1]}, not {source}->{target}", path=out_dir
        )
    return KernelNetConfig.from_dict(meta.config)


def train(
    pairs: list[str | Path],
    out_dir: str | Path,
    config: CTTrainConfig,
    *,
    device: str = "auto",
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = False,
) -> TrainResult:
    """Train one direction on paired exams, validate on held-out exams each epoch, keep the best weights."""
    from medseg.ct.cohort import discover_exams, split_exams
    from medseg.ct.model import KernelNetConfig
    from medseg.ct.models import canonical_kernel
    from medseg.engine.trainer import TrainConfig, fit, preflight

    cfg = config
    source, target = canonical_kernel(cfg.source_kernel), canonical_kernel(cfg.target_kernel)
    if source == target:
        raise InputError(f"--from and --to are both {source}: nothing to learn")
    cfg.source_kernel, cfg.target_kernel = source, target
    out_dir = preflight(out_dir, resume=resume, overwrite=overwrite)  # before loading any data
    net_config = _resumed_net_config(out_dir, source, target) if resume else None
    exams = discover_exams(list(pairs))
    split = split_exams(exams, tuple(cfg.split), cfg.seed)
    train_xy = load_pairs(split["train"], source, target, progress=progress)
    val_xy = load_pairs(split["val"], source, target, progress=progress) if split["val"] else None
    if len(train_xy[0]) == 0:
        raise InputError("no training slices found", path=pairs[0])
    if net_config is None:
        net_config = KernelNetConfig(
            source, target, cfg.channels, cfg.depth, hu_mean=float(train_xy[0].mean()), hu_scale=1000.0
        )
    names = {part: [e.name for e in part_exams] for part, part_exams in split.items()}
    task = CTTrainTask(
        cfg,
        net_config,
        train_xy,
        val_xy,
        split=names,
        training_data=cfg.training_data or f"{len(split['train'])} exam(s) from {', '.join(map(str, pairs))}",
    )
    result = fit(
        task,
        out_dir,
        TrainConfig(epochs=cfg.epochs, seed=cfg.seed, max_minutes=cfg.max_minutes, amp="off"),
        device=device,
        resume=resume,
        overwrite=overwrite,
        progress=progress,
    )
    result.extra.update(
        {
            "source_kernel": source,
            "target_kernel": target,
            "input_rmse_hu": task.input_rmse_hu,
            "split": names,
        }
    )
    return result


def train_text(result: TrainResult) -> str:
    """What ct-train prints for people."""
    e = result.extra
    best = "n/a" if result.best_metric != result.best_metric else f"{result.best_metric:.2f} HU"
    return (
        f"{e.get('source_kernel')}->{e.get('target_kernel')}: best validation RMSE {best} at epoch "
        f"{result.best_epoch} of {result.epochs} (unconverted input: {e.get('input_rmse_hu', float('nan')):.2f} HU; "
        f"validated on {result.validated_on}; {result.stopped}) -> {result.best_weights}"
    )
