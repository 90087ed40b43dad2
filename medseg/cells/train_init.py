"""Where a cells training starts: ``--init demo|scratch|FILE`` resolved to weights that fit the net,
the target kind read from them, and the last layer adapted when the target differs."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from medseg.cells import archs
from medseg.cells.model import (
    MODEL_NAME,
    CellModelConfig,
    ModelConfig,
    build_model,
)
from medseg.cells.targets import (
    BORDERS,
    adapt_head,
    check_target,
    out_channels,
    target_of,
)
from medseg.errors import InputError, ModelError

log = logging.getLogger("medseg.cells")


def init_compatible(config: ModelConfig, path: str | Path) -> bool:
    """Whether the weights at ``path`` describe the same net as ``config`` (so they can be fine-tuned)."""
    from medseg.cells.model import config_from_dict
    from medseg.engine.checkpoint import read_meta

    try:
        theirs = config_from_dict(read_meta(path).config).to_dict()
    except Exception:  # unreadable or foreign weights: not a starting point
        return False
    ours = config.to_dict()
    # dropout: a training-time setting; num_classes / instance_target: only the last 1x1 conv differs,
    # and init_from adapts it
    ignore = {"dropout", "num_classes", "instance_target"}
    return {k: v for k, v in theirs.items() if k not in ignore} == {
        k: v for k, v in ours.items() if k not in ignore
    }


def init_from(model: torch.nn.Module, config: ModelConfig, path: str | Path, kind: str = BORDERS) -> None:
    """Load ``path``'s parameters into ``model`` (fine-tuning); an input error naming the file when the
    weights describe another net or their tensors do not fit. When only the last 1x1 conv differs in
    its output channels (another instance target), it is adapted from the 2-class one (``adapt_head``)."""
    from medseg.engine.checkpoint import load_weights

    if not init_compatible(config, path):
        raise InputError(
            f"initial weights describe another net than {config.arch} with these settings "
            "(pass matching --arch/--base-channels/--batch-norm, or --init scratch)",
            path=path,
        )
    state, meta = load_weights(path, expect_model=MODEL_NAME)
    state = {k: v.float() for k, v in state.items()}
    ours = model.state_dict()
    differ = [k for k, v in state.items() if k in ours and ours[k].shape != v.shape]
    if differ:
        state = _adapted_head(state, ours, differ, kind, target_of(meta.config), path)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise InputError(f"initial weights do not fit: {str(exc).splitlines()[0]}", path=path) from None
    log.info("fine-tuning from %s", path)


def _adapted_head(
    state: dict[str, torch.Tensor],
    ours: dict[str, torch.Tensor],
    differ: list[str],
    kind: str,
    theirs: str,
    path: str | Path,
) -> dict[str, torch.Tensor]:
    """``state`` with its last 1x1 conv (weight and bias) turned into a head for ``kind``."""
    weights = [k for k in differ if k.endswith("weight")]
    if len(weights) != 1 or state[weights[0]].shape[1:] != ours[weights[0]].shape[1:]:
        raise InputError(f"initial weights do not fit: {', '.join(differ)} differ in shape", path=path)
    name = weights[0][: -len("weight")]
    bias = state.get(name + "bias")
    if theirs != BORDERS or kind == BORDERS:
        raise InputError(f"cannot adapt a {theirs} head to the {kind} target", path=path)
    new_w, new_b = adapt_head(state[name + "weight"], bias, kind)
    if new_w.shape != ours[name + "weight"].shape:
        raise InputError(f"initial weights do not fit: {name}weight differs in shape", path=path)
    log.info("last layer %s adapted from the 2-class head to the %s target", name.rstrip("."), kind)
    state = dict(state, **{name + "weight": new_w})
    if new_b is not None:
        state[name + "bias"] = new_b
    return state


def resolve_init(
    init: str,
    model: ModelConfig | None,
    *,
    images_dir: str | Path | None = None,
    stain: str = "auto",
    channel: int | None = None,
) -> tuple[ModelConfig, str | None]:
    """``cells-train --init``: the net to train and the weights to start from.

    ``init`` is ``demo`` (the shipped demo weights: those ``cells-segment`` uses for the stain of the
    images in ``images_dir`` -- ``stain``, or ``--stain auto``'s decision on them -- e.g. the
    brightfield specialist for H&E), ``scratch`` or a weights file. ``model`` is the
    net the user asked for, or None when they left the net's shape to the starting weights (then
    the net is the one those weights describe). ``demo`` falls back to scratch, with a log line, when
    the asked-for net has another shape (or no demo weights are installed); a given file that does
    not fit is an input error.
    """
    from medseg.cells.model import DEMO_WEIGHTS, DEMO_WEIGHTS_BY_STAIN, MODEL_NAME, config_from_dict
    from medseg.engine.checkpoint import read_meta_for
    from medseg.engine.weights import demo_weights_path

    if init == "scratch":
        return model or CellModelConfig(), None
    path = Path(init)
    if init == "demo":
        from medseg.cells.dataset import images_stain

        kind = images_stain(images_dir, stain=stain, channel=channel) if images_dir else ""
        path = demo_weights_path(DEMO_WEIGHTS)
        special = demo_weights_path(DEMO_WEIGHTS_BY_STAIN.get(kind, DEMO_WEIGHTS))
        path = special if special.is_file() else path
    if not Path(path).is_file():
        if init == "demo":
            log.warning("no demo weights installed (%s): training from scratch", path)
            return model or CellModelConfig(), None
        raise ModelError("--init: weights file not found", path=path)
    # not a safetensors file with medseg metadata (a .pt pickle, cut short), or another net: exit 4
    meta = read_meta_for(
        path,
        MODEL_NAME,
        "--init: weights of {model} ({task}), not a cell segmentation net: give cells-train weights, "
        "--init demo or --init scratch",
    )
    if model is None:
        model = config_from_dict(meta.config)
    if init_compatible(model, path):
        return model, str(path)
    if init == "demo":
        log.info(
            "the demo weights are another net than %s with these settings: training from scratch", model.arch
        )
        return model, None
    init_from(build_model(config=model), model, path)  # raises the input error naming the file
    return model, str(path)


def resolve_target(kind: str | None, init_weights: str | Path | None) -> str:
    """The instance target to train: the one asked for, else the starting weights' (fine-tuning the
    demo weights keeps their kind), else borders."""
    if kind is not None:
        return check_target(kind)
    if init_weights:
        from medseg.engine.checkpoint import read_meta

        return target_of(read_meta(init_weights).config)
    return BORDERS


def with_target_head(model: ModelConfig, kind: str) -> ModelConfig:
    """``model`` with as many output channels as the target ``kind`` needs (U-Nets; archs unchanged)."""
    import dataclasses

    if isinstance(model, archs.ArchConfig) or model.num_classes == out_channels(kind):
        return model
    return dataclasses.replace(model, num_classes=out_channels(kind))
