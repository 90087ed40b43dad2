"""Train a cell U-Net with the pixel-wise weighted cross-entropy of the 2015 paper.

Targets: instance masks (or binary masks, split into connected components) become a
foreground target in which the pixels where two cells touch are background, and a border
weight map that stresses those thin lines (``medseg.cells.weights``). Patches are drawn at
random with mirrored context, elastically deformed, flipped and rotated. ``instance_target``
chooses another target on the same net (``medseg.cells.targets``: ``3class`` interior/boundary, or
``dist`` cell + normalised distance); the kind is stored in the weights and inference follows it.

The loop is the shared one (:func:`medseg.engine.trainer.fit`); this module supplies the
:class:`CellsTrainTask` (model, optimiser, batches, loss, validation). Validation runs the
inference path (engine Predictor + overlap-tile + instance separation) on held-out images and
reports the pixel IoU; with a single image there is nothing to hold out and the trainer warns.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from medseg.cells import archs
from medseg.cells.augment import AugmentConfig
from medseg.cells.instances import InstanceConfig, instances_from_maps
from medseg.cells.io import PERCENTILES
from medseg.cells.model import (
    BATCH_NORM_IN_GLOBAL_POOLING,
    MODEL_NAME,
    TASK,
    CellModelConfig,
    ModelConfig,
    build_model,
    model_margin,
    model_output_size,
    valid_tile,
)
from medseg.cells.patches import Sample, _intensity_jitter, _patch, draw_batch, prepare_sample  # noqa: F401 - re-exported
from medseg.cells.targets import (
    BORDERS,
    DIST,
    DIST_WEIGHT,
    MAX_CLASS_WEIGHT,
    check_target,
    instance_loss,
    out_channels,
    postprocess_for,
)
from medseg.cells.train_init import (  # noqa: F401 - re-exported
    _adapted_head,
    init_compatible,
    init_from,
    resolve_init,
    resolve_target,
    with_target_head,
)
from medseg.cells.weights import WeightMapConfig
from medseg.engine.checkpoint import CheckpointMeta
from medseg.engine.trainer import TrainConfig, TrainResult, fit
from medseg.errors import InputError

log = logging.getLogger("medseg.cells")

METRIC = "val_pixel_iou"
VAL_TILE = 512  # validation is inference: whole-image-sized tiles, not the (small) training patches
NORMALISATION = {
    "method": "percentile, then local contrast for fluo/he/ihc (medseg.cells.stain.normalise_for_stain)",
    "low": PERCENTILES[0],
    "high": PERCENTILES[1],
    "channels": "luminance, --channel, or hematoxylin (colour deconvolution) for he/ihc",
}


@dataclass
class CellsTrainConfig:
    """Everything ``cells-train`` decides; the loop's own settings are in :meth:`loop`."""

    model: ModelConfig = field(default_factory=CellModelConfig)  # or an archs.ArchConfig
    weight_map: WeightMapConfig = field(default_factory=WeightMapConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    instances: InstanceConfig = field(default_factory=InstanceConfig)
    epochs: int = 20
    steps_per_epoch: int = 50
    batch_size: int = 4
    tile: int = 316  # input patch size (rounded up to one the arch accepts)
    lr: float = 1e-3
    weight_decay: float = 0.0
    val_fraction: float = 0.2  # share of the pairs held out for validation (at least one when >= 2 pairs)
    seed: int = 0
    max_minutes: float | None = None
    amp: str = "auto"
    synthetic: int | None = None  # train on N synthetic images instead of image/mask folders
    training_data: str = ""  # free text stored in the weights' metadata
    stain: str = "auto"  # how training images are read (as cells-segment --stain)
    channel: int | None = None  # as cells-segment --channel
    diameter: float | None = None  # median cell diameter (px) of the training masks; set by train_pairs
    init_weights: str | None = None  # fine-tune: start from these weights (same model config), else scratch
    scale_range: tuple[float, float] = (1.0, 1.0)  # scale jitter of training patches (log-uniform)
    noise: float = 0.0  # blur / Gaussian-noise jitter of training patches (noise SD up to this)
    local_contrast: bool = True  # the pairs were normalised with the local contrast step (recorded)
    he_plane: str = "hematoxylin"  # what RGB H&E images became (medseg.cells.stain.HE_PLANES; recorded)
    # borders | 3class | dist (medseg.cells.targets), recorded in the weights; None: the kind of the
    # starting weights (init_weights), else borders
    instance_target: str | None = None
    dist_weight: float = DIST_WEIGHT  # dist target: lambda of the L1 distance term
    max_class_weight: float = MAX_CLASS_WEIGHT  # 3class: cap of the class balancing (1 = plain CE)
    touch_weight: float = 0.0  # 3class: extra weight where two cells touch (medseg.cells.targets)
    slim: float = 0.0  # network slimming (medseg.engine.slim): L1 on batch-norm scales, then pruning:
    prune_ratio: float | None = None  # share of the channels pruned after training (None: no pruning)
    finetune_epochs: int = 5  # epochs of fine-tuning the pruned net
    ema: float = 0.0  # moving average of the weights (decay per step; 0 = off), medseg.engine.trainer

    def loop(self) -> TrainConfig:
        return TrainConfig(
            epochs=self.epochs,
            seed=self.seed,
            max_minutes=self.max_minutes,
            amp=self.amp,
            slim=self.slim,
            ema=self.ema,
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def weighted_cross_entropy(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Pixel-wise weighted cross-entropy (softmax over classes), averaged over pixels."""
    if logits.shape[-2:] != target.shape[-2:]:
        raise ValueError(f"logits {tuple(logits.shape)} and target {tuple(target.shape)} differ in size")
    return (F.cross_entropy(logits.float(), target, reduction="none") * weight).mean()


def _normalisation(config: CellsTrainConfig) -> dict[str, Any]:
    """The weights' ``normalisation``: what the net read, so inference and fine-tuning read the same
    (``local_contrast`` and ``he_plane`` only written where they differ from what older weights did)."""
    out = dict(NORMALISATION)
    if not config.local_contrast:
        out.update(method="percentile only (no local contrast)", local_contrast=False)
    if config.he_plane != "hematoxylin":
        out.update(channels=f"luminance, --channel, {config.he_plane} for he, hematoxylin for ihc")
        out["he_plane"] = config.he_plane
    return out


def make_meta(config: CellsTrainConfig, metrics: dict[str, Any]) -> CheckpointMeta:
    """What a cells weights file says about itself (enough for :func:`medseg.cells.model.load_model`)."""
    return CheckpointMeta(
        model=MODEL_NAME,
        task=TASK,
        config={**config.model.to_dict(), "instance_target": check_target(config.instance_target or BORDERS)},
        training_data=config.training_data or "user-supplied image/mask pairs",
        normalisation=_normalisation(config),
        notes=json.dumps(
            {
                "instances": asdict(config.instances),
                "tile": config.tile,
                "seed": config.seed,
                "diameter": config.diameter,
            }
        ),
        metrics=metrics,
    )


def split_validation(
    samples: list[Sample], fraction: float, rng: np.random.Generator
) -> tuple[list[Sample], list[Sample]]:
    """Hold out ``fraction`` of the samples (at least one when there are two or more and fraction > 0)."""
    train, val = split_indices(len(samples), fraction, rng)
    return [samples[i] for i in train], [samples[i] for i in val]


def split_indices(n: int, fraction: float, rng: np.random.Generator) -> tuple[list[int], list[int]]:
    """The indices :func:`split_validation` trains and validates on (the same seed, the same split)."""
    if n < 2 or fraction <= 0:
        return list(range(n)), []
    n_val = min(max(int(round(n * fraction)), 1), n - 1)
    order = [int(i) for i in rng.permutation(n)]
    return order[n_val:], order[:n_val]


class CellsTrainTask:
    """What :func:`medseg.engine.trainer.fit` needs to train a cell U-Net."""

    metric = METRIC
    mode = "max"

    def __init__(
        self,
        config: CellsTrainConfig,
        train: list[Sample],
        val: list[Sample],
        data: dict[str, Any] | None = None,
    ) -> None:
        if not train:
            raise InputError("no usable image/mask pairs to train on")
        self.config, self.train, self.val = config, train, val
        config.instance_target = resolve_target(config.instance_target, config.init_weights)
        self.has_validation = bool(val)
        self.data = data or {}
        self.probabilities: np.ndarray | None = None  # patch sampling per image (None: uniform)
        model = config.model
        target = check_target(config.instance_target)
        if isinstance(model, archs.ArchConfig) and target == DIST:  # HED's own loss knows classes only
            raise InputError(f"--arch {model.arch} trains the borders or 3class target, not {DIST}")
        if model.num_classes != out_channels(target):
            raise InputError(
                f"the {target} target needs {out_channels(target)} output channels, the model has {model.num_classes}"
            )
        if isinstance(model, archs.ArchConfig):
            # padded nets: whole patches, a multiple of the size rule, no context margin
            if model.arch in BATCH_NORM_IN_GLOBAL_POOLING and config.batch_size < 2:
                raise InputError(f"{model.arch} trains with batches of at least 2 (--batch-size)")
            rule = archs.size_rule(model)
            self.tile = max(-(-config.tile // rule) * rule, rule)
            self.margin, self.out_size = 0, self.tile
        else:
            self.tile = valid_tile(model, config.tile)
            self.margin = model_margin(model)
            self.out_size = model_output_size(model, self.tile)

    def build_model(self) -> torch.nn.Module:
        model = build_model(config=self.config.model)
        if self.config.init_weights:
            init_from(model, self.config.model, self.config.init_weights, self.config.instance_target)
        return model

    def build_optimizer(self, model: torch.nn.Module) -> torch.optim.Optimizer:
        return torch.optim.Adam(model.parameters(), lr=self.config.lr, weight_decay=self.config.weight_decay)

    def build_scheduler(self, optimizer: torch.optim.Optimizer) -> Any:
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(self.config.epochs, 1))

    def train_batches(self, epoch: int, rng: np.random.Generator) -> Iterator[tuple[torch.Tensor, ...]]:
        for _ in range(self.config.steps_per_epoch):
            yield draw_batch(
                rng,
                self.train,
                batch_size=self.config.batch_size,
                tile=self.tile,
                margin=self.margin,
                out_size=self.out_size,
                augment_config=self.config.augment,
                scale_range=tuple(self.config.scale_range),
                noise=self.config.noise,
                probabilities=self.probabilities,
            )

    def train_step(
        self, model: torch.nn.Module, batch: tuple[torch.Tensor, ...], device: torch.device
    ) -> torch.Tensor:
        x, target, weight, *extra = (b.to(device) for b in batch)
        if isinstance(self.config.model, archs.ArchConfig):
            return archs.arch_loss(model(x), target, config=self.config.model, weight=weight)
        return instance_loss(
            model(x),
            target,
            weight,
            extra[0] if extra else None,
            self.config.instance_target,
            self.config.dist_weight,
        )

    def validate(self, model: torch.nn.Module, device: torch.device) -> dict[str, float]:
        """Pixel IoU of the segmented instances (the inference path) on held-out images.

        Without held-out images: on (up to 4 of) the training images; the trainer says so.
        """
        from medseg.cells.predict import make_predictor, predict_image

        samples = self.val or self.train[:4]
        kind = self.config.instance_target
        predictor = make_predictor(
            model, device=device, amp=self.config.amp, postprocess=postprocess_for(kind)
        )
        ious = []
        for s in samples:
            maps = predict_image(
                predictor,
                self.config.model,
                s.image,
                tile=max(self.config.tile, VAL_TILE),
                batch_size=self.config.batch_size,
            )
            pred, truth = instances_from_maps(maps, kind, self.config.instances) > 0, s.labels > 0
            union = np.logical_or(pred, truth).sum()
            ious.append(np.logical_and(pred, truth).sum() / union if union else 1.0)
        model.to(
            memory_format=torch.contiguous_format
        )  # the predictor made it channels_last: train as before
        return {METRIC: float(np.mean(ious))}

    def weights_meta(self, metrics: dict[str, float], epoch: int) -> CheckpointMeta:
        return make_meta(self.config, {**metrics, "epoch": epoch})

    def resume_identity(self) -> dict[str, Any]:
        """What ``--resume`` must share with the run it continues: the network, its target, the data."""
        cfg = self.config
        model = cfg.model.to_dict() if hasattr(cfg.model, "to_dict") else asdict(cfg.model)
        return {
            "network": model,
            "target": cfg.instance_target,
            "data": cfg.training_data,
            "images": self.data.get("split") or {"train": len(self.train), "validation": len(self.val)},
            "seed": cfg.seed,
        }

    def config_dict(self) -> dict[str, Any]:
        return {
            **self.config.to_dict(),
            "input_tile": self.tile,
            "output_tile": self.out_size,
            "train_images": len(self.train),
            "val_images": len(self.val),
            **self.data,
        }


def train_pairs(
    pairs: list[tuple[np.ndarray, np.ndarray]],
    out_dir: str | Path,
    config: CellsTrainConfig,
    *,
    val_pairs: list[tuple[np.ndarray, np.ndarray]] | None = None,
    device: str = "auto",
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = False,
    data: dict[str, Any] | None = None,
    names: list[str] | None = None,
) -> TrainResult:
    """Train on (normalised image, instance labels) pairs; ``best/last.safetensors`` etc. in ``out_dir``.

    Without ``val_pairs`` a ``val_fraction`` of the pairs is held out for validation; with ``names``
    (one per pair) the split is recorded by name (``train_config.json``, the result, the weights).
    """
    if not pairs:
        raise InputError("no usable image/mask pairs to train on")
    kind = config.instance_target = resolve_target(config.instance_target, config.init_weights)
    config.model = with_target_head(config.model, kind)
    cap, touch = config.max_class_weight, config.touch_weight
    samples = [prepare_sample(i, m, config.weight_map, kind, cap, touch) for i, m in pairs]
    if config.diameter is None:
        from medseg.cells.segment import median_diameter

        sizes = [d for d in (median_diameter(s.labels) for s in samples) if d is not None]
        config.diameter = round(float(np.median(sizes)), 2) if sizes else None
    if val_pairs is None:
        rng = np.random.default_rng([config.seed, 7])
        train_idx, val_idx = split_indices(len(samples), config.val_fraction, rng)
        train, val = [samples[i] for i in train_idx], [samples[i] for i in val_idx]
        if names is not None and len(names) == len(samples):
            split = {"train": [names[i] for i in train_idx], "validation": [names[i] for i in val_idx]}
            data = {**(data or {}), "split": split}
            held = ", ".join(split["validation"][:10]) + (" ..." if len(val_idx) > 10 else "")
            config.training_data += (
                f"; validation on {held or 'the training images (too few to hold any out)'}"
            )
    else:
        train, val = (
            samples,
            [prepare_sample(i, m, config.weight_map, kind, cap, touch) for i, m in val_pairs],
        )
    task = CellsTrainTask(config, train, val, data)
    log.info(
        "training %s (width %d) on %d image(s), %d held out for validation; tile %d -> %d",
        config.model.arch,
        getattr(config.model, "base_channels", getattr(config.model, "width", 0)),
        len(train),
        len(val),
        task.tile,
        task.out_size,
    )
    result = fit(
        task, out_dir, config.loop(), device=device, resume=resume, overwrite=overwrite, progress=progress
    )
    result.extra.update({"train_images": len(train), "val_images": len(val), **(data or {})})
    return result


def train_cells(
    out_dir: str | Path,
    config: CellsTrainConfig,
    *,
    images_dir: str | Path | None = None,
    masks_dir: str | Path | None = None,
    device: str = "auto",
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = False,
) -> TrainResult:
    """What ``medseg cells-train`` does: check the run folder, gather pairs, then :func:`train_pairs`.

    Pairs that cannot be used are skipped with their reason (``extra["skipped"]``); none usable is an
    input error. ``config.synthetic = N`` trains on N synthetic images and validates on others.
    """
    from medseg.cells.dataset import load_named_pairs
    from medseg.engine.trainer import preflight

    if resume and overwrite:
        raise InputError("--resume continues the run in --out and --overwrite replaces it: give one of them")
    if (config.synthetic is None) == (images_dir is None or masks_dir is None):
        raise InputError("give either --images and --masks, or --synthetic N")
    inputs = [images_dir, masks_dir, config.init_weights]
    preflight(out_dir, resume=resume, overwrite=overwrite, inputs=inputs)  # before the (slow) data loading
    skipped: list[dict[str, str]] = []
    names: list[str] | None = None
    val_pairs = None
    if config.init_weights:  # fine-tuning: normalise as the starting weights were trained
        from medseg.cells.stain import he_plane_of, uses_local_contrast
        from medseg.engine.checkpoint import read_meta

        normalisation = read_meta(config.init_weights).normalisation
        config.local_contrast = uses_local_contrast(normalisation)
        config.he_plane = he_plane_of(normalisation)
    if config.synthetic is not None:
        from medseg.cells.stain import prepare_plane
        from medseg.synthetic.cells import MODALITIES, synthetic_batch

        known = {"fluorescence": "fluo", "phase": "phase"}  # the generator knows its modality

        def prepared(seed: int, n: int) -> list[tuple[np.ndarray, np.ndarray]]:
            stains = [known[MODALITIES[i % len(MODALITIES)]] for i in range(n)]
            return [
                (
                    prepare_plane(
                        im,
                        config.stain if config.stain != "auto" else st,
                        local=config.local_contrast,
                        he_plane=config.he_plane,
                    )[0],
                    m,
                )
                for (im, m), st in zip(synthetic_batch(seed, n), stains)
            ]

        pairs = prepared(config.seed + 1, config.synthetic)
        n_val = max(int(round(config.synthetic * config.val_fraction)), 1) if config.val_fraction > 0 else 0
        val_pairs = prepared(config.seed + 2, n_val)
        config.training_data = (
            f"SYNTHETIC ONLY: medseg.synthetic.cells seed {config.seed + 1}, {config.synthetic} "
            "images; not for clinical use"
        )
    else:
        pairs, names, skipped = load_named_pairs(
            images_dir,
            masks_dir,
            stain=config.stain,
            channel=config.channel,
            local=config.local_contrast,
            he_plane=config.he_plane,
        )
        config.training_data = (
            config.training_data
            or f"images {Path(images_dir).resolve()}, masks {Path(masks_dir).resolve()} ({len(pairs)} pairs)"
            + (
                f"; left out (unusable): {', '.join(Path(x['image']).name for x in skipped[:10])}"
                if skipped
                else ""
            )
        )
    if not pairs:  # one line naming the pairs (no warnings before it)
        reasons = "; ".join(f"{Path(s['image']).name}: {s['reason']}" for s in skipped[:3])
        raise InputError(f"no usable image/mask pairs{': ' + reasons if reasons else ''}")
    for s in skipped:
        log.warning("skipping pair %s: %s", s["image"], s["reason"])
    return train_pairs(
        pairs,
        out_dir,
        config,
        val_pairs=val_pairs,
        device=device,
        resume=resume,
        overwrite=overwrite,
        progress=progress,
        data={"skipped": skipped},
        names=names if config.synthetic is None else None,
    )


def human_summary(result: TrainResult) -> str:
    """A few lines for the terminal: what was trained, how well, where the weights are."""
    best = "n/a" if not np.isfinite(result.best_metric) else f"{result.best_metric:.4f}"
    text = (
        f"{result.epochs} epoch(s) ({result.stopped}), best validation pixel IoU {best} at epoch "
        f"{result.best_epoch}, measured on {result.validated_on} -> {result.best_weights}"
    )
    skipped = result.extra.get("skipped") or []
    if skipped:
        text += (
            f"\nskipped {len(skipped)} pair(s): "
            + "; ".join(f"{Path(s['image']).name}: {s['reason']}" for s in skipped[:5])
            + (" ..." if len(skipped) > 5 else "")
        )
    return text
