"""Train the PTC detector on a ``slide-prepare`` dataset: validation split, checkpoints, resume.

Per epoch: train on the training tiles (random flips / 90 degree turns / mild colour jitter),
measure F1 per class at IoU 0.5 on the validation tiles, save resumable state
(``train_state.pt``, loaded with ``weights_only=True``) and, when validation improves, the
inference weights (``weights.safetensors`` with self-describing metadata).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from medseg.errors import InputError
from medseg.pathology.detector import MODEL_NAME, DetectorConfig, build_detector

log = logging.getLogger("medseg.pathology")


@dataclass
class TrainConfig:
    epochs: int = 20
    batch_size: int = 4
    lr: float = 2e-3
    weight_decay: float = 1e-4
    val_fraction: float = 0.15
    seed: int = 0
    device: str = "auto"
    amp: str | bool | None = None
    max_minutes: float | None = None  # stop early (still checkpointed) after this long
    training_data: str = ""
    detector: DetectorConfig = field(default_factory=DetectorConfig)


def load_dataset(folder: str | Path) -> tuple[dict, list[dict]]:
    folder = Path(folder)
    ann = folder / "annotations.json"
    if not ann.is_file():
        raise InputError("no annotations.json (run medseg slide-prepare first)", path=folder)
    meta = json.loads(ann.read_text(encoding="utf-8"))
    records = meta.get("images", [])
    if not records:
        raise InputError("dataset has no images", path=folder)
    return meta, records


def _load_image(folder: Path, rec: dict) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(folder / rec["file"]).convert("RGB"))


def _augment(img: np.ndarray, boxes: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    h, w = img.shape[:2]
    b = boxes.copy()
    if rng.random() < 0.5:
        img = img[:, ::-1]
        b[:, [0, 2]] = w - b[:, [2, 0]]
    if rng.random() < 0.5:
        img = img[::-1]
        b[:, [1, 3]] = h - b[:, [3, 1]]
    if rng.random() < 0.5 and h == w:  # transpose = 90 degree turn combined with the flips
        img = img.transpose(1, 0, 2)
        b = b[:, [1, 0, 3, 2]]
    img = img.astype(np.float32) * rng.uniform(0.92, 1.08, 3) + rng.uniform(-8, 8)
    return np.clip(img, 0, 255).astype(np.uint8), b


def _to_targets(batch, device):
    import torch

    images, targets = [], []
    for img, boxes, labels in batch:
        images.append(torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).float().div(255).to(device))
        keep = (boxes[:, 2] - boxes[:, 0] > 2) & (boxes[:, 3] - boxes[:, 1] > 2)
        targets.append({"boxes": torch.as_tensor(boxes[keep], dtype=torch.float32, device=device).reshape(-1, 4),
                        "labels": torch.as_tensor(labels[keep], dtype=torch.int64, device=device)})
    return images, targets


def validate(model, folder: Path, records: list[dict], device, batch_size: int) -> dict:
    """F1 per class at IoU 0.5 of the model on ``records``."""
    from medseg.pathology.detector import Detector
    from medseg.pathology.evaluate import aggregate, match_class

    det = Detector(model, DetectorConfig(), device)
    per_class: dict[int, list] = {1: [], 2: []}
    for i in range(0, len(records), batch_size):
        chunk = records[i:i + batch_size]
        imgs = np.stack([_load_image(folder, r) for r in chunk])
        for rec, (boxes, labels, scores) in zip(chunk, det.predict(imgs, min_score=0.5)):
            gt_b, gt_l = np.array(rec["boxes"], float).reshape(-1, 4), np.array(rec["labels"], int)
            for c in (1, 2):
                per_class[c].append(match_class(boxes[labels == c], scores[labels == c], gt_b[gt_l == c]))
    model.train()
    return aggregate(per_class)


def train(dataset: str | Path, out: str | Path, *, config: TrainConfig | None = None, resume: bool = False,
          overwrite: bool = False) -> dict:
    """Train and write ``out/weights.safetensors`` (best on validation) + ``out/train_state.pt``."""
    import torch

    from medseg.engine.checkpoint import (
        CheckpointMeta,
        load_training_state,
        save_training_state,
        save_weights,
    )
    from medseg.engine.runtime import seed_everything, select_device
    from medseg.io.atomic import check_output, write_text

    cfg = config or TrainConfig()
    folder = Path(dataset)
    meta, records = load_dataset(folder)
    out = Path(out)
    state_path, weights_path = out / "train_state.pt", out / "weights.safetensors"
    if not resume:
        check_output(weights_path, overwrite=overwrite)
    det_cfg = cfg.detector
    det_cfg.margins = {k: int(v) for k, v in meta.get("margins", det_cfg.margins).items()}
    det_cfg.target_mpp = float(meta.get("target_mpp", det_cfg.target_mpp))
    rng = seed_everything(cfg.seed)
    device = select_device(cfg.device)
    order = rng.permutation(len(records))
    n_val = int(round(len(records) * cfg.val_fraction)) if len(records) > 4 else 0
    val = [records[i] for i in order[:n_val]]
    trn = [records[i] for i in order[n_val:]]
    model = build_detector(config=det_cfg).to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = max(1, int(np.ceil(len(trn) / cfg.batch_size)))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.epochs * steps_per_epoch,
                                                pct_start=0.15)
    start_epoch, best, history = 0, -1.0, []
    if resume and state_path.is_file():
        st = load_training_state(state_path)
        model.load_state_dict(st["model"])
        opt.load_state_dict(st["optimizer"])
        if int(st["scheduler"].get("total_steps", -1)) == sched.total_steps:
            sched.load_state_dict(st["scheduler"])
        else:  # more (or fewer) epochs than first planned: replay a fresh schedule to this point
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                for _ in range(min((int(st["epoch"]) + 1) * steps_per_epoch, sched.total_steps - 1)):
                    sched.step()
        start_epoch, best, history = int(st["epoch"]) + 1, float(st["best"]), list(st.get("history", []))
        log.info("resuming at epoch %d (best val F1 %.3f)", start_epoch + 1, best)
    t0 = time.monotonic()
    model.train()
    for epoch in range(start_epoch, cfg.epochs):
        perm = rng.permutation(len(trn))
        losses = []
        for s in range(steps_per_epoch):
            idx = perm[s * cfg.batch_size:(s + 1) * cfg.batch_size]
            batch = []
            for i in idx:
                rec = trn[i]
                img, b = _augment(_load_image(folder, rec), np.array(rec["boxes"], float).reshape(-1, 4), rng)
                batch.append((img, b, np.array(rec["labels"], int)))
            images, targets = _to_targets(batch, device)
            loss = sum(model(images, targets).values())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 10.0)
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
        metrics = validate(model, folder, val, device, cfg.batch_size) if val else {}
        score = metrics.get("f1_mean", -float(np.mean(losses)))
        history.append({"epoch": epoch + 1, "loss": float(np.mean(losses)), **metrics})
        log.info("epoch %d/%d loss %.3f val %s", epoch + 1, cfg.epochs, np.mean(losses),
                 {k: round(v, 3) for k, v in metrics.items() if isinstance(v, float)})
        if score > best:
            best = score
            save_weights(weights_path, model.state_dict(), CheckpointMeta(
                model=MODEL_NAME, task="C4d PTC detection (C4d+ / C4d-)", config=asdict(det_cfg),
                training_data=cfg.training_data or f"slide-prepare dataset {folder}",
                normalisation={"input": "RGB uint8 / 255", "mean": det_cfg.image_mean, "std": det_cfg.image_std},
                metrics={"epoch": epoch + 1, **metrics}, notes="not for clinical use"))
        save_training_state(state_path, {"model": model.state_dict(), "optimizer": opt.state_dict(),
                                         "scheduler": sched.state_dict(), "epoch": epoch, "best": best,
                                         "history": history})
        if cfg.max_minutes is not None and time.monotonic() - t0 > cfg.max_minutes * 60:
            log.warning("stopping after %.1f min (--max-minutes)", (time.monotonic() - t0) / 60)
            break
    summary = {"weights": str(weights_path), "state": str(state_path), "train_tiles": len(trn), "val_tiles": len(val),
               "best_val": best, "history": history, "seconds": round(time.monotonic() - t0, 1)}
    write_text(out / "train_history.json", json.dumps(summary, indent=1))
    return summary
