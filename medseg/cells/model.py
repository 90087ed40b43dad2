"""Cell segmentation nets: the 2015 valid-convolution U-Net, a padded MONAI BasicUNet, and the
seed papers' padded nets of :mod:`medseg.cells.archs` (unet_se, fcn8s, deeplabv3, pspnet, hed).

All expose what overlap-tile inference needs: the context ``margin`` per side, the pooling
``align`` (total down-sampling) and valid tile sizes. A config is a :class:`CellModelConfig`
(unet2015, basicunet) or an :class:`medseg.cells.archs.ArchConfig` (the others); both are stored
as ``meta.config`` in the weights and rebuilt from its ``arch``. :func:`load_model` rebuilds a net from a
weights file; it lives here (not in ``train``) so that inference never imports training code.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from medseg.cells import archs
from medseg.cells.archs import ArchConfig

if TYPE_CHECKING:
    from medseg.engine.checkpoint import CheckpointMeta

UNET_ARCHS = ("unet2015", "basicunet")
ARCHS = UNET_ARCHS + archs.ARCH_NAMES
BATCH_NORM_IN_GLOBAL_POOLING = ("deeplabv3", "pspnet")  # train with batches of >= 2
MODEL_NAME = "medseg-cells-unet"  # the ``model`` field of every cells weights file
TASK = "cell-foreground-with-borders"
DEMO_WEIGHTS = "cells/demo_unet2015.safetensors"  # relative to the shipped demo-weights folder
# shipped specialists that take these stains when no --weights is given (docs/cells.md: chosen on the
# real DSB validation split); a missing file leaves the stain to DEMO_WEIGHTS
DEMO_WEIGHTS_BY_STAIN = {
    "he": "cells/demo_unet2015_brightfield.safetensors",
    "ihc": "cells/demo_unet2015_brightfield.safetensors",
}
# shipped nets whose output maps are averaged with a demo file's (same target and normalisation), for one
# more pass per image; a missing file leaves the demo file alone (docs/cells.md, sessions 13-14): a main
# net trained from scratch (seed 1; validation AP@0.5 0.713 -> 0.717 in place of the first one, `_b`,
# which stays shipped as the brightfield companion's init), and the brightfield specialist fine-tuned
# from `_b` (the 11 validation H&E images 0.456 -> 0.511)
DEMO_COMPANIONS = {
    DEMO_WEIGHTS: ("cells/demo_unet2015_c.safetensors",),
    "cells/demo_unet2015_brightfield.safetensors": ("cells/demo_unet2015_brightfield_b.safetensors",),
}


@dataclass
class CellModelConfig:
    """Everything needed to rebuild a cell model (saved inside the weights' metadata)."""

    arch: str = "unet2015"
    in_channels: int = 1
    num_classes: int = 2  # background, cell
    base_channels: int = 64  # the paper's 64 (64->128->256->512->1024); demo weights use fewer
    depth: int = 4  # number of 2x2 max-pools
    dropout: float = 0.5  # at the end of the contracting path (unet2015)
    batch_norm: bool = False  # the paper has none; optional for faster training
    # basicunet only: context margin for overlap-tile inference (its receptive field radius)
    context_margin: int = 0
    se: bool = False  # squeeze-and-excitation after every double-conv block (Hu et al. 2017)
    # unet2015 after network slimming: the output width of every conv of the double-conv blocks, in
    # module order (down blocks, bottom, decoder blocks; 2 per block). None: the uniform widths.
    widths: list[int] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CellModelConfig:
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


def _double_conv(
    cin: int, cout: int, *, padding: int, batch_norm: bool, mid: int | None = None
) -> nn.Sequential:
    layers: list[nn.Module] = []
    mid = cout if mid is None else mid
    for a, b in ((cin, mid), (mid, cout)):
        layers.append(nn.Conv2d(a, b, 3, padding=padding, bias=not batch_norm))
        if batch_norm:
            layers.append(nn.BatchNorm2d(b))
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def _center_crop(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    dy, dx = (x.shape[-2] - h) // 2, (x.shape[-1] - w) // 2
    return x[..., dy : dy + h, dx : dx + w]


class UNet2015(nn.Module):
    """Ronneberger et al. 2015: unpadded 3x3 convs, 572x572 in -> 388x388 out for depth 4."""

    def __init__(
        self,
        *,
        in_channels: int = 1,
        num_classes: int = 2,
        base_channels: int = 64,
        depth: int = 4,
        dropout: float = 0.5,
        batch_norm: bool = False,
        widths: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        self.depth = depth
        chans = [base_channels * 2**i for i in range(depth + 1)]
        uniform = [c for c in [*chans, *chans[-2::-1]] for _ in range(2)]  # 2 convs per block
        if widths is None:
            widths = uniform
        if len(widths) != len(uniform) or min(widths) < 1:
            raise ValueError(f"unet2015 of depth {depth} needs {len(uniform)} positive widths, got {widths}")
        w = [int(v) for v in widths]
        self.widths = w
        block = iter(zip(w[0::2], w[1::2]))  # (mid, out) of each double-conv in module order
        self.down = nn.ModuleList()
        cin, outs = in_channels, []
        for _ in chans[:-1]:
            mid, out = next(block)
            self.down.append(_double_conv(cin, out, mid=mid, padding=0, batch_norm=batch_norm))
            cin = out
            outs.append(out)
        self.pool = nn.MaxPool2d(2)
        self.drop_enc = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        mid, out = next(block)
        self.bottom = _double_conv(cin, out, mid=mid, padding=0, batch_norm=batch_norm)
        self.drop_bottom = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.up = nn.ModuleList()
        self.dec = nn.ModuleList()
        cin = out
        for c_lo, skip in zip(chans[-2::-1], outs[::-1]):
            self.up.append(nn.ConvTranspose2d(cin, c_lo, 2, stride=2))  # no batch norm: not pruned
            mid, out = next(block)
            self.dec.append(_double_conv(skip + c_lo, out, mid=mid, padding=0, batch_norm=batch_norm))
            cin = out
        self.head = nn.Conv2d(cin, num_classes, 1)
        self._init_weights()

    def _init_weights(self) -> None:
        """He-normal init, as in the paper (std sqrt(2/N), N = fan-in)."""
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, block in enumerate(self.down):
            x = block(x)
            if i == self.depth - 1:  # dropout at the end of the contracting path
                x = self.drop_enc(x)
            skips.append(x)
            x = self.pool(x)
        x = self.drop_bottom(self.bottom(x))
        for up, dec, skip in zip(self.up, self.dec, reversed(skips)):
            x = up(x)
            x = dec(torch.cat([_center_crop(skip, x.shape[-2], x.shape[-1]), x], dim=1))
        return self.head(x)


def unet2015_output_size(size: int, depth: int = 4) -> int | None:
    """Output size for an input of ``size`` pixels, or None if pooling would hit an odd size."""
    for _ in range(depth):
        size -= 4
        if size < 2 or size % 2:
            return None
        size //= 2
    size -= 4
    if size < 1:
        return None
    for _ in range(depth):
        size = size * 2 - 4
        if size < 1:
            return None
    return size


def unet2015_valid_input(at_least: int, depth: int = 4) -> int:
    """Smallest valid input size >= ``at_least`` (16b + 60 for depth 4: 572 -> 388)."""
    size = max(at_least, 1)
    while unet2015_output_size(size, depth) is None:
        size += 1
    return size


def unet2015_margin(depth: int = 4) -> int:
    """Context lost per side (92 px for depth 4)."""
    size = unet2015_valid_input(1, depth)
    out = unet2015_output_size(size, depth)
    assert out is not None
    return (size - out) // 2


def basicunet_features(base: int) -> tuple[int, int, int, int, int, int]:
    return (base, base, 2 * base, 4 * base, 8 * base, base)


def basicunet_receptive_margin() -> int:
    """Context margin for BasicUNet: its receptive-field radius is 107 px (measured from input
    gradients over all 16 pooling phases), rounded up to 112. With this margin overlap-tile output
    equals whole-image output (tests/engine/test_tiling.py checks it)."""
    return 112


ModelConfig = CellModelConfig | ArchConfig


def config_from_dict(data: dict[str, Any]) -> ModelConfig:
    """The config class for ``data['arch']`` (weights' ``meta.config``)."""
    if data.get("arch") in archs.ARCHS:
        return ArchConfig.from_dict(data)
    return CellModelConfig.from_dict(data)


def build_model(*, config: ModelConfig) -> nn.Module:
    """Build the net named by ``config.arch`` (keyword-only, no I/O)."""
    if isinstance(config, ArchConfig):
        return archs.build_arch(config=config)
    model = _build_unet(config=config)
    return archs.insert_se(model) if config.se else model


def _build_unet(*, config: CellModelConfig) -> nn.Module:
    if config.arch == "unet2015":
        return UNet2015(
            in_channels=config.in_channels,
            num_classes=config.num_classes,
            base_channels=config.base_channels,
            depth=config.depth,
            dropout=config.dropout,
            batch_norm=config.batch_norm,
            widths=config.widths,
        )
    if config.widths is not None:
        raise ValueError(f"per-layer widths (network slimming) apply to unet2015, not {config.arch}")
    if config.arch == "basicunet":
        if config.depth != 4:
            raise ValueError("basicunet has a fixed depth of 4")
        from monai.networks.nets import BasicUNet

        # batch norm (not MONAI's default instance norm): instance statistics depend on the
        # whole tile, which would make overlap-tile output differ from whole-image output.
        return BasicUNet(
            spatial_dims=2,
            in_channels=config.in_channels,
            out_channels=config.num_classes,
            features=basicunet_features(config.base_channels),
            norm="batch",
            dropout=config.dropout,
            act=("relu", {"inplace": True}),
        )
    raise ValueError(f"unknown arch {config.arch!r}: use one of {', '.join(ARCHS)}")


def model_margin(config: ModelConfig) -> int:
    """Context margin per side for overlap-tile inference."""
    if isinstance(config, ArchConfig):
        return archs.context_margin(config)
    if config.arch == "unet2015":
        return unet2015_margin(config.depth)
    return config.context_margin or basicunet_receptive_margin()


def model_align(config: ModelConfig) -> int:
    """Tile origins are multiples of this (the total down-sampling)."""
    if isinstance(config, ArchConfig):
        return archs.size_rule(config)
    return 2**config.depth


def valid_tile(config: ModelConfig, at_least: int) -> int:
    """Input tile size >= ``at_least`` that the arch accepts and that leaves a non-empty core."""
    if isinstance(config, ArchConfig):
        return archs.valid_tile(config, at_least)
    margin = model_margin(config)
    align = model_align(config)
    at_least = max(at_least, 2 * margin + align)
    if config.arch == "unet2015":
        return unet2015_valid_input(at_least, config.depth)
    return -(-at_least // align) * align


def model_output_size(config: ModelConfig, tile: int) -> int:
    """Output edge for an input tile of ``tile`` px (a size :func:`valid_tile` returned)."""
    if isinstance(config, CellModelConfig) and config.arch == "unet2015":
        size = unet2015_output_size(tile, config.depth)
        if size is None:
            raise ValueError(f"{tile} px is not a valid unet2015 input size")
        return size
    return tile


def load_model(path: str | Path) -> tuple[nn.Module, ModelConfig, CheckpointMeta]:
    """Rebuild a cell model (CPU, eval mode) from a medseg weights file; ModelError if it does not fit."""
    from medseg.engine.checkpoint import load_weights
    from medseg.errors import ModelError

    state, meta = load_weights(path, expect_model=MODEL_NAME)
    try:
        config = config_from_dict(meta.config)
        model = build_model(config=config)
        model.load_state_dict({k: v.float() for k, v in state.items()})
    except (RuntimeError, ValueError, TypeError) as exc:
        raise ModelError(
            f"weights do not fit the {config.arch} model they describe: {str(exc).splitlines()[0]}", path=path
        ) from None
    return model.eval(), config, meta


def _blocks(model: UNet2015) -> list[nn.Sequential]:
    return [*model.down, model.bottom, *model.dec]


def _conv_inputs(
    model: UNet2015, outs: list[torch.Tensor], up_outs: list[torch.Tensor]
) -> list[torch.Tensor]:
    """For each conv of the double-conv blocks (module order), the original input channels it reads,
    given each conv's kept/copied original output channels ``outs`` and each up-convolution's ``up_outs``.

    The wiring pruning and widening share: a block's second conv reads its first; a down block (after the
    pool) or the bottom reads the previous block; decoder block ``j`` reads [skip of down block
    ``d-1-j``, up-conv ``j``'s output] concatenated, the up-conv channels numbered after the skip's.
    """
    convs = [m for b in _blocks(model) for m in b if isinstance(m, nn.Conv2d)]
    d = model.depth
    inputs: list[torch.Tensor] = []
    for i, conv in enumerate(convs):
        b, second = divmod(i, 2)
        if second or 0 < b <= d:
            inputs.append(outs[i - 1])
        elif b == 0:
            inputs.append(torch.arange(conv.in_channels))
        else:
            j = b - d - 1
            skip = conv.in_channels - model.up[j].out_channels
            inputs.append(torch.cat([outs[2 * (d - 1 - j) + 1], skip + up_outs[j]]))
    return inputs


def prune_unet2015(
    model: UNet2015, config: CellModelConfig, ratio: float
) -> tuple[UNet2015, CellModelConfig, dict[str, Any]]:
    """Network slimming of a batch-normed unet2015: the ``ratio`` of all conv channels with the
    smallest ``|gamma|`` (one global threshold) go, in every double-conv, block outputs included.

    A block's output feeds the next block (through the pool), its skip connection (the first input
    channels of the decoder block it is concatenated into) and, for the bottom and decoder blocks,
    the next up-convolution or the head: each of these consumers loses the same input channels. What
    a removed channel still emits (``relu(beta)``, its scale being ~0) is moved into the consumer's
    batch-norm running mean or bias (exact for the valid convs, averaged over the 2x2 kernel of an
    up-convolution). The up-convolutions' outputs carry no batch norm and keep their widths. Returns
    the narrower net (eval mode), its config (``widths`` set) and a summary.
    """
    from dataclasses import replace

    from medseg.engine import slim

    if not isinstance(model, UNet2015) or not config.batch_norm or config.se:
        raise ValueError("network slimming prunes a unet2015 with batch norm and without SE blocks")
    model = model.eval()
    blocks = _blocks(model)
    bns = [m for b in blocks for m in b if isinstance(m, nn.BatchNorm2d)]
    convs = [m for b in blocks for m in b if isinstance(m, nn.Conv2d)]
    threshold, keeps = slim.global_keep([bn.weight for bn in bns], ratio)
    new_cfg = replace(config, widths=[int(k.numel()) for k in keeps])
    new = build_model(config=new_cfg).eval()
    new_bns = [m for b in _blocks(new) for m in b if isinstance(m, nn.BatchNorm2d)]
    new_convs = [m for b in _blocks(new) for m in b if isinstance(m, nn.Conv2d)]
    arange = torch.arange
    d = model.depth
    inputs = _conv_inputs(model, keeps, [arange(up.out_channels) for up in model.up])
    with torch.no_grad():
        for conv, new_conv, bn, new_bn, keep, cin in zip(convs, new_convs, bns, new_bns, keeps, inputs):
            new_conv.weight.copy_(conv.weight[keep][:, cin])
            for name in ("weight", "bias", "running_mean", "running_var"):
                getattr(new_bn, name).copy_(getattr(bn, name)[keep])
            new_bn.num_batches_tracked.copy_(bn.num_batches_tracked)
        for j, (up, new_up) in enumerate(zip(model.up, new.up)):
            src = keeps[2 * (d + j) + 1]  # bottom (j = 0) or decoder block j - 1
            new_up.weight.copy_(up.weight[src])
            new_up.bias.copy_(up.bias)
        new.head.weight.copy_(model.head.weight[:, keeps[-1]])
        new.head.bias.copy_(model.head.bias)
        # the constant a removed channel leaves behind, moved into its consumers
        for i, (bn, keep) in enumerate(zip(bns, keeps)):
            removed = slim.removed_indices(bn.num_features, keep)
            if removed.numel() == 0:
                continue
            value = slim.constant_of_removed(bn, removed, relu=True)
            b, second = divmod(i, 2)
            targets: list[tuple[nn.Module, nn.Module, torch.Tensor, torch.Tensor, bool]] = []
            if not second:  # the block's second conv
                targets.append((convs[i + 1], new_bns[i + 1], keeps[i + 1], removed, False))
            else:
                if b < d:  # down block: the next block (after the pool) and the skip connection
                    targets.append((convs[i + 1], new_bns[i + 1], keeps[i + 1], removed, False))
                    dec = 2 * (2 * d - b)  # index of the first conv of the decoder block it feeds
                    targets.append((convs[dec], new_bns[dec], keeps[dec], removed, False))
                elif b < 2 * d:  # bottom or a decoder block: the next up-convolution
                    j = b - d
                    targets.append((model.up[j], new.up[j], arange(model.up[j].out_channels), removed, True))
                else:
                    targets.append((model.head, new.head, arange(model.head.out_channels), removed, False))
            for consumer, new_target, keep_out, rem, transposed in targets:
                shift = slim.constant_shift(consumer.weight, rem, value, transposed=transposed)[keep_out]
                if isinstance(new_target, nn.BatchNorm2d):
                    new_target.running_mean.sub_(shift)
                else:
                    new_target.bias.add_(shift)
    summary = slim.prune_summary(threshold, sum(bn.num_features for bn in bns), keeps, model, new, new_cfg)
    return new, new_cfg, summary


def widen_unet2015(
    model: UNet2015, config: CellModelConfig, factor: int = 2, *, noise: float = 0.0, seed: int = 0
) -> tuple[UNet2015, CellModelConfig]:
    """A ``factor`` times wider unet2015 computing the same function (Net2Net, Chen et al. 2016).

    Why: a wider net can start from trained narrow weights instead of from scratch, which a CPU budget
    cannot afford. Every conv's output channel ``k`` copies channel ``k mod c`` (its batch norm too);
    every consumer sees each original channel ``factor`` times and takes ``1/factor`` of its weight,
    so the output is unchanged (exact in eval mode). ``noise`` (relative to each conv's weight SD) breaks
    the copies' symmetry for training. Returns the new net (eval mode) and its config.
    """
    from dataclasses import replace

    if not isinstance(model, UNet2015) or factor < 1:
        raise ValueError("widening takes a unet2015 and an integer factor >= 1")
    new_cfg = replace(
        config,
        base_channels=config.base_channels * factor,
        widths=None if config.widths is None else [w * factor for w in config.widths],
    )
    new = build_model(config=new_cfg).eval()
    model = model.eval()
    d = model.depth
    convs = [m for b in _blocks(model) for m in b if isinstance(m, nn.Conv2d)]
    new_convs = [m for b in _blocks(new) for m in b if isinstance(m, nn.Conv2d)]
    bns = [m for b in _blocks(model) for m in b if isinstance(m, nn.BatchNorm2d)]
    new_bns = [m for b in _blocks(new) for m in b if isinstance(m, nn.BatchNorm2d)]
    outs = [torch.arange(n.out_channels) % c.out_channels for c, n in zip(convs, new_convs)]
    up_outs = [torch.arange(n.out_channels) % u.out_channels for u, n in zip(model.up, new.up)]

    def mix(weight: torch.Tensor, out_map: torch.Tensor, in_map: torch.Tensor, in_dim: int) -> torch.Tensor:
        count = torch.bincount(in_map)[in_map].to(weight.dtype)
        w = weight.index_select(1 - in_dim, out_map).index_select(in_dim, in_map)
        shape = [1] * w.dim()
        shape[in_dim] = -1
        return w / count.view(shape)

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for i, (conv, new_conv, in_map) in enumerate(
            zip(convs, new_convs, _conv_inputs(model, outs, up_outs))
        ):
            w = mix(conv.weight, outs[i], in_map, 1)
            if noise > 0:
                w = w + noise * conv.weight.std() * torch.randn(w.shape, generator=g)
            new_conv.weight.copy_(w)
            if conv.bias is not None:
                new_conv.bias.copy_(conv.bias[outs[i]])
        for bn, new_bn, out_map in zip(bns, new_bns, outs):
            for name in ("weight", "bias", "running_mean", "running_var"):
                getattr(new_bn, name).copy_(getattr(bn, name)[out_map])
            new_bn.num_batches_tracked.copy_(bn.num_batches_tracked)
        for j, (up, new_up) in enumerate(zip(model.up, new.up)):
            new_up.weight.copy_(mix(up.weight, up_outs[j], outs[2 * (d + j) + 1], 0))
            new_up.bias.copy_(up.bias[up_outs[j]])
        new.head.weight.copy_(mix(model.head.weight, torch.arange(model.head.out_channels), outs[-1], 1))
        new.head.bias.copy_(model.head.bias)
    return new, new_cfg


def _save_changed(
    dst: str | Path, model: nn.Module, config: ModelConfig, meta: CheckpointMeta, **metrics: Any
) -> None:
    """Save a pruned or widened net with its source's metadata: the new shape in the config, whose other
    keys (e.g. the instance target) still describe it, and where it came from in the metrics."""
    from dataclasses import replace

    from medseg.engine.checkpoint import save_weights

    config_dict = {**meta.config, **config.to_dict()}
    save_weights(
        dst, model.state_dict(), replace(meta, config=config_dict, metrics={**meta.metrics, **metrics})
    )


def prune_weights(src: str | Path, dst: str | Path, ratio: float) -> dict[str, Any]:
    """Prune the unet2015 weights at ``src`` (network slimming, :func:`prune_unet2015`) and save them
    at ``dst`` as an ordinary cells weights file (same metadata, ``widths`` in the config)."""
    from medseg.errors import InputError

    model, config, meta = load_model(src)
    if (
        not isinstance(config, CellModelConfig)
        or config.arch != "unet2015"
        or not config.batch_norm
        or config.se
    ):
        raise InputError(
            "network slimming prunes unet2015 nets with batch norm and without SE blocks "
            f"(these weights: {config.arch}, batch norm {getattr(config, 'batch_norm', True)})",
            path=src,
        )
    new, new_cfg, summary = prune_unet2015(model, config, ratio)
    _save_changed(dst, new, new_cfg, meta, pruned_from=str(src))
    return {**summary, "source": str(src), "ratio": ratio}


def widen_weights(
    src: str | Path, dst: str | Path, factor: int, *, noise: float = 0.0, seed: int = 0
) -> None:
    """The unet2015 weights at ``src`` widened ``factor`` times (:func:`widen_unet2015`), saved at
    ``dst`` as an ordinary cells weights file to fine-tune from."""
    model, config, meta = load_model(src)
    if not isinstance(config, CellModelConfig) or config.arch != "unet2015":
        raise ValueError(f"widening takes unet2015 weights, not {config.arch}: {src}")
    new, new_cfg = widen_unet2015(model, config, factor, noise=noise, seed=seed)
    _save_changed(dst, new, new_cfg, meta, widened_from=str(src), widen=factor)


def slimming_problem(config: ModelConfig, *, slim: float, prune_ratio: float | None) -> str | None:
    """Why network slimming cannot apply to ``config`` (one line), or None: the L1 penalty needs batch
    norm, channel pruning a batch-normed unet2015 without SE blocks."""
    if slim <= 0 and prune_ratio is None:
        return None
    has_bn = isinstance(config, ArchConfig) or config.batch_norm  # the seed papers' nets always have it
    if not has_bn:
        return f"--slim and --prune-ratio act on batch-norm scales: this {config.arch} has no batch norm"
    if prune_ratio is not None and (
        not isinstance(config, CellModelConfig) or config.arch != "unet2015" or config.se
    ):
        return f"--prune-ratio prunes unet2015 nets without SE blocks, not {config.arch}"
    return None
