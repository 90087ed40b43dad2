"""The kernel-conversion CNN of Lee et al. (2019).

Six 3x3 convolutions, 64 filters, ReLU after the first five, none after the last; no batch
norm, no pooling; residual learning: the network predicts (target - input) and the output is
``input + net(input - mean)``. Inputs are raw HU. We divide the centred HU by ``hu_scale``
(1000) before the first layer and multiply the residual by it afterwards: an exact
reparametrisation of the paper's raw-HU network that keeps Adam's steps well conditioned.
The paper subtracts a mean *image*; we subtract the training set's mean HU (a scalar) so the
model applies to any matrix size.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

MODEL_NAME = "ct-kernel-cnn"


@dataclass
class KernelNetConfig:
    """Everything needed to rebuild a converter; saved inside its weights file."""

    source_kernel: str = "B50f"
    target_kernel: str = "B30f"
    channels: int = 64
    depth: int = 6
    hu_mean: float = -500.0
    hu_scale: float = 1000.0
    manufacturer: str | None = None  # scanner vendor of the training series (kernel names are per vendor)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> KernelNetConfig:
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


def residual_body(*, channels: int, depth: int) -> nn.Sequential:
    """The paper's conv stack (3x3 convs with ReLU: 1 -> channels, depth - 2 x channels -> channels,
    channels -> 1), He-initialised with the last conv near zero, so a new net starts near the identity
    mapping. Shared by the per-direction net and the sharpness-conditioned one (same state-dict keys)."""
    if depth < 2:
        raise ValueError("depth must be >= 2")
    layers: list[nn.Module] = [nn.Conv2d(1, channels, 3, padding=1), nn.ReLU(inplace=True)]
    for _ in range(depth - 2):
        layers += [nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(inplace=True)]
    layers.append(nn.Conv2d(channels, 1, 3, padding=1))
    body = nn.Sequential(*layers)
    for m in body:
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            nn.init.zeros_(m.bias)
    nn.init.normal_(body[-1].weight, std=1e-3)
    return body


class KernelConversionNet(nn.Module):
    """Residual CNN mapping a CT slice (N, 1, H, W) in HU to the target kernel, in HU."""

    def __init__(
        self, *, channels: int = 64, depth: int = 6, hu_mean: float = -500.0, hu_scale: float = 1000.0
    ) -> None:
        super().__init__()
        self.body = residual_body(channels=channels, depth=depth)
        self.register_buffer("hu_mean", torch.tensor(float(hu_mean)), persistent=False)
        self.register_buffer("hu_scale", torch.tensor(float(hu_scale)), persistent=False)

    def residual(self, x_hu: torch.Tensor) -> torch.Tensor:
        """The predicted (target - input) in HU."""
        return self.body((x_hu - self.hu_mean) / self.hu_scale) * self.hu_scale

    def forward(self, x_hu: torch.Tensor) -> torch.Tensor:
        return x_hu + self.residual(x_hu).to(x_hu.dtype)


def build_kernel_net(*, config: KernelNetConfig) -> KernelConversionNet:
    return KernelConversionNet(
        channels=config.channels, depth=config.depth, hu_mean=config.hu_mean, hu_scale=config.hu_scale
    )
