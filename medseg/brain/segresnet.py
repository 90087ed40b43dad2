"""SegResNet (Myronenko 2018, as MONAI builds it) in plain PyTorch, for inference without MONAI's import.

Why not ``monai.networks.nets.SegResNet`` at inference: ``import monai`` loads every MONAI submodule
(torchvision and ``torch._dynamo`` with them), 3.3 s on the 2-core CPU, an eighth of ``brain-segment``'s
30 s per-case budget. This module is the same network with the same parameter names (MONAI's state
dict loads as is; ``tests/brain/test_segresnet.py`` checks equal outputs against MONAI); training
(``scripts/train_segresnet_brain.py``) still uses MONAI's. Defaults as MONAI's: GroupNorm of 8
groups, ReLU, pre-activation residual blocks, stride-2 3x3x3 convolutions down, 1x1x1 convolution +
trilinear upsampling up, no VAE branch, no dropout.
"""

from __future__ import annotations

import torch
from torch import nn


class _Conv(nn.Module):
    """A 3-D convolution under the attribute name MONAI's ``Convolution(conv_only=True)`` uses."""

    def __init__(
        self, in_ch: int, out_ch: int, *, kernel: int = 3, stride: int = 1, bias: bool = False
    ) -> None:
        super().__init__()
        self.conv = nn.Conv3d(in_ch, out_ch, kernel, stride=stride, padding=(kernel - 1) // 2, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class _ResBlock(nn.Module):
    """norm -> ReLU -> conv, twice, plus the input (MONAI's ``segresnet_block.ResBlock``)."""

    def __init__(self, channels: int, *, groups: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, channels)
        self.norm2 = nn.GroupNorm(groups, channels)
        self.act = nn.ReLU(inplace=True)
        self.conv1 = _Conv(channels, channels)
        self.conv2 = _Conv(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv1(self.act(self.norm1(x)))
        return self.conv2(self.act(self.norm2(y))) + x


class SegResNet(nn.Module):
    """3-D encoder-decoder of residual blocks; ``forward`` maps (N, C, z, y, x) to per-voxel logits.

    Each input size must be a multiple of ``2 ** (len(blocks_down) - 1)``.
    """

    def __init__(
        self,
        *,
        in_channels: int,
        out_channels: int,
        init_filters: int = 8,
        blocks_down: tuple[int, ...] = (1, 2, 2, 4),
        blocks_up: tuple[int, ...] = (1, 1, 1),
        groups: int = 8,
    ) -> None:
        super().__init__()
        f = init_filters
        self.convInit = _Conv(in_channels, f)
        self.down_layers = nn.ModuleList()
        for i, n in enumerate(blocks_down):
            ch = f * 2**i
            pre = _Conv(ch // 2, ch, stride=2) if i > 0 else nn.Identity()
            self.down_layers.append(nn.Sequential(pre, *(_ResBlock(ch, groups=groups) for _ in range(n))))
        self.up_layers, self.up_samples = nn.ModuleList(), nn.ModuleList()
        n_up = len(blocks_up)
        for i in range(n_up):
            ch = f * 2 ** (n_up - i)
            self.up_layers.append(
                nn.Sequential(*(_ResBlock(ch // 2, groups=groups) for _ in range(blocks_up[i])))
            )
            self.up_samples.append(
                nn.Sequential(
                    _Conv(ch, ch // 2, kernel=1),
                    nn.Upsample(scale_factor=2, mode="trilinear", align_corners=False),
                )
            )
        self.conv_final = nn.Sequential(
            nn.GroupNorm(groups, f), nn.ReLU(inplace=True), _Conv(f, out_channels, kernel=1, bias=True)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.convInit(x)
        skips = []
        for down in self.down_layers:
            x = down(x)
            skips.append(x)
        skips.reverse()
        for i, (up, layer) in enumerate(zip(self.up_samples, self.up_layers)):
            x = layer(up(x) + skips[i + 1])
        return self.conv_final(x)
