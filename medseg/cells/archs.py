"""The seed papers' segmentation architectures for cells, selectable by name (``--arch``).

Every network here is *padded*: ``model(x)`` maps (N, C, H, W) to (N, K, H, W) class logits for
any H x W, with the same conventions as :mod:`medseg.cells.model` (C = 1 luminance channel,
K = 2 classes: background, cell; touching cells are kept apart by the thin background line the
border-weighted training target leaves between them). K = 3 (background, cell, boundary) works
too: nothing below assumes K = 2.

==========  ==================================================================================
arch        what it is
==========  ==================================================================================
unet_se     padded U-Net (3x3 convs, padding 1, batch norm) with a squeeze-and-excitation block
            (Hu et al. 2017) after every double-conv block of the encoder, bottom and decoder;
            ``se=False`` gives the plain padded U-Net. :func:`insert_se` adds the same blocks to
            an existing ``UNet2015`` or MONAI ``BasicUNet`` instead.
fcn8s       FCN-8s (Long et al. 2015): VGG-style backbone (no downloaded weights, widths from
            ``width``), fc6/fc7 as convolutions, score maps of pool3, pool4 and fc7 fused by 2x
            upsampling and summation, then 8x upsampling; learned (bilinear-initialised
            transposed convs, as in the paper) or fixed bilinear upsampling.
deeplabv3   DeepLabv3 (Chen et al. 2017, atrous convs + ASPP) from torchvision, built with
            ``weights=None, weights_backbone=None``: nothing is ever downloaded. The 3-channel
            stem is replaced by one taking ``in_channels`` (``input_adapter="first_conv"``) or a
            grey image is repeated to 3 channels (``"repeat"``, keeps the stock stem so that
            ImageNet-style weights could be loaded by the caller later). ``width`` is unused.
pspnet      PSPNet (Zhao et al. 2017): small dilated ResNet (BasicBlocks, output stride 8) and
            the pyramid pooling module (bins 1, 2, 3, 6), bilinear 8x upsampling.
hed         HED (Xie & Tu 2015): VGG-style stages, a side output after each stage (deep
            supervision) and a learned 1x1 fusion of the side outputs. Side outputs and the
            fused output are K-class logits at full size (see :class:`HED` for how its edge
            output separates touching cells); eval ``forward`` returns the fused logits,
            training ``forward`` (and :meth:`HED.forward_all`) returns ``(fused, [sides])``.
==========  ==================================================================================

Size rule: every net pads its input internally (mirror, bottom/right) to a multiple of
:func:`size_rule` (its total down-sampling) and crops the output back, so any H x W works.
For overlap-tile inference the tiles should be multiples of ``size_rule`` and tile origins
aligned to it (the engine's ``align``): then the down-sampling grid of every tile matches that of
a whole-image pass. :func:`context_margin` is the context margin per side; for
:func:`translation_equivariant` configs (fcn8s, hed, unet_se with ``se=False``) overlap-tile
output in eval mode equals whole-image output to float tolerance. SE (global average pooling),
ASPP image pooling and the pyramid pooling module look at the whole tile, so for unet_se (with
SE), deeplabv3 and pspnet tiled output only approximates whole-image output, however large the
margin; their margin is a practical one (local context at the seams), not a guarantee.

Builders are keyword-only (``build_arch(config=...)``); constructors build, ``forward``
computes; nothing here reads or writes files or touches the network.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from medseg.cells.arch_nets import (  # noqa: F401 - re-exported: the public API lives here
    HED,
    BasicBlock,
    DeepLabV3,
    FCN8s,
    PSPNet,
    PyramidPooling,
    SEBlock,
    UNetSE,
    _conv_bn_relu,
    _double_conv,
    _init_weights,
    _last_conv_channels,
    _norm,
    _PaddedNet,
    _replace_first_conv,
    _upsampler,
    _vgg_stage,
    bilinear_kernel,
    class_balanced_cross_entropy,
    hed_loss,
    insert_se,
    pad_to_multiple,
    unet_conv_blocks,
    vgg_widths,
)

ARCH_NAMES = ("unet_se", "fcn8s", "deeplabv3", "pspnet", "hed")
UPSAMPLE = ("learned", "bilinear")
DEEPLAB_BACKBONES = ("mobilenet_v3_large", "resnet50")
INPUT_ADAPTERS = ("first_conv", "repeat")


@dataclass
class ArchConfig:
    """Everything needed to rebuild one of these nets (stored in the weights' metadata).

    Fields used by only some archs are ignored by the others (noted per field).
    """

    arch: str = "unet_se"
    in_channels: int = 1  # luminance, as cells models take
    num_classes: int = 2  # background, cell (3 adds a boundary class)
    width: int = 32  # channels of the first stage; later stages 2x per down-sampling (not deeplabv3)
    batch_norm: bool = True  # own nets (unet_se, fcn8s, pspnet, hed)
    dropout: float = 0.1  # unet_se bottom, fcn8s fc6/fc7, pspnet head
    # unet_se
    depth: int = 4  # 2x2 max-pools
    se: bool = True  # squeeze-and-excitation after every double-conv block
    se_reduction: int = 8  # hidden units = channels // reduction (the paper's 16 is tight at width 32)
    # fcn8s and hed: VGG-style backbone, 3x3 convs per stage (VGG-16's layout by default)
    stage_convs: tuple[int, ...] = (2, 2, 3, 3, 3)
    fc_kernel: int = 7  # fcn8s: fc6 as a k x k conv (the paper's 7)
    upsample: str = "learned"  # fcn8s: "learned" (bilinear-initialised transposed convs) | "bilinear"
    # deeplabv3 (torchvision)
    backbone: str = "mobilenet_v3_large"  # | "resnet50"
    input_adapter: str = "first_conv"  # | "repeat" (grey -> 3 channels; in_channels 1 or 3)
    # pspnet
    blocks: tuple[int, ...] = (2, 2, 2, 2)  # residual BasicBlocks per stage
    bins: tuple[int, ...] = (1, 2, 3, 6)  # pyramid pooling bins

    def __post_init__(self) -> None:
        self.stage_convs = tuple(int(v) for v in self.stage_convs)
        self.blocks = tuple(int(v) for v in self.blocks)
        self.bins = tuple(int(v) for v in self.bins)
        checks = [
            (self.arch in ARCH_NAMES, f"unknown arch {self.arch!r}: use one of {', '.join(ARCH_NAMES)}"),
            (self.in_channels >= 1, "in_channels must be >= 1"),
            (self.num_classes >= 2, "num_classes must be >= 2 (softmax over classes)"),
            (self.width >= 1, "width must be >= 1"),
            (0.0 <= self.dropout < 1.0, "dropout must be in [0, 1)"),
            (self.depth >= 1, "depth must be >= 1"),
            (self.se_reduction >= 1, "se_reduction must be >= 1"),
            (len(self.stage_convs) == 5 and min(self.stage_convs) >= 1, "stage_convs: five counts >= 1"),
            (self.fc_kernel >= 1 and self.fc_kernel % 2 == 1, "fc_kernel must be odd"),
            (self.upsample in UPSAMPLE, f"upsample must be one of {', '.join(UPSAMPLE)}"),
            (self.backbone in DEEPLAB_BACKBONES, f"backbone must be one of {', '.join(DEEPLAB_BACKBONES)}"),
            (
                self.input_adapter in INPUT_ADAPTERS,
                f"input_adapter must be one of {', '.join(INPUT_ADAPTERS)}",
            ),
            (len(self.blocks) == 4 and min(self.blocks) >= 1, "blocks: four counts >= 1"),
            (len(self.bins) >= 1 and min(self.bins) >= 1, "bins: at least one bin size >= 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        if self.arch == "deeplabv3" and self.input_adapter == "repeat" and self.in_channels not in (1, 3):
            raise ValueError("input_adapter 'repeat' takes 1 (grey) or 3 input channels")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (tuples become lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ArchConfig:
        """Inverse of :meth:`to_dict`; unknown keys (from newer versions) are ignored."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def _from_config(net: type[nn.Module]) -> Callable[..., nn.Module]:
    """A keyword-only builder for ``net``: the constructors' keyword names are the config's field
    names, so each net takes exactly the fields it uses (e.g. deeplabv3 ignores ``width``)."""
    names = [n for n in inspect.signature(net).parameters if n in {f.name for f in fields(ArchConfig)}]

    def build(*, config: ArchConfig) -> nn.Module:
        return net(**{n: getattr(config, n) for n in names})

    return build


ARCHS: dict[str, Callable[..., nn.Module]] = {
    "unet_se": _from_config(UNetSE),
    "fcn8s": _from_config(FCN8s),
    "deeplabv3": _from_config(DeepLabV3),
    "pspnet": _from_config(PSPNet),
    "hed": _from_config(HED),
}


def build_arch(*, config: ArchConfig) -> nn.Module:
    """Build the net named by ``config.arch`` (train mode, fresh weights, no I/O)."""
    return ARCHS[config.arch](config=config)


def size_rule(config: ArchConfig) -> int:
    """The multiple tiles should have (total down-sampling); inputs of other sizes are padded
    internally to it. Overlap-tile origins should be multiples of it too (``align``)."""
    if config.arch == "unet_se":
        return 2**config.depth
    return {
        "fcn8s": 32,
        "hed": 16,
        "pspnet": 8,
        "deeplabv3": 16 if config.backbone == "mobilenet_v3_large" else 8,
    }[config.arch]


def translation_equivariant(config: ArchConfig) -> bool:
    """True when (in eval mode) overlap-tile output can equal whole-image output exactly: no
    global pooling (SE, ASPP image pooling, pyramid pooling) anywhere in the net."""
    return config.arch in ("fcn8s", "hed") or (config.arch == "unet_se" and not config.se)


def receptive_field(config: ArchConfig) -> int:
    """Receptive-field width (px) of an output pixel through the local (convolutional) path.

    Sum over layers of (kernel - 1) x dilation x jump; a 2x2 pool adds one jump; an upsampling
    layer adds one input pixel. Global pooling (SE, ASPP, PPM) is not counted: it sees everything.
    """
    if config.arch == "unet_se":
        d = config.depth
        return 13 * 2**d - 8  # encoder 2 convs + pool per level, bottom 2 convs, decoder 2 convs per level
    if config.arch in ("fcn8s", "hed"):
        convs = sum(2 * n * 2**i for i, n in enumerate(config.stage_convs))
        if config.arch == "hed":
            return 1 + convs + 15 + 16  # four pools, bilinear upsampling of the 1/16 side output
        return (
            1 + convs + 31 + (config.fc_kernel - 1) * 32 + 32 + 16 + 8
        )  # five pools, fc6, three upsamplings
    if config.arch == "pspnet":
        b = config.blocks
        stem = 2 + 4 + 4 + 4
        stages = 16 * b[0] + (8 + 16 + 32 * (b[1] - 1)) + 64 * b[2] + 128 * b[3]
        return 1 + stem + stages + 16 + 8  # head 3x3 at jump 8, bilinear 8x
    # deeplabv3: ASPP's largest rate (36) at output stride 16 alone spans 2 x 36 x 16 px
    return 1 + 2 * 36 * size_rule(config) + 2 * size_rule(config)


def context_margin(config: ArchConfig) -> int:
    """Context margin per side for overlap-tile inference, a multiple of :func:`size_rule`.

    Translation-equivariant configs: half the receptive field plus one down-sampling step for the
    pooling windows' asymmetry, rounded up; with it tiled == whole-image (eval mode). Others: the
    same bound for unet_se and pspnet (local context complete at the seams; the global pooling
    still sees only the tile), and 64 px for deeplabv3 (its ASPP field exceeds any tile; prefer
    the largest tiles memory allows, or whole images).
    """
    align = size_rule(config)
    if config.arch == "deeplabv3":
        return 64
    half = math.ceil((receptive_field(config) - 1) / 2) + align
    return -(-half // align) * align


def valid_tile(config: ArchConfig, at_least: int) -> int:
    """Smallest tile >= ``at_least`` that is a multiple of the size rule and leaves an output core
    of at least one size-rule step beyond the margins."""
    align = size_rule(config)
    at_least = max(at_least, 2 * context_margin(config) + align)
    return -(-at_least // align) * align


def param_count(model: nn.Module) -> int:
    """Number of parameters (all of them; every parameter here is trainable)."""
    return sum(p.numel() for p in model.parameters())


def arch_loss(
    outputs: Any, target: torch.Tensor, *, config: ArchConfig, weight: torch.Tensor | None = None
) -> torch.Tensor:
    """The training loss for ``config.arch``: :func:`hed_loss` for hed (deep supervision, class
    balanced), else pixel-wise (optionally weighted) cross-entropy as the cells trainer uses."""
    if config.arch == "hed":
        return hed_loss(outputs, target, weight=weight)
    loss = F.cross_entropy(outputs.float(), target, reduction="none")
    return (loss * weight).mean() if weight is not None else loss.mean()
