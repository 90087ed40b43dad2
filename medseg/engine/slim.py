"""Network slimming (Liu et al., ICCV 2017): sparse batch-norm scales, channel pruning, fine-tuning.

Three steps, the same for every pipeline:

1. *Sparsity training*: the usual loss plus ``lambda * sum |gamma|`` over the batch-norm scale
   factors. The trainer (:func:`medseg.engine.trainer.fit`, ``TrainConfig.slim``) adds the
   sub-gradient ``lambda * sign(gamma)`` after the backward pass (:func:`add_bn_l1_grad`), as the
   paper's code does, so the penalty works with AMP and gradient clipping alike.
2. *Pruning*: one global threshold over all prunable gammas (:func:`global_threshold`) at the chosen
   ratio; a channel whose ``|gamma|`` is at or below it goes, with its filters in the producing conv and
   its slices in every consumer. The architecture-specific rewiring (skip connections, maxout) lives
   with each model (``medseg.cells.model.prune_unet2015``, ``medseg.brain.models.prune_twopath``);
   this module only says which channels stay (:func:`keep_indices`) and what constant a removed
   channel leaves in the next layer (:func:`constant_shift`).
3. *Fine-tuning* of the narrower net, which is saved as an ordinary weights file whose config lists
   the per-layer widths, so every loader rebuilds it.

:func:`train_and_prune` runs the three steps for a pipeline's training function (cells); the brain
pipeline plans them as stages of its own multi-phase run.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from torch import nn

    from medseg.engine.trainer import TrainResult

log = logging.getLogger("medseg.slim")

SPARSE_DIR, PRUNED, FINETUNE_DIR, SUMMARY = "sparse", "pruned.safetensors", "finetune", "slim.json"
MIN_CHANNELS = 1  # a layer always keeps at least this many channels (the net must stay connected)


def bn_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """The batch-norm layers with a learnable scale (the ones slimming acts on)."""
    from torch import nn

    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine]


def has_batch_norm(model: nn.Module) -> bool:
    return bool(bn_layers(model))


def bn_l1_penalty(model: nn.Module) -> torch.Tensor:
    """``sum |gamma|`` over the batch-norm layers (for reporting; training uses :func:`add_bn_l1_grad`)."""
    import torch

    layers = bn_layers(model)
    if not layers:
        return torch.zeros(())
    return sum(m.weight.abs().sum() for m in layers)


def add_bn_l1_grad(model: nn.Module, lam: float) -> None:
    """Add ``lam * sign(gamma)`` to each trainable batch-norm scale's gradient (call after backward)."""
    import torch

    if lam <= 0:
        return
    for m in bn_layers(model):
        w = m.weight
        if not w.requires_grad:
            continue
        if w.grad is None:
            w.grad = torch.zeros_like(w)
        w.grad.add_(torch.sign(w.detach()), alpha=lam)


def global_threshold(gammas: Sequence[torch.Tensor], ratio: float) -> float:
    """The ``|gamma|`` value at or below which ``ratio`` of all channels fall (the paper's global cut)."""
    import torch

    if not 0 < ratio < 1:
        raise ValueError(f"prune ratio must lie strictly between 0 and 1, got {ratio}")
    values = torch.cat([g.detach().abs().flatten().float() for g in gammas])
    if values.numel() == 0:
        raise ValueError("no batch-norm channels to prune")
    count = int(round(ratio * values.numel()))
    if count == 0:
        return float("-inf")
    return float(torch.sort(values).values[count - 1])


def keep_indices(gamma: torch.Tensor, threshold: float, *, minimum: int = MIN_CHANNELS) -> torch.Tensor:
    """Sorted indices of the channels kept (``|gamma| > threshold``; at least the ``minimum`` largest)."""
    import torch

    g = gamma.detach().abs().float()
    keep = torch.nonzero(g > threshold).flatten()
    if keep.numel() < min(minimum, g.numel()):
        keep = torch.topk(g, min(minimum, g.numel())).indices
    return torch.sort(keep).values


def global_keep(
    gammas: Sequence[torch.Tensor], ratio: float, *, minimum: int = MIN_CHANNELS
) -> tuple[float, list[torch.Tensor]]:
    """Per layer, the sorted indices of the channels kept when the ``ratio`` of all channels with the
    smallest ``|gamma|`` go (ties, e.g. scales driven to exactly 0, broken by position so that the
    share is exact), and the threshold (the largest pruned ``|gamma|``). A layer keeps at least its
    ``minimum`` largest channels."""
    import torch

    threshold = global_threshold(gammas, ratio)
    values = torch.cat([g.detach().abs().flatten().float() for g in gammas])
    count = int(round(ratio * values.numel()))
    order = torch.sort(values, stable=True).indices
    pruned = torch.zeros(values.numel(), dtype=torch.bool)
    pruned[order[:count]] = True
    keeps, start = [], 0
    for g in gammas:
        n = g.numel()
        keep = torch.nonzero(~pruned[start : start + n]).flatten()
        if keep.numel() < min(minimum, n):
            keep = torch.topk(g.detach().abs().float(), min(minimum, n)).indices
        keeps.append(torch.sort(keep).values)
        start += n
    return threshold, keeps


def constant_of_removed(bn: nn.Module, removed: torch.Tensor, *, relu: bool) -> torch.Tensor:
    """What a removed channel still outputs when its scale is (nearly) zero: ``beta`` (after ReLU)."""
    beta = bn.bias.detach()[removed]
    return beta.clamp(min=0) if relu else beta


def constant_shift(
    weight: torch.Tensor, removed_inputs: torch.Tensor, values: torch.Tensor, *, transposed: bool = False
) -> torch.Tensor:
    """Per output channel, what the constant maps ``values`` of the removed input channels added to a
    consumer's output: to be added to its bias, or taken from the running mean of the batch norm after
    a bias-free conv. Exact for valid convolutions; for a transposed convolution the per-position
    kernel is averaged (an approximation). ``weight``: the consumer's full weight, (out, in, kh, kw),
    or (in, out, kh, kw) if ``transposed``.
    """
    import torch

    w = weight.detach().float()
    if transposed:
        return torch.einsum("iokl,i->o", w[removed_inputs], values.float()) / (w.shape[2] * w.shape[3])
    return torch.einsum("oikl,i->o", w[:, removed_inputs], values.float())


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def removed_indices(n: int, keep: torch.Tensor) -> torch.Tensor:
    """The channel indices of ``range(n)`` that ``keep`` drops (whose constants the consumers absorb)."""
    import torch

    mask = torch.ones(n, dtype=torch.bool)
    mask[keep] = False
    return torch.nonzero(mask).flatten()


def prune_summary(
    threshold: float,
    channels: int,
    keeps: Sequence[torch.Tensor],
    model: nn.Module,
    new: nn.Module,
    new_cfg: Any,
) -> dict[str, Any]:
    """What a pruning did, for logs, ``slim.json`` and the weights' metadata (one shape for every net)."""
    return {
        "threshold": threshold,
        "channels_before": channels,
        "channels_after": int(sum(k.numel() for k in keeps)),
        "params_before": count_parameters(model),
        "params_after": count_parameters(new),
        "widths": new_cfg.widths,
        "config": new_cfg.to_dict(),
    }


def check_ratio(ratio: float | None) -> None:
    if ratio is not None and not 0 < ratio < 1:
        raise ValueError(f"prune ratio must lie strictly between 0 and 1, got {ratio}")


def _epochs_saved(run_dir: Path) -> int:
    try:
        return len(json.loads((run_dir / "history.json").read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError):
        return 0


def train_and_prune(
    train: Callable[..., TrainResult],
    prune: Callable[[Path, Path, float], dict[str, Any]],
    out_dir: str | Path,
    config: Any,
    *,
    resume: bool = False,
    overwrite: bool = False,
    **train_kwargs: Any,
) -> TrainResult:
    """Sparsity training, pruning and fine-tuning of one pipeline's net, in ``out_dir``.

    ``train(out_dir, config, resume=, overwrite=, **train_kwargs)`` is the pipeline's training
    function and ``config`` its dataclass config with ``slim``, ``prune_ratio``, ``finetune_epochs``,
    ``epochs``, ``model`` and ``init_weights``; ``prune(src, dst, ratio)`` writes the pruned weights
    and returns a summary (``config``: the pruned model config as a dict). Files: ``OUT/sparse/``
    (the sparsity run), ``OUT/pruned.safetensors`` (pruned, not fine-tuned), ``OUT/finetune/``,
    ``OUT/best.safetensors`` (the fine-tuned pruned net) and ``OUT/slim.json`` (widths, parameters).
    """
    from medseg.engine.trainer import LAST, STATE, preflight
    from medseg.io.atomic import atomic_path, write_text

    out_dir = Path(out_dir)
    check_ratio(config.prune_ratio)
    final = out_dir / "best.safetensors"
    if resume:
        preflight(out_dir / SPARSE_DIR, resume=True, overwrite=False)  # no state: the usual input error
    elif not overwrite:
        from medseg.errors import OutputExistsError

        held = [
            p for p in (final, out_dir / SUMMARY, out_dir / SPARSE_DIR, out_dir / FINETUNE_DIR) if p.exists()
        ]
        if held:
            raise OutputExistsError(
                f"holds a slimming run ({', '.join(p.name for p in held)}); use --resume to continue or "
                "--overwrite to start again",
                path=out_dir,
            )
    restart = not resume

    def phase(name: str, cfg: Any) -> TrainResult:
        nonlocal restart
        d = out_dir / name
        cont = not restart and (d / STATE).is_file() and (d / LAST).is_file()
        before = _epochs_saved(d) if cont else 0
        result = train(d, cfg, resume=cont, overwrite=not cont, **train_kwargs)
        # a phase that trained (more) leaves new weights: every later phase starts again from them
        restart = restart or result.epochs > before or result.stopped != "completed"
        return result

    if config.slim <= 0:
        log.warning("pruning a net trained without --slim: expect a larger loss before fine-tuning")
    sparse = phase(SPARSE_DIR, replace(config, prune_ratio=None, finetune_epochs=0))
    pruned = out_dir / PRUNED
    summary = prune(Path(sparse.best_weights), pruned, float(config.prune_ratio))
    log.info(
        "pruned %.0f%% of the channels: %d -> %d parameters",
        100 * config.prune_ratio,
        summary["params_before"],
        summary["params_after"],
    )
    model_cfg = type(config.model).from_dict(summary["config"])
    tuned_cfg = replace(
        config,
        model=model_cfg,
        init_weights=str(pruned),
        epochs=max(int(config.finetune_epochs), 1),
        slim=0.0,
        prune_ratio=None,
        finetune_epochs=0,
    )
    tuned = phase(FINETUNE_DIR, tuned_cfg)
    with atomic_path(final) as tmp:
        shutil.copyfile(tuned.best_weights, tmp)
    summary.update(
        {
            "slim": config.slim,
            "prune_ratio": config.prune_ratio,
            "sparse_best": sparse.best_metric,
            "finetuned_best": tuned.best_metric,
            "metric": tuned.metric,
        }
    )
    write_text(out_dir / SUMMARY, json.dumps(summary, indent=2, default=str) + "\n")
    tuned.extra.update({"slim": summary, "sparse_run": sparse.out_dir})
    tuned.best_weights = str(final)
    tuned.seconds = round(sparse.seconds + tuned.seconds, 3)
    return tuned
