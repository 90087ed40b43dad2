"""Network modules of the seed papers' segmentation architectures (see :mod:`medseg.cells.archs`
for the configs, the registry and the tiling geometry): SE blocks and an SE U-Net, FCN-8s,
DeepLabV3 (torchvision, never downloaded), PSPNet and HED, plus the HED / class-balanced losses.

Kept apart from :mod:`medseg.cells.archs` so that each file stays readable; every network is a
padded net (output H x W = input H x W) built from keyword-only arguments, with no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


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
