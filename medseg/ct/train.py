"""``medseg ct-train``: train one kernel-direction converter on paired series (Lee et al. 2019).

Series are paired by acquisition (:func:`medseg.ct.cohort.find_pairs`: FrameOfReferenceUID and
slice position, any folder layout). Whole-slice (or cropped) training with L2 loss, Adam (lr 1e-4,
weight decay 1e-6) and step decay x0.1. Split by exam from 3 exams on (6/2/2 by default), else by
contiguous slabs along z with a gap between them (one scan reconstructed twice is the usual case);
validation RMSE in HU every epoch, and at the end the held-out test RMSE before/after conversion
with the best weights. The loop is the engine's (:func:`medseg.engine.trainer.fit`):
``best.safetensors`` (lowest validation RMSE), ``last.safetensors``, ``state.pt``,
``history.json``, ``train_config.json`` (with the split) in the run folder, which is itself a
models folder (``--models-dir run/``). Paired slices are held in memory as int16 HU (about 0.5 MB
per 512x512 slice and kernel). Training runs in fp32 (HU differences of a few units matter; bf16
resolves about 4 HU at -1000 HU) and in channels_last, like inference.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from medseg.ct.budget import budget_summary, budget_text
from medseg.ct.metrics import AIR_HU, PADDING_MAX_HU
from medseg.ct.split import (  # noqa: F401 - re-exported: the split belongs to ct-train
    EXAM_SPLIT_MIN,
    SLAB_GAP_MIN_SLICES,
    SLAB_GAP_MM,
    slab_split,
    split_slices,
)
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
    epochs: int | None = None  # None: 30, or fitted to max_minutes (medseg.ct.budget)
    batch_size: int = 4
    lr: float | None = None  # None: 1e-4 (step schedule), or a one-cycle peak of 1e-3
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
    init: str = "scratch"  # "demo" (nearest shipped direction; ct-train's default), "scratch" or a file
    schedule: str = "auto"  # "onecycle" (auto with max_minutes), "step" (auto without)
    augment: bool | None = None  # random 90-degree turns and flips of each crop; None: on with max_minutes
    extra: dict = field(default_factory=dict)  # notes stored in the weights


def turn_and_mirror(x: np.ndarray, y: np.ndarray, k: int, flip: bool) -> tuple[np.ndarray, np.ndarray]:
    """A source/target pair turned by ``k`` x 90 degrees in its last two axes, then mirrored if ``flip``
    (views, not copies): the CT trainers' one in-plane augmentation."""
    x, y = np.rot90(x, k, axes=(-2, -1)), np.rot90(y, k, axes=(-2, -1))
    return (x[..., ::-1], y[..., ::-1]) if flip else (x, y)


def dihedral(x: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Each (N, 1, H, W) sample pair turned by a random multiple of 90 degrees and maybe mirrored, the
    same for source and target: a kernel's point spread and noise texture are (nearly) isotropic in
    plane, so this multiplies a few training slices eightfold without changing what is learnt."""
    pairs = [
        turn_and_mirror(xi, yi, int(rng.integers(0, 4)), bool(rng.integers(0, 2))) for xi, yi in zip(x, y)
    ]
    return np.ascontiguousarray(np.stack([a for a, _ in pairs])), np.ascontiguousarray(
        np.stack([b for _, b in pairs])
    )


def _to_int16(volume: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(volume), -32768, 32767).astype(np.int16)


def kernel_name(name: str) -> str:
    """A user's kernel name as stored: the canonical spelling when known (b50f -> B50f), else stripped."""
    from medseg.ct.models import canonical_kernel

    text = str(name).strip()
    return canonical_kernel(text, strict=False) or text


@dataclass
class PairedSlices:
    """The matched slices of one source/target pair, in position order, as int16 HU."""

    name: str
    exam_key: str
    x: np.ndarray
    y: np.ndarray
    slice_spacing: float | None  # mm (None when unknown)
    warnings: list[str] = field(default_factory=list)  # what the series reader noticed (tilt, gaps)
    pixel_mm: float | None = None  # in-plane pixel size (for the sharpness fingerprint)


def _load_slices(ref, index: np.ndarray, positions: np.ndarray | None):
    """The matched slices of one series as int16 HU, chosen by position for DICOM (by index for volumes)."""
    from medseg.ct.hu import read_hu_series
    from medseg.io.dicom import open_series

    if positions is None:
        volume, meta = ref.load()
        if index.max(initial=-1) >= len(volume):
            raise InputError(f"has {len(volume)} slices, fewer than its pair", path=ref.path)
        return _to_int16(volume[index]), meta
    series = open_series(ref.path, series_uid=ref.series_uid)
    have = np.asarray(series.positions, dtype=float)
    if len(have) == 0:
        raise InputError("series has no slices", path=ref.path)
    nearest = np.abs(have[None, :] - np.asarray(positions)[:, None]).argmin(axis=1)
    if np.any(np.abs(have[nearest] - positions) > 1e-3):
        raise InputError("slice positions changed since the series was paired", path=ref.path)
    volume, meta = read_hu_series(series)
    return _to_int16(volume[nearest]), meta


def load_pairs(pairs, *, progress: bool = False) -> list[PairedSlices]:
    """Read each pair's matched slices (``medseg.ct.cohort.SlicePair``) as int16 HU; InputError on odd input."""
    from medseg.engine.progress import progress_bar

    out: list[PairedSlices] = []
    for pair in progress_bar(pairs, total=len(pairs), desc="loading", enabled=progress, unit="pair"):
        x, meta_x = _load_slices(pair.source, pair.source_index, pair.positions)
        y, meta_y = _load_slices(pair.target, pair.target_index, pair.target_positions)
        if x.shape[1:] != y.shape[1:]:
            raise InputError(
                f"source {x.shape[1]}x{x.shape[2]} and target {y.shape[1]}x{y.shape[2]} slices differ in size",
                path=pair.source.path,
            )
        spacing = pair.slice_spacing or float(meta_x.spacing[0]) or None
        out.append(
            PairedSlices(
                pair.name,
                pair.exam_key,
                x,
                y,
                spacing,
                [
                    f"{pair.name}: {k} series: {w}"
                    for k, m in (("source", meta_x), ("target", meta_y))
                    for w in m.warnings
                ],
                float(np.sqrt(meta_x.spacing[1] * meta_x.spacing[2])) if len(meta_x.spacing) == 3 else None,
            )
        )
    shapes = {p.x.shape[1:] for p in out}
    if len(shapes) > 1:
        sizes = ", ".join(f"{h}x{w}" for h, w in sorted(shapes))
        raise InputError(f"exams have different slice sizes ({sizes}); train on one matrix size")
    return out


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
        init_path: str | None = None,
        budget: dict[str, Any] | None = None,
    ) -> None:
        self.cfg, self.net_config = cfg, net_config
        self.x_tr, self.y_tr = train_xy
        self.has_validation = val_xy is not None
        self.x_va, self.y_va = val_xy if val_xy is not None else train_xy
        self.split, self.training_data = split, training_data
        self.input_rmse_hu = rmse_hu(self.x_va, self.y_va)  # what doing nothing scores
        self.init_path = init_path  # weights to start from (None: random)
        self.budget = budget  # budget_s, clock_start, test_pixels: fit the schedule's length to it
        self.schedule = None  # the one-cycle schedule (medseg.ct.budget), when used

    def _apply_plan(self, plan) -> None:
        """The budget plan chose a few validation slices: validate (and say 'unconverted') on those."""
        if plan.val_slices and len(plan.val_slices) < len(self.x_va):
            pick = np.asarray(plan.val_slices)
            self.x_va, self.y_va = self.x_va[pick], self.y_va[pick]
            self.input_rmse_hu = rmse_hu(self.x_va, self.y_va)

    def build_model(self) -> torch.nn.Module:
        import torch

        from medseg.ct.model import build_kernel_net

        model = build_kernel_net(config=self.net_config)
        if self.init_path:
            from medseg.engine.checkpoint import load_weights

            model.load_state_dict(load_weights(self.init_path)[0])
        return model.to(memory_format=torch.channels_last)

    def build_optimizer(self, model: torch.nn.Module) -> torch.optim.Optimizer:
        import torch

        return torch.optim.Adam(model.parameters(), lr=self.cfg.lr, weight_decay=self.cfg.weight_decay)

    def build_scheduler(self, optimizer: torch.optim.Optimizer) -> Any:
        import torch

        if self.cfg.schedule == "onecycle":
            from medseg.ct.budget import OneCycleSchedule

            (h, w), crop, b = self.x_tr.shape[1:], self._crop(), self.budget or {}
            self.schedule = OneCycleSchedule(
                optimizer,
                self.cfg.lr,
                epochs=self.cfg.epochs,
                total_steps=None if b else self.cfg.epochs * self._steps(),
                budget_s=b.get("budget_s"),
                clock_start=b.get("clock_start"),
                pixels_per_step=self.cfg.batch_size * crop * crop,
                val_pixels=(len(self.x_va), int(h * w)),  # held-out, or the training slices (warned)
                test_pixels=int(b.get("test_pixels", 0)),
                on_plan=self._apply_plan,
            )
            return self.schedule
        return torch.optim.lr_scheduler.StepLR(
            optimizer, step_size=self.cfg.lr_step_epochs, gamma=self.cfg.lr_gamma
        )

    def train_batches(self, epoch: int, rng: np.random.Generator) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """``steps_per_epoch`` random batches (default: one pass; with a time budget: the epoch's share
        of the planned steps), each slice cropped at one random offset."""
        n, (h, w), crop = len(self.x_tr), self.x_tr.shape[1:], self._crop()
        fitted = self.schedule is not None and self.budget
        steps = 0 if fitted else self._steps()
        while (self.schedule.step_count < self.schedule.epoch_end(epoch)) if fitted else steps > 0:
            steps -= 1
            idx = rng.integers(0, n, self.cfg.batch_size)
            oy, ox = rng.integers(0, h - crop + 1), rng.integers(0, w - crop + 1)
            x = self.x_tr[idx, None, oy : oy + crop, ox : ox + crop]
            y = self.y_tr[idx, None, oy : oy + crop, ox : ox + crop]
            yield dihedral(x, y, rng) if self.cfg.augment else (x, y)

    def _steps(self) -> int:
        return self.cfg.steps_per_epoch or max(1, len(self.x_tr) // self.cfg.batch_size)

    def _crop(self) -> int:
        h, w = self.x_tr.shape[1:]
        return int(min(self.cfg.crop or max(h, w), h, w))

    def train_step(
        self, model: torch.nn.Module, batch: tuple[np.ndarray, np.ndarray], device: torch.device
    ) -> torch.Tensor:
        import torch

        if self.schedule is not None:
            self.schedule.before_step()  # per-batch learning rate (and the budget's step timing)

        x, y = (
            torch.from_numpy(a).to(device, torch.float32).contiguous(memory_format=torch.channels_last)
            for a in batch
        )
        # L2 loss on the residual, in units of hu_scale (same optimum as on HU, well-conditioned for Adam).
        # Out-of-field padding (Toshiba -2048, ...) is fed as air and left out of the loss, as ct-convert
        # keeps it unchanged (medseg.ct.convert.PaddingGuard)
        pad = (x <= PADDING_MAX_HU) | (y <= PADDING_MAX_HU)
        if not bool(pad.any()):
            return torch.mean(((model(x) - y) / self.net_config.hu_scale) ** 2)
        err = (model(torch.where(x <= PADDING_MAX_HU, AIR_HU, x)) - y) / self.net_config.hu_scale
        return torch.sum(err.masked_fill(pad, 0.0) ** 2) / (~pad).sum().clamp(min=1)

    def validate(self, model: torch.nn.Module, device: torch.device) -> dict[str, float]:
        """RMSE (HU) of the converted validation slices vs their target kernel, through the engine Predictor."""
        from medseg.ct.convert import PaddingGuard
        from medseg.ct.models import slice_predictor

        predictor = PaddingGuard(slice_predictor(model, device=str(device), amp="off"))
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
                "validated_on": (
                    f"held-out {'exams' if self.split.get('mode') == 'exams' else 'slabs'}"
                    if self.has_validation
                    else "training data"
                ),
            },
            notes=json.dumps(self.cfg.extra) if self.cfg.extra else "",
        )

    def resume_identity(self) -> dict[str, Any]:
        """What ``--resume`` must share with the run it continues: the exams of each part of the split."""
        return {"split": {k: v for k, v in self.split.items() if k != "description"}}

    def config_dict(self) -> dict[str, Any]:
        return {"ct": asdict(self.cfg), "model": self.net_config.to_dict(), "split": self.split}


def _saved_lr(out_dir: Path) -> float | None:
    """The learning rate the run being resumed was planned with (its train_config.json), if readable."""
    from medseg.engine.trainer import CONFIG

    try:
        lr = json.loads((out_dir / CONFIG).read_text(encoding="utf-8"))["task"]["ct"]["lr"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return float(lr) if isinstance(lr, (int, float)) and lr > 0 else None


def _resumed_net_config(out_dir: Path, source: str, target: str):
    """The model config of the run being resumed (its hu_mean came from that run's training data)."""
    from medseg.ct.model import MODEL_NAME, KernelNetConfig
    from medseg.engine.checkpoint import read_meta_for
    from medseg.engine.trainer import LAST

    meta = read_meta_for(
        out_dir / LAST,
        MODEL_NAME,
        "--resume: the run's last weights are {model} ({task}), not a CT kernel converter: restore the run "
        "folder, or start a new run (another --out, or --overwrite)",
    )
    have = (meta.config.get("source_kernel"), meta.config.get("target_kernel"))
    if have != (source, target):
        raise InputError(
            f"--resume: this run trains {have[0]}->{have[1]}, not {source}->{target}", path=out_dir
        )
    return KernelNetConfig.from_dict(meta.config)


def evaluate_test(
    weights: str | Path, net_config, xy: tuple[np.ndarray, np.ndarray] | None, *, device: str, batch_size: int
) -> dict[str, Any]:
    """Held-out test RMSE (HU) before and after conversion with ``weights``, and the % reduction."""
    if xy is None or len(xy[0]) == 0:
        return {"slices": 0, "note": "no held-out test data (see split)"}
    from medseg.ct.convert import PaddingGuard
    from medseg.ct.model import build_kernel_net
    from medseg.ct.models import slice_predictor
    from medseg.engine.checkpoint import load_weights

    model = build_kernel_net(config=net_config)
    model.load_state_dict(load_weights(weights)[0])
    model.eval()
    # PyTorch, as validation: one pass over a few slices does not repay a conversion (and the budget
    # reserved for the test is measured in PyTorch steps)
    predictor = PaddingGuard(slice_predictor(model, device=device, amp="off", runtime="torch"))
    x, y = xy
    sq = 0.0
    for i in range(0, len(x), batch_size):
        out = predictor(x[i : i + batch_size, None].astype(np.float32))
        sq += float(
            np.sum(
                (np.asarray(out, np.float64).reshape(y[i : i + batch_size].shape) - y[i : i + batch_size])
                ** 2
            )
        )
    before, after = rmse_hu(x, y), float(np.sqrt(sq / y.size))
    return {
        "slices": int(len(x)),
        "rmse_before_hu": before,
        "rmse_after_hu": after,
        "reduction_pct": 100.0 * (before - after) / before if before > 0 else float("nan"),
    }


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
    """Train one direction on paired series (found by acquisition), validate on held-out data, test the best."""
    from medseg.ct.budget import peak_lr, settle_config
    from medseg.ct.cohort import find_pairs, kernel_key
    from medseg.ct.model import KernelNetConfig
    from medseg.ct.train_init import InitChoice, resolve_init
    from medseg.engine.trainer import TrainConfig, fit, preflight

    clock = time.perf_counter()  # a time budget counts from here: loading, training and the test
    if resume and overwrite:
        raise InputError("--resume continues the run in --out and --overwrite replaces it: give one of them")
    cfg = config
    settle_config(cfg)
    source, target = kernel_name(cfg.source_kernel), kernel_name(cfg.target_kernel)
    if kernel_key(source) == kernel_key(target):
        raise InputError(f"--from and --to are both {source}: nothing to learn")
    cfg.source_kernel, cfg.target_kernel = source, target
    init_file = cfg.init if cfg.init not in ("demo", "scratch") and not resume else None
    out_dir = preflight(
        out_dir, resume=resume, overwrite=overwrite, inputs=[*pairs, init_file]
    )  # before loading
    net_config = _resumed_net_config(out_dir, source, target) if resume else None
    found = find_pairs(list(pairs), source, target)
    data = load_pairs(found, progress=progress)
    stacks, split_info = split_slices(data, tuple(cfg.split), cfg.seed)
    if "train" not in stacks:
        raise InputError("no training slices found", path=pairs[0])
    train_xy, val_xy = stacks["train"], stacks.get("val")
    log.info("split %s", split_info["description"])
    choice = InitChoice(None, None, "resumed (the run's last weights)")
    if net_config is None:
        choice = resolve_init(
            cfg.init, source, target, train_xy, data[0].pixel_mm, channels=cfg.channels, depth=cfg.depth
        )
        net = choice.net or {}
        net_config = KernelNetConfig(
            source,
            target,
            int(net.get("channels", cfg.channels)),
            int(net.get("depth", cfg.depth)),
            hu_mean=float(net.get("hu_mean", train_xy[0].mean())),
            hu_scale=float(net.get("hu_scale", 1000.0)),
            manufacturer=_training_vendor(found),
        )
    if cfg.lr is None and resume:  # the run's own peak (its optimiser and schedule carry it on)
        cfg.lr = _saved_lr(out_dir)
    if cfg.lr is None:  # the one-cycle peak: lower when fine-tuning
        cfg.lr = peak_lr(choice.path is not None or resume)
    budget = None
    if cfg.max_minutes and cfg.schedule == "onecycle" and cfg.steps_per_epoch is None:
        test_stack = stacks.get("test")
        budget = {
            "budget_s": cfg.max_minutes * 60.0,
            "clock_start": clock,
            "test_pixels": int(test_stack[0].size) if test_stack is not None else 0,
        }
    exams = list(dict.fromkeys(p.name for p in data))
    task = CTTrainTask(
        cfg,
        net_config,
        train_xy,
        val_xy,
        split=split_info,
        training_data=cfg.training_data
        or f"{len(exams)} exam(s) ({', '.join(exams)}) from {', '.join(str(Path(p).resolve()) for p in pairs)}; split "
        f"{split_info['description']}; started from {choice.description}",
        init_path=choice.path,
        budget=budget,
    )
    left_min = cfg.max_minutes - (time.perf_counter() - clock) / 60 if cfg.max_minutes else None
    result = fit(
        task,
        out_dir,
        TrainConfig(
            epochs=cfg.epochs, seed=cfg.seed, max_minutes=max(left_min, 1e-3) if left_min else None, amp="off"
        ),
        device=device,
        resume=resume,
        overwrite=overwrite,
        progress=progress,
    )
    test = evaluate_test(
        result.best_weights, net_config, stacks.get("test"), device=result.device, batch_size=cfg.batch_size
    )
    test["on"] = "held-out test exams" if split_info["mode"] == "exams" else "held-out test slabs"
    test["weights"] = "best"
    result.extra["init"] = choice.to_dict()
    result.extra["budget"] = budget_summary(cfg, task, result, time.perf_counter() - clock)
    result.extra.update(
        {
            "source_kernel": source,
            "target_kernel": target,
            "pairs": [
                {
                    "exam": p.name,
                    "source": str(f.source.path),
                    "target": str(f.target.path),
                    "slices": len(p.x),
                    "paired_by": f.paired_by,
                    "warnings": p.warnings,
                }
                for p, f in zip(data, found)
            ],
            "warnings": [w for p in data for w in p.warnings],
            "input_rmse_hu": task.input_rmse_hu,
            "split": split_info,
            "test": test,  # last: the summary ends with the held-out result
        }
    )
    return result


def train_text(result: TrainResult) -> str:
    """What ct-train prints for people."""
    e = result.extra
    best = "n/a" if result.best_metric != result.best_metric else f"{result.best_metric:.2f} HU"
    split = e.get("split", {}).get("description", "")
    test = e.get("test", {})
    if test.get("slices"):
        held_out = (
            f"{test['on']} ({test['slices']} slices): RMSE {test['rmse_before_hu']:.2f} HU before, "
            f"{test['rmse_after_hu']:.2f} HU after conversion ({test['reduction_pct']:.1f} % reduction)"
        )
    else:
        held_out = "no held-out test data"
    return (
        f"{e.get('source_kernel')}->{e.get('target_kernel')}: split {split}\n"
        f"best validation RMSE {best} at epoch {result.best_epoch} of {result.epochs} (unconverted input: "
        f"{e.get('input_rmse_hu', float('nan')):.2f} HU; validated on {result.validated_on}; {result.stopped}) "
        f"-> {result.best_weights}\n"
        f"{budget_text(e)}"
        f"test: {held_out}"
    )


def _training_vendor(found: list) -> str | None:
    """The scanner vendor of the training series (their Manufacturer tag, read during pairing),
    recorded in the weights so ``ct-models`` lists them under it; None for volume files or mixed vendors."""
    from medseg.ct.kernels import vendor_name

    vendors = {vendor_name(pair.manufacturer) if pair.manufacturer is not None else None for pair in found}
    return vendors.pop() if len(vendors) == 1 else None
