"""Cell segmentation nets: the 2015 valid-convolution U-Net, a padded MONAI BasicUNet, and the
seed papers' padded nets of :mod:`medseg.cells.archs` (unet_se, fcn8s, deeplabv3, pspnet, hed).

All expose what overlap-tile inference needs: the context ``margin`` per side, the pooling
``align`` (total down-sampling) and valid tile sizes. A config is a :class:`CellModelConfig`
(unet2015, basicunet) or an :class:`medseg.cells.archs.ArchConfig` (the others); both are stored
as ``meta.config`` in the weights and rebuilt from its ``arch``. :func:`load_model` rebuilds a net from a
weights file; it lives here (not in ``train``) so that inference never imports training code.
"""

from __future__ import annotations

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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CellModelConfig:
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


def _double_conv(cin: int, cout: int, *, padding: int, batch_norm: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    for a, b in ((cin, cout), (cout, cout)):
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
    ) -> None:
        super().__init__()
        self.depth = depth
        chans = [base_channels * 2**i for i in range(depth + 1)]
        self.down = nn.ModuleList()
        cin = in_channels
        for c in chans[:-1]:
            self.down.append(_double_conv(cin, c, padding=0, batch_norm=batch_norm))
            cin = c
        self.pool = nn.MaxPool2d(2)
        self.drop_enc = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.bottom = _double_conv(chans[-2], chans[-1], padding=0, batch_norm=batch_norm)
        self.drop_bottom = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.up = nn.ModuleList()
        self.dec = nn.ModuleList()
        for c_hi, c_lo in zip(chans[:0:-1], chans[-2::-1]):
            self.up.append(nn.ConvTranspose2d(c_hi, c_lo, 2, stride=2))
            self.dec.append(_double_conv(2 * c_lo, c_lo, padding=0, batch_norm=batch_norm))
        self.head = nn.Conv2d(chans[0], num_classes, 1)
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
        )
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
