"""Train the PTC detector on a ``slide-prepare`` dataset through the engine trainer.

:class:`DetectorTask` plugs the detector into :func:`medseg.engine.trainer.fit`, which owns the
loop, the files (``best.safetensors``, ``last.safetensors``, ``state.pt``, ``history.json``),
resume and the time budget. The task supplies the model, AdamW, a one-cycle learning rate,
augmented batches (flips, 90 degree turns, mild colour jitter) and the validation F1.

Validation is held out by *slide* when the dataset comes from two slides or more (tiles of one
slide overlap and share its staining, so tile-level hold-out flatters the detector), else by
tile, else there is none and the trainer warns that F1 is measured on the training tiles.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medseg.errors import InputError, ModelError
from medseg.pathology.detector import MODEL_NAME, DetectorConfig, build_detector
from medseg.pathology.labels import CLASS_NAMES, CLASSES, LABELS

log = logging.getLogger("medseg.pathology")

NO_HOLD_OUT = "the training tiles (no held-out data)"


@dataclass
class DetectorTrainConfig:
    """``slide-train`` options (the loop's own ones go to :class:`medseg.engine.trainer.TrainConfig`)."""

    epochs: int = 20
    batch_size: int = 4
    lr: float = 2e-3
    weight_decay: float = 1e-4
    val_fraction: float = 0.15
    seed: int = 0
    device: str = "auto"
    amp: str = "auto"
    max_minutes: float | None = None  # stop after the step that exceeds this budget (weights are kept)
    grad_clip: float = 10.0
    warmup: float = 0.15  # part of all steps spent raising the learning rate (one-cycle)
    training_data: str = ""
    detector: DetectorConfig = field(default_factory=DetectorConfig)
    # start from these detector weights (same backbone/heads; a Mask R-CNN's mask head may be new)
    init_weights: str | None = None


def load_dataset(folder: str | Path) -> tuple[dict, list[dict]]:
    folder = Path(folder)
    ann = folder / "annotations.json"
    if not ann.is_file():
        raise InputError("no annotations.json (run medseg slide-prepare first)", path=folder)
    try:
        meta = json.loads(ann.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(f"unreadable annotations.json: {exc}", path=ann) from None
    if not isinstance(meta, dict):
        raise InputError("annotations.json is not a slide-prepare dataset (not a JSON object)", path=ann)
    records = meta.get("images", [])
    if not isinstance(records, list):
        raise InputError('annotations.json: "images" is not a list', path=ann)
    if not records:
        raise InputError("dataset has no images", path=folder)
    for index, rec in enumerate(records):
        problem = _record_problem(rec)
        if problem:
            raise InputError(f"annotations.json, image record {index}: {problem}", path=ann)
    missing = [r["file"] for r in records if not (folder / r["file"]).is_file()]
    if missing:
        raise InputError(
            f"{len(missing)} image(s) of the dataset are missing, e.g. {missing[0]}", path=folder
        )
    return meta, records


def check_tiles(folder: Path, records: list[dict]) -> None:
    """Every tile image of the dataset reads whole: a damaged one is refused before training, named."""
    damaged = [r["file"] for r in records if _tile_problem(folder / r["file"])]
    if damaged:
        raise InputError(
            f"{len(damaged)} tile image(s) of the dataset are damaged (truncated or not an image), e.g. "
            f"{damaged[0]}: {_tile_problem(folder / damaged[0])}; run medseg slide-prepare again",
            path=folder,
        )


def _tile_problem(path: Path) -> str | None:
    """Why a tile image cannot be read whole (None when it can): checked before training, not in epoch 3."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            img.verify()  # reads every chunk and checks it (PNG CRCs), without decoding the pixels
    except Exception as exc:  # PIL raises many types for damaged files
        return f"{exc.__class__.__name__}: {exc}".splitlines()[0]
    return None


def _record_problem(rec) -> str | None:
    """Why one image record of annotations.json cannot be trained on (None when it can): checked
    before training, where a bad record would stop the run with a traceback after minutes."""
    if not isinstance(rec, dict):
        return "not a JSON object"
    file = rec.get("file")
    if not isinstance(file, str) or not file or Path(file).is_absolute() or ".." in Path(file).parts:
        return f"'file' must be a path inside the dataset folder, got {file!r}"
    try:
        boxes = np.asarray(rec.get("boxes", []), float).reshape(-1, 4)
        labels = np.asarray(rec.get("labels", []))
    except (TypeError, ValueError):
        return "'boxes' must be lists of 4 numbers (x0, y0, x1, y1)"
    if not np.isfinite(boxes).all():
        return "'boxes' hold NaN or infinite values"
    if len(labels) != len(boxes) or (len(labels) and not np.isin(labels, list(LABELS.values())).all()):
        return f"'labels' must be one of {sorted(LABELS.values())} per box ({len(boxes)} boxes, {len(labels)} labels)"
    if len(boxes) and ((boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1])).any():
        return "a box has x1 < x0 or y1 < y0"
    return None


def _check_both_classes(records: list[dict], folder: Path) -> None:
    """A detector trained without C4d- boxes (only positives annotated, a common shortcut) never
    calls a PTC C4d-, so every slide it scores comes out C4d3; without C4d+ boxes every slide is
    C4d0. Refused before training (exit 2), in words."""
    counts = {name: 0 for name in LABELS}
    ids = {v: k for k, v in LABELS.items()}
    for rec in records:
        for label in rec.get("labels", []):
            counts[ids[int(label)]] += 1
    missing = [name for name, n in counts.items() if n == 0]
    if missing:
        got = ", ".join(f"{n} {name}" for name, n in counts.items())
        raise InputError(
            f"the dataset has no {' and no '.join(missing)} PTC boxes ({got}): a detector trained on it "
            f"could never answer {' or '.join(missing)}, so every slide would get the same category; "
            "annotate both C4d+ and C4d- PTCs (QuPath classes, or --class-map in slide-prepare)",
            path=folder,
        )


def split_records(records: list[dict], val_fraction: float, seed: int) -> tuple[list[dict], list[dict], str]:
    """(train, validation, how): hold out whole slides when there are two or more, else tiles."""
    rng = np.random.default_rng(seed)
    if val_fraction <= 0:
        return records, [], NO_HOLD_OUT
    sources = sorted({r.get("source", "") for r in records})
    if len(sources) >= 2:
        n_val = min(len(sources) - 1, max(1, int(round(len(sources) * val_fraction))))
        held = {sources[i] for i in rng.permutation(len(sources))[:n_val]}
        val = [r for r in records if r.get("source", "") in held]
        return [r for r in records if r.get("source", "") not in held], val, f"{n_val} held-out slide(s)"
    if len(records) > 4:
        order = rng.permutation(len(records))
        n_val = max(1, int(round(len(records) * val_fraction)))
        return (
            [records[i] for i in order[n_val:]],
            [records[i] for i in order[:n_val]],
            f"{n_val} held-out tile(s) of the one slide",
        )
    return records, [], NO_HOLD_OUT


def _load_image(folder: Path, rec: dict) -> np.ndarray:
    from PIL import Image

    path = folder / rec["file"]
    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB"))
    except (OSError, ValueError, SyntaxError) as exc:  # changed since the check before training
        raise InputError(f"cannot read this tile of the dataset ({exc})", path=path) from None


def _augment(
    img: np.ndarray, boxes: np.ndarray, rng: np.random.Generator, masks: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Flips, a 90 degree turn and colour jitter; instance ``masks`` (N, H, W) follow the boxes."""
    h, w = img.shape[:2]
    b = boxes.copy()
    if rng.random() < 0.5:
        img = img[:, ::-1]
        b[:, [0, 2]] = w - b[:, [2, 0]]
        masks = masks[:, :, ::-1] if masks is not None else None
    if rng.random() < 0.5:
        img = img[::-1]
        b[:, [1, 3]] = h - b[:, [3, 1]]
        masks = masks[:, ::-1] if masks is not None else None
    if rng.random() < 0.5 and h == w:  # transpose = 90 degree turn combined with the flips
        img = img.transpose(1, 0, 2)
        b = b[:, [1, 0, 3, 2]]
        masks = masks.transpose(0, 2, 1) if masks is not None else None
    img = img.astype(np.float32) * rng.uniform(0.92, 1.08, 3) + rng.uniform(-8, 8)
    return np.clip(img, 0, 255).astype(np.uint8), b, masks


def one_cycle(step: int, total: int, warmup: float) -> float:
    """Learning-rate factor at ``step`` of ``total``: linear warm-up from 1/25, then cosine to ~0.

    A pure function of the step, so a resumed run (even with more epochs) needs no scheduler state.
    """
    total = max(1, total)
    up = max(1, int(round(total * warmup)))
    if step < up:
        return 0.04 + 0.96 * step / up
    t = min(1.0, (step - up) / max(1, total - up))
    return 1e-3 + (1 - 1e-3) * 0.5 * (1 + math.cos(math.pi * t))


class DetectorTask:
    """The detector as a :class:`medseg.engine.trainer.TrainTask`."""

    metric = "f1_mean"
    mode = "max"

    def __init__(self, folder: Path, records: list[dict], config: DetectorTrainConfig) -> None:
        self.folder = folder
        self.config = config
        self.train_records, self.val_records, self.validation = split_records(
            records, config.val_fraction, config.seed
        )
        self.has_validation = bool(self.val_records)
        self.with_masks = config.detector.arch == "maskrcnn"
        self.steps_per_epoch = max(1, math.ceil(len(self.train_records) / config.batch_size))
        self._optimizer = None
        self._epoch = 1
        self._step = 0

    # -- model and optimiser ---------------------------------------------------------------------
    def build_model(self):
        model = build_detector(config=self.config.detector)
        if self.config.init_weights:
            self._init_from(model, self.config.init_weights)
        return model

    @staticmethod
    def _init_from(model, path: str) -> None:
        """Load matching tensors of other detector weights (e.g. Faster R-CNN into a Mask R-CNN)."""
        from medseg.engine.checkpoint import load_weights

        state, _meta = load_weights(path, expect_model=MODEL_NAME)
        own = model.state_dict()
        wrong = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
        if wrong or not set(state) & set(own):
            raise ModelError(
                f"weights do not fit this detector (e.g. {(wrong or list(state))[0]})", path=path
            )
        missing, _unexpected = model.load_state_dict(state, strict=False)
        log.info(
            "initialised from %s (%d tensors; new: %s)",
            path,
            len(state),
            ", ".join(sorted({k.split(".")[1] for k in missing})) or "none",
        )

    def build_optimizer(self, model):
        import torch

        params = [p for p in model.parameters() if p.requires_grad]
        self._optimizer = torch.optim.AdamW(params, lr=self.config.lr, weight_decay=self.config.weight_decay)
        return self._optimizer

    def build_scheduler(self, optimizer):
        return None  # the one-cycle rate is set per step in train_step (a function of the step only)

    # -- one epoch ------------------------------------------------------------------------------
    def train_batches(self, epoch: int, rng: np.random.Generator):
        self._epoch, self._step = epoch, 0
        perm = rng.permutation(len(self.train_records))
        for s in range(self.steps_per_epoch):
            batch = []
            for i in perm[s * self.config.batch_size : (s + 1) * self.config.batch_size]:
                rec = self.train_records[i]
                img = _load_image(self.folder, rec)
                labels = np.array(rec["labels"], int)
                masks = self._masks(rec, labels, img.shape[:2]) if self.with_masks else None
                img, b, masks = _augment(img, np.array(rec["boxes"], float).reshape(-1, 4), rng, masks)
                batch.append((img, b, labels, masks))
            yield batch

    def _masks(self, rec: dict, labels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        """Mask R-CNN targets: the record's PTC outlines enlarged by the class margins, clipped."""
        from medseg.pathology.maskrcnn import instance_masks

        return instance_masks(rec.get("polygons") or [], labels, self.config.detector.margins, size)

    def train_step(self, model, batch, device):
        import torch

        step = (self._epoch - 1) * self.steps_per_epoch + self._step
        self._step += 1
        factor = one_cycle(step, self.config.epochs * self.steps_per_epoch, self.config.warmup)
        for group in self._optimizer.param_groups:
            group["lr"] = self.config.lr * factor
        images, targets = [], []
        for img, boxes, labels, masks in batch:
            images.append(
                torch.from_numpy(np.ascontiguousarray(img)).to(device).permute(2, 0, 1).float().div(255)
            )
            keep = (boxes[:, 2] - boxes[:, 0] > 2) & (boxes[:, 3] - boxes[:, 1] > 2)
            target = {
                "boxes": torch.as_tensor(boxes[keep], dtype=torch.float32, device=device).reshape(-1, 4),
                "labels": torch.as_tensor(labels[keep], dtype=torch.int64, device=device),
            }
            if masks is not None:
                h, w = img.shape[:2]
                target["masks"] = torch.as_tensor(
                    np.ascontiguousarray(masks[keep]), dtype=torch.uint8, device=device
                ).reshape(-1, h, w)
            targets.append(target)
        return sum(model(images, targets).values())

    # -- validation -----------------------------------------------------------------------------
    def validate(self, model, device) -> dict[str, float]:
        """F1 per class at IoU 0.5 on the held-out tiles (the training tiles when there are none)."""
        from medseg.pathology.detector import Detector
        from medseg.pathology.evaluate import aggregate, match_class

        records = self.val_records or self.train_records
        # the engine predictor (no channels_last here: the training model's memory layout stays as it is)
        det = Detector(model, self.config.detector, device=device, amp=self.config.amp, channels_last=False)
        per_class: dict[int, list] = {c: [] for c in CLASS_NAMES}
        for i in range(0, len(records), self.config.batch_size):
            chunk = records[i : i + self.config.batch_size]
            imgs = [_load_image(self.folder, r) for r in chunk]
            preds = (
                det.predict(np.stack(imgs))
                if len({im.shape for im in imgs}) == 1
                else [det.predict(im[None])[0] for im in imgs]
            )
            for rec, (dets, labels, scores) in zip(chunk, preds):
                boxes = dets[:, :4]  # Mask R-CNN rows carry the outline after the box
                gt_b, gt_l = np.array(rec["boxes"], float).reshape(-1, 4), np.array(rec["labels"], int)
                for c in per_class:
                    per_class[c].append(match_class(boxes[labels == c], scores[labels == c], gt_b[gt_l == c]))
        return {k: float(v) for k, v in aggregate(per_class).items()}

    def weights_meta(self, metrics: dict[str, float], epoch: int):
        from medseg.engine.checkpoint import CheckpointMeta

        det = self.config.detector
        return CheckpointMeta(
            model=MODEL_NAME,
            task=f"C4d PTC detection ({' / '.join(CLASSES)})",
            config=asdict(det),
            training_data=self.config.training_data
            or f"slide-prepare dataset {Path(self.folder).resolve()} ({len(self.train_records)} training "
            f"tile(s); validation on {self.validation})",
            normalisation={
                "input": "RGB uint8 / 255",
                "mean": list(det.image_mean),
                "std": list(det.image_std),
            },
            metrics={"epoch": epoch, "validation": self.validation, **metrics},
            notes="not for clinical use",
        )

    def resume_identity(self) -> dict[str, Any]:
        """What ``--resume`` must share with the run it continues: the dataset and its split."""
        return {
            "dataset": str(Path(self.folder).resolve()),
            "tiles": {"train": len(self.train_records), "validation": len(self.val_records)},
            "validation": self.validation,
        }

    def config_dict(self) -> dict[str, Any]:
        return {
            **asdict(self.config),
            "dataset": str(self.folder),
            "train_tiles": len(self.train_records),
            "val_tiles": len(self.val_records),
            "validation": self.validation,
            "validation_tile_files": [str(r["file"]) for r in self.val_records],  # the split, reproducible
        }


def _check_init_arch(path: str, arch: str) -> None:
    """--init-weights must come from an architecture whose layers this one shares (refused in words)."""
    from medseg.engine.checkpoint import read_meta_for
    from medseg.pathology.detector import same_family

    meta = read_meta_for(
        path,
        MODEL_NAME,
        "--init-weights: weights of {model} ({task}), not a C4d detector: give slide-train weights or leave "
        "--init-weights out",
    )
    other = str(meta.config.get("arch", "unknown"))
    if not same_family(other, arch):
        raise InputError(
            f"--init-weights holds a {other} detector, which cannot start --arch {arch} "
            f"(no shared layers): leave --init-weights out or give {arch} weights",
            path=path,
        )


def _yolo_anchors(cfg: DetectorTrainConfig, train_records: list[dict]) -> None:
    """YOLOv3 anchors: k-means (IoU distance) on the training boxes in model pixels, stored in the
    config that goes into the weights; from --init-weights when it is YOLOv3 (its heads fit those)."""
    from medseg.pathology.yolo import anchors_from_records, default_anchors

    det = cfg.detector
    if cfg.init_weights:
        from medseg.engine.checkpoint import read_meta

        det.anchors = DetectorConfig.from_dict(read_meta(cfg.init_weights).config).anchors
        if det.anchors:
            return
    det.anchors = anchors_from_records(train_records, det.input_scale, seed=cfg.seed) or default_anchors(det)
    log.info("YOLOv3 anchors (model px, k-means on %d tile(s)): %s", len(train_records), det.anchors)


def train_detector(
    dataset: str | Path,
    out: str | Path,
    config: DetectorTrainConfig | None = None,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = False,
):
    """slide-train: fit the detector on a slide-prepare dataset; returns the engine's TrainResult.

    With ``resume`` the architecture comes from ``out/last.safetensors`` (weights and optimiser
    continue from ``out/state.pt``); without state that is an input error (exit 2).
    """
    from medseg.engine.checkpoint import read_meta_for
    from medseg.engine.trainer import LAST, TrainConfig, fit, preflight

    cfg = config or DetectorTrainConfig()
    if cfg.epochs < 1 or cfg.batch_size < 1 or not 0 <= cfg.val_fraction < 1:
        raise InputError("--epochs and --batch-size must be at least 1, --val-fraction in [0, 1)")
    folder = Path(dataset)
    if resume and overwrite:
        raise InputError("--resume continues the run in --out and --overwrite replaces it: give one of them")
    meta, records = load_dataset(folder)
    inputs = [folder, cfg.init_weights]  # before any work; fit checks again
    if Path(out).exists() and not Path(out).is_dir():  # else "File exists" from a mkdir, no words
        raise InputError("--out must be a folder (best/last weights go in it); this is a file", path=out)
    out = preflight(out, resume=resume, overwrite=overwrite, inputs=inputs)
    _check_both_classes(records, folder)
    check_tiles(folder, records)
    det = cfg.detector
    det.margins = {k: int(v) for k, v in meta.get("margins", det.margins).items()}
    det.target_mpp = float(meta.get("target_mpp", det.target_mpp))
    if resume:
        last = read_meta_for(
            out / LAST,
            MODEL_NAME,
            "--resume: the run's last weights are {model} ({task}), not a C4d detector: restore the run "
            "folder, or start a new run (another --out, or --overwrite)",
        )
        saved = DetectorConfig.from_dict(last.config)
        if saved.arch != det.arch:
            log.warning("resuming the %s detector of %s (not %s)", saved.arch, out, det.arch)
        cfg.detector = saved
    if cfg.init_weights and not resume:
        _check_init_arch(cfg.init_weights, cfg.detector.arch)
    if cfg.detector.arch == "maskrcnn":
        without = sum("polygons" not in r or len(r["polygons"]) != len(r["labels"]) for r in records)
        if without:
            raise InputError(
                f"{without} tile(s) of the dataset have no PTC outlines (polygons), which Mask R-CNN "
                "needs: prepare it again with this version of medseg slide-prepare",
                path=folder,
            )
    task = DetectorTask(folder, records, cfg)
    if cfg.detector.arch == "yolov3" and not cfg.detector.anchors:
        _yolo_anchors(cfg, task.train_records)
    log.info("training on %d tile(s), validating on %s", len(task.train_records), task.validation)
    result = fit(
        task,
        out,
        TrainConfig(
            epochs=cfg.epochs,
            seed=cfg.seed,
            max_minutes=cfg.max_minutes,
            grad_clip=cfg.grad_clip,
            amp=cfg.amp,
        ),
        device=cfg.device,
        resume=resume,
        overwrite=overwrite,
        progress=progress,
    )
    result.extra = {
        "train_tiles": len(task.train_records),
        "val_tiles": len(task.val_records),
        "validation": task.validation,
        "arch": cfg.detector.arch,
    }
    return result
