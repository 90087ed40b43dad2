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

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

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


# --------------------------------------------------------------------------------------------
# shared pieces


def _norm(channels: int, batch_norm: bool) -> nn.Module:
    return nn.BatchNorm2d(channels) if batch_norm else nn.Identity()


def _conv_bn_relu(
    cin: int, cout: int, *, batch_norm: bool, kernel: int = 3, stride: int = 1, dilation: int = 1
) -> list[nn.Module]:
    return [
        nn.Conv2d(
            cin,
            cout,
            kernel,
            stride=stride,
            padding=dilation * (kernel // 2),
            dilation=dilation,
            bias=not batch_norm,
        ),
        _norm(cout, batch_norm),
        nn.ReLU(inplace=True),
    ]


def _init_weights(module: nn.Module) -> None:
    """He init for convs (fan-out, as torchvision), BN to identity; transposed convs keep theirs."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Pad (bottom/right) to a multiple of ``multiple``: mirror ('reflect'), or edge replication
    where the image is too small to mirror."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph == 0 and pw == 0:
        return x
    mode = "reflect" if ph < h and pw < w else "replicate"
    return F.pad(x, (0, pw, 0, ph), mode=mode)


class _PaddedNet(nn.Module):
    """Pads the input to a multiple of ``multiple``, runs ``_forward``, crops the logits back."""

    multiple: int = 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        return self._forward(pad_to_multiple(x, self.multiple))[..., :h, :w]

    def _forward(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


# --------------------------------------------------------------------------------------------
# squeeze-and-excitation (Hu et al. 2017) and the SE U-Net


class SEBlock(nn.Module):
    """Squeeze-and-excitation: x * sigmoid(W2 relu(W1 avgpool(x))), channel-wise. Keeps the shape.

    The squeeze is a global average over the whole feature map, so a net with SE blocks is not
    translation-equivariant: a tile's output depends on what else is in the tile.
    """

    def __init__(self, channels: int, reduction: int = 8) -> None:
        super().__init__()
        hidden = max(channels // reduction, 1)
        self.fc1 = nn.Conv2d(channels, hidden, 1)
        self.fc2 = nn.Conv2d(hidden, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = F.adaptive_avg_pool2d(x, 1)
        return x * torch.sigmoid(self.fc2(F.relu(self.fc1(s), inplace=True)))


def _double_conv(cin: int, cout: int, *, batch_norm: bool, se: bool, se_reduction: int) -> nn.Sequential:
    layers = _conv_bn_relu(cin, cout, batch_norm=batch_norm) + _conv_bn_relu(
        cout, cout, batch_norm=batch_norm
    )
    block = nn.Sequential(*layers)
    if se:
        block.add_module("se", SEBlock(cout, se_reduction))
    return block


class UNetSE(_PaddedNet):
    """Padded U-Net (widths ``width * 2**level``) with optional SE after every double-conv block."""

    def __init__(
        self,
        *,
        in_channels: int = 1,
        num_classes: int = 2,
        width: int = 32,
        depth: int = 4,
        batch_norm: bool = True,
        dropout: float = 0.1,
        se: bool = True,
        se_reduction: int = 8,
    ) -> None:
        super().__init__()
        self.multiple = 2**depth
        chans = [width * 2**i for i in range(depth + 1)]
        kw = {"batch_norm": batch_norm, "se": se, "se_reduction": se_reduction}
        self.down = nn.ModuleList()
        cin = in_channels
        for c in chans[:-1]:
            self.down.append(_double_conv(cin, c, **kw))
            cin = c
        self.pool = nn.MaxPool2d(2)
        self.bottom = _double_conv(chans[-2], chans[-1], **kw)
        self.drop = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.up = nn.ModuleList()
        self.dec = nn.ModuleList()
        for c_hi, c_lo in zip(chans[:0:-1], chans[-2::-1]):
            self.up.append(nn.ConvTranspose2d(c_hi, c_lo, 2, stride=2))
            self.dec.append(_double_conv(2 * c_lo, c_lo, **kw))
        self.head = nn.Conv2d(chans[0], num_classes, 1)
        _init_weights(self)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for block in self.down:
            x = block(x)
            skips.append(x)
            x = self.pool(x)
        x = self.drop(self.bottom(x))
        for up, dec, skip in zip(self.up, self.dec, reversed(skips)):
            x = dec(torch.cat([skip, up(x)], dim=1))
        return self.head(x)


def _last_conv_channels(block: nn.Module) -> int:
    convs = [m for m in block.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise TypeError(f"{type(block).__name__} has no Conv2d to size an SE block from")
    return convs[-1].out_channels


def unet_conv_blocks(model: nn.Module) -> list[nn.Sequential]:
    """The double-conv blocks of a ``UNet2015``, MONAI ``BasicUNet`` or :class:`UNetSE`."""
    from medseg.cells.model import UNet2015

    if isinstance(model, (UNet2015, UNetSE)):
        return [*model.down, model.bottom, *model.dec]
    from monai.networks.nets.basic_unet import TwoConv

    blocks = [m for m in model.modules() if isinstance(m, TwoConv)]
    if not blocks:
        raise TypeError(f"insert_se does not know the conv blocks of {type(model).__name__}")
    return blocks


def insert_se(model: nn.Module, *, reduction: int = 8) -> nn.Module:
    """Append an :class:`SEBlock` to every double-conv block of a U-Net, in place; returns it.

    Works on ``medseg.cells.model.UNet2015``, MONAI ``BasicUNet`` and ``UNetSE(se=False)``.
    The new parameters are named ``<block>.se.*``: weights trained this way load only into a
    model rebuilt the same way (build, then ``insert_se``, then ``load_state_dict``).
    """
    blocks = unet_conv_blocks(model)
    if any(isinstance(m, SEBlock) for b in blocks for m in b.children()):
        raise ValueError("the model already has SE blocks")
    for block in blocks:
        block.add_module("se", SEBlock(_last_conv_channels(block), reduction))
    return model


# --------------------------------------------------------------------------------------------
# FCN-8s (Long et al. 2015)


def _vgg_stage(cin: int, cout: int, n: int, *, batch_norm: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(n):
        layers += _conv_bn_relu(cin if i == 0 else cout, cout, batch_norm=batch_norm)
    return nn.Sequential(*layers)


def vgg_widths(width: int) -> list[int]:
    """VGG's 64-128-256-512-512 pattern scaled to ``width``: w, 2w, 4w, 8w, 8w."""
    return [width, 2 * width, 4 * width, 8 * width, 8 * width]


def bilinear_kernel(channels: int, kernel: int) -> torch.Tensor:
    """(C, C, k, k) weight making ``ConvTranspose2d`` a per-channel bilinear upsampler (FCN init)."""
    factor = (kernel + 1) // 2
    center = factor - 1 if kernel % 2 == 1 else factor - 0.5
    og = torch.arange(kernel, dtype=torch.float32)
    filt1 = 1 - (og - center).abs() / factor
    filt = filt1[:, None] * filt1[None, :]
    weight = torch.zeros(channels, channels, kernel, kernel)
    weight[range(channels), range(channels)] = filt
    return weight


def _upsampler(channels: int, factor: int, learned: bool) -> nn.Module:
    if not learned:
        return nn.Upsample(scale_factor=factor, mode="bilinear", align_corners=False)
    up = nn.ConvTranspose2d(channels, channels, 2 * factor, stride=factor, padding=factor // 2, bias=False)
    with torch.no_grad():
        up.weight.copy_(bilinear_kernel(channels, 2 * factor))
    return up


class FCN8s(_PaddedNet):
    """FCN-8s on a VGG-style backbone; total down-sampling 32 (input padded to a multiple of 32)."""

    multiple = 32

    def __init__(
        self,
        *,
        in_channels: int = 1,
        num_classes: int = 2,
        width: int = 32,
        stage_convs: Sequence[int] = (2, 2, 3, 3, 3),
        fc_kernel: int = 7,
        upsample: str = "learned",
        batch_norm: bool = True,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        widths = vgg_widths(width)
        fc = 2 * widths[-1]  # VGG's 4096 = 8 x 512 scaled down: 2x the last stage
        self.stages = nn.ModuleList()
        cin = in_channels
        for c, n in zip(widths, stage_convs):
            self.stages.append(_vgg_stage(cin, c, n, batch_norm=batch_norm))
            cin = c
        self.pool = nn.MaxPool2d(2)
        drop = [nn.Dropout2d(dropout)] if dropout > 0 else []
        self.fc = nn.Sequential(
            *_conv_bn_relu(widths[-1], fc, kernel=fc_kernel, batch_norm=batch_norm),
            *drop,
            *_conv_bn_relu(fc, fc, kernel=1, batch_norm=batch_norm),
            *drop,
        )
        self.score_fr = nn.Conv2d(fc, num_classes, 1)
        self.score_pool4 = nn.Conv2d(widths[3], num_classes, 1)
        self.score_pool3 = nn.Conv2d(widths[2], num_classes, 1)
        _init_weights(self)
        for m in (self.score_pool3, self.score_pool4):  # the paper zero-initialises the skip scores
            nn.init.zeros_(m.weight)
            nn.init.zeros_(m.bias)
        learned = upsample == "learned"
        self.up2 = _upsampler(num_classes, 2, learned)
        self.up2_pool4 = _upsampler(num_classes, 2, learned)
        self.up8 = _upsampler(num_classes, 8, learned)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = []
        for stage in self.stages:
            x = self.pool(stage(x))
            pooled.append(x)
        pool3, pool4, pool5 = pooled[2], pooled[3], pooled[4]
        score = self.up2(self.score_fr(self.fc(pool5)))  # 1/32 -> 1/16
        score = self.up2_pool4(score + self.score_pool4(pool4))  # 1/16 -> 1/8
        return self.up8(score + self.score_pool3(pool3))  # 1/8 -> 1/1


# --------------------------------------------------------------------------------------------
# DeepLabv3 (torchvision, never with downloaded weights)


def _replace_first_conv(net: nn.Module, in_channels: int) -> None:
    for parent in net.modules():
        for name, child in parent.named_children():
            if isinstance(child, nn.Conv2d):
                new = nn.Conv2d(
                    in_channels,
                    child.out_channels,
                    child.kernel_size,
                    stride=child.stride,
                    padding=child.padding,
                    dilation=child.dilation,
                    groups=1,
                    bias=child.bias is not None,
                )
                nn.init.kaiming_normal_(new.weight, mode="fan_out")
                if new.bias is not None:
                    nn.init.zeros_(new.bias)
                setattr(parent, name, new)
                return
    raise TypeError("no first convolution found")  # pragma: no cover


class DeepLabV3(_PaddedNet):
    """torchvision's DeepLabv3 (ASPP head, no aux head) returning a logits tensor, not a dict.

    Output stride 16 (MobileNetV3-Large, dilated last stage) or 8 (ResNet-50, dilated stages 3-4);
    the input is padded to a multiple of it so that torchvision's final bilinear upsampling is an
    exact 16x / 8x. Batch norm follows the 1x1 image-pooling branch of ASPP: in training mode a
    batch needs at least 2 images.
    """

    def __init__(
        self,
        *,
        in_channels: int = 1,
        num_classes: int = 2,
        backbone: str = "mobilenet_v3_large",
        input_adapter: str = "first_conv",
    ) -> None:
        super().__init__()
        from torchvision.models.segmentation import deeplabv3_mobilenet_v3_large, deeplabv3_resnet50

        build = {"mobilenet_v3_large": deeplabv3_mobilenet_v3_large, "resnet50": deeplabv3_resnet50}[backbone]
        # weights_backbone defaults to ImageNet weights in torchvision: None is explicit on purpose
        self.net = build(weights=None, weights_backbone=None, num_classes=num_classes, aux_loss=False)
        self.multiple = 16 if backbone == "mobilenet_v3_large" else 8
        self.repeat = 1
        if input_adapter == "repeat":
            self.repeat = 3 // in_channels  # 1 -> 3 (grey repeated), 3 -> 1 (as is)
        elif in_channels != 3:
            _replace_first_conv(self.net.backbone, in_channels)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.repeat > 1:
            x = x.repeat(1, self.repeat, 1, 1)
        return self.net(x)["out"]


# --------------------------------------------------------------------------------------------
# PSPNet (Zhao et al. 2017)


class BasicBlock(nn.Module):
    """ResNet basic block (two 3x3 convs), optionally strided or dilated."""

    def __init__(
        self, cin: int, cout: int, *, stride: int = 1, dilation: int = 1, batch_norm: bool = True
    ) -> None:
        super().__init__()
        self.body = nn.Sequential(
            *_conv_bn_relu(cin, cout, stride=stride, dilation=dilation, batch_norm=batch_norm),
            nn.Conv2d(cout, cout, 3, padding=dilation, dilation=dilation, bias=not batch_norm),
            _norm(cout, batch_norm),
        )
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride=stride, bias=not batch_norm), _norm(cout, batch_norm)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.body(x) + self.shortcut(x), inplace=True)


class PyramidPooling(nn.Module):
    """PSPNet's pyramid pooling module: average-pool to b x b bins, 1x1 conv to C / len(bins),
    upsample bilinearly, concatenate with the input (2C channels out)."""

    def __init__(self, channels: int, bins: Sequence[int] = (1, 2, 3, 6), *, batch_norm: bool = True) -> None:
        super().__init__()
        reduced = max(channels // len(bins), 1)
        self.bins = tuple(bins)
        self.branches = nn.ModuleList(
            nn.Sequential(*_conv_bn_relu(channels, reduced, kernel=1, batch_norm=batch_norm))
            for _ in self.bins
        )
        self.out_channels = channels + reduced * len(self.bins)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        parts = [x]
        for b, branch in zip(self.bins, self.branches):
            y = branch(F.adaptive_avg_pool2d(x, b))
            parts.append(F.interpolate(y, size=size, mode="bilinear", align_corners=False))
        return torch.cat(parts, dim=1)


class PSPNet(_PaddedNet):
    """PSPNet on a small dilated ResNet: stem /4, stages of 2w, 4w (/8), 8w (dilation 2),
    8w (dilation 4); pyramid pooling; 3x3 conv head; 8x bilinear upsampling.

    Batch norm follows the 1x1 (bin 1) pooling branch: in training mode a batch needs >= 2 images.
    """

    multiple = 8

    def __init__(
        self,
        *,
        in_channels: int = 1,
        num_classes: int = 2,
        width: int = 32,
        blocks: Sequence[int] = (2, 2, 2, 2),
        bins: Sequence[int] = (1, 2, 3, 6),
        batch_norm: bool = True,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        w = width
        self.stem = nn.Sequential(
            *_conv_bn_relu(in_channels, w, stride=2, batch_norm=batch_norm),
            *_conv_bn_relu(w, w, batch_norm=batch_norm),
            *_conv_bn_relu(w, 2 * w, batch_norm=batch_norm),
            nn.MaxPool2d(3, stride=2, padding=1),
        )
        specs = [(2 * w, 1, 1), (4 * w, 2, 1), (8 * w, 1, 2), (8 * w, 1, 4)]  # (channels, stride, dilation)
        stages = []
        cin = 2 * w
        for (c, stride, dilation), n in zip(specs, blocks):
            layers = []
            for i in range(n):
                layers.append(
                    BasicBlock(
                        cin, c, stride=stride if i == 0 else 1, dilation=dilation, batch_norm=batch_norm
                    )
                )
                cin = c
            stages.append(nn.Sequential(*layers))
        self.stages = nn.Sequential(*stages)
        self.ppm = PyramidPooling(cin, bins, batch_norm=batch_norm)
        head = 4 * w
        self.head = nn.Sequential(
            *_conv_bn_relu(self.ppm.out_channels, head, batch_norm=batch_norm),
            nn.Dropout2d(dropout) if dropout > 0 else nn.Identity(),
            nn.Conv2d(head, num_classes, 1),
        )
        _init_weights(self)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        y = self.head(self.ppm(self.stages(self.stem(x))))
        return F.interpolate(y, size=size, mode="bilinear", align_corners=False)


# --------------------------------------------------------------------------------------------
# HED (Xie & Tu 2015)


class HED(_PaddedNet):
    """Holistically-nested edge detection with K-class side outputs.

    Five VGG-style stages (four 2x2 max-pools, so inputs are padded to a multiple of 16); after
    each stage a 1x1 conv scores the K classes and the score map is upsampled bilinearly to the
    input size (the paper's fixed bilinear deconvolution). The fused output is a 1x1 conv over
    the concatenated side outputs (5K -> K), initialised to their class-wise mean (the paper's
    fusion weights 1/5). Every side output and the fused output are supervised
    (:func:`hed_loss`).

    How it separates touching cells: the K logits follow the cells convention. With K = 2
    (background, cell) the edge between two touching cells is the thin background line of the
    border-weighted target, so the "edge map" is ``1 - p(cell)`` and the existing instance step
    (threshold p(cell), watershed, grow back into the lines) is unchanged. With K = 3
    (background, cell, boundary) class 2 is HED's edge map proper; p(cell) excludes the boundary
    pixels, so thresholding p(cell) already splits touching cells, and p(boundary) can serve as
    the watershed relief. Either way the common contract holds: K logits, same size as the input.
    """

    multiple = 16

    def __init__(
        self,
        *,
        in_channels: int = 1,
        num_classes: int = 2,
        width: int = 32,
        stage_convs: Sequence[int] = (2, 2, 3, 3, 3),
        batch_norm: bool = True,
    ) -> None:
        super().__init__()
        widths = vgg_widths(width)
        self.stages = nn.ModuleList()
        cin = in_channels
        for c, n in zip(widths, stage_convs):
            self.stages.append(_vgg_stage(cin, c, n, batch_norm=batch_norm))
            cin = c
        self.pool = nn.MaxPool2d(2)
        self.sides = nn.ModuleList(nn.Conv2d(c, num_classes, 1) for c in widths)
        self.fuse = nn.Conv2d(len(widths) * num_classes, num_classes, 1)
        _init_weights(self)
        with torch.no_grad():
            weight = torch.zeros(num_classes, len(widths), num_classes)
            weight[range(num_classes), :, range(num_classes)] = 1.0 / len(widths)
            self.fuse.weight.copy_(weight.reshape(num_classes, -1, 1, 1))
            self.fuse.bias.zero_()

    def forward_all(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(fused logits, [side logits per stage]), all (N, K, H, W)."""
        h, w = x.shape[-2:]
        x = pad_to_multiple(x, self.multiple)
        size = x.shape[-2:]
        sides = []
        for i, (stage, side) in enumerate(zip(self.stages, self.sides)):
            if i > 0:
                x = self.pool(x)
            x = stage(x)
            s = side(x)
            sides.append(s if i == 0 else F.interpolate(s, size=size, mode="bilinear", align_corners=False))
        fused = self.fuse(torch.cat(sides, dim=1))
        return fused[..., :h, :w], [s[..., :h, :w] for s in sides]

    def forward(self, x: torch.Tensor) -> Any:  # type: ignore[override]
        """Fused logits in eval mode; ``(fused, [sides])`` in training mode (deep supervision)."""
        fused, sides = self.forward_all(x)
        return (fused, sides) if self.training else fused


def class_balanced_cross_entropy(
    logits: torch.Tensor, target: torch.Tensor, *, weight: torch.Tensor | None = None
) -> torch.Tensor:
    """HED's class-balanced loss, per image: class c weighs 1 - |Y_c| / |Y|.

    For two classes this is the paper's balanced BCE exactly (positives weigh beta = |Y-|/|Y|,
    negatives 1 - beta); softmax cross-entropy over 2 logits is the sigmoid BCE of their
    difference. Averaged over pixels (the paper sums). ``weight``: optional (N, H, W) pixel
    weights multiplied in (e.g. the U-Net border term).
    """
    n, k = logits.shape[:2]
    flat = target.reshape(n, -1)
    counts = torch.zeros(n, k, device=target.device, dtype=torch.float32)
    counts.scatter_add_(1, flat, torch.ones_like(flat, dtype=torch.float32))
    class_w = 1.0 - counts / flat.shape[1]
    pixel_w = class_w.gather(1, flat).reshape(target.shape)
    if weight is not None:
        pixel_w = pixel_w * weight
    return (F.cross_entropy(logits.float(), target, reduction="none") * pixel_w).mean()


def hed_loss(
    outputs: Any, target: torch.Tensor, *, weight: torch.Tensor | None = None, side_weight: float = 1.0
) -> torch.Tensor:
    """Deep supervision: class-balanced loss of the fused output plus ``side_weight`` x each side.

    ``outputs`` is what ``HED.forward`` returns in training mode, ``(fused, [sides])``; a bare
    logits tensor (eval mode) is scored alone.
    """
    if isinstance(outputs, torch.Tensor):
        return class_balanced_cross_entropy(outputs, target, weight=weight)
    fused, sides = outputs
    loss = class_balanced_cross_entropy(fused, target, weight=weight)
    for side in sides:
        loss = loss + side_weight * class_balanced_cross_entropy(side, target, weight=weight)
    return loss


# --------------------------------------------------------------------------------------------
# registry, builders and geometry


def _build_unet_se(*, config: ArchConfig) -> nn.Module:
    return UNetSE(
        in_channels=config.in_channels,
        num_classes=config.num_classes,
        width=config.width,
        depth=config.depth,
        batch_norm=config.batch_norm,
        dropout=config.dropout,
        se=config.se,
        se_reduction=config.se_reduction,
    )


def _build_fcn8s(*, config: ArchConfig) -> nn.Module:
    return FCN8s(
        in_channels=config.in_channels,
        num_classes=config.num_classes,
        width=config.width,
        stage_convs=config.stage_convs,
        fc_kernel=config.fc_kernel,
        upsample=config.upsample,
        batch_norm=config.batch_norm,
        dropout=config.dropout,
    )


def _build_deeplabv3(*, config: ArchConfig) -> nn.Module:
    return DeepLabV3(
        in_channels=config.in_channels,
        num_classes=config.num_classes,
        backbone=config.backbone,
        input_adapter=config.input_adapter,
    )


def _build_pspnet(*, config: ArchConfig) -> nn.Module:
    return PSPNet(
        in_channels=config.in_channels,
        num_classes=config.num_classes,
        width=config.width,
        blocks=config.blocks,
        bins=config.bins,
        batch_norm=config.batch_norm,
        dropout=config.dropout,
    )


def _build_hed(*, config: ArchConfig) -> nn.Module:
    return HED(
        in_channels=config.in_channels,
        num_classes=config.num_classes,
        width=config.width,
        stage_convs=config.stage_convs,
        batch_norm=config.batch_norm,
    )


ARCHS: dict[str, Callable[..., nn.Module]] = {
    "unet_se": _build_unet_se,
    "fcn8s": _build_fcn8s,
    "deeplabv3": _build_deeplabv3,
    "pspnet": _build_pspnet,
    "hed": _build_hed,
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
