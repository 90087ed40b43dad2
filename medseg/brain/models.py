"""Havaei et al. (MedIA 2017) brain-tumour CNNs: TwoPathCNN and its three cascades.

Every layer is a *valid* convolution or a stride-1 max-pool, so each network is fully
convolutional: ``forward`` maps an input of spatial size ``H + patch_size - 1`` to ``H`` output
pixels (logits, 5 classes). With ``H = 1`` it is the paper's patch classifier (centre pixel of a
33x33 / 65x65 / 56x56 / 53x53 patch); with a padded whole slice it labels every pixel in one pass,
which is the paper's ~45x speed-up and our inference path.

Shapes for one 33x33 patch (TwoPathCNN, paper widths):
  local  : 7x7 conv + maxout -> 64x27x27, 4x4 pool -> 64x24x24, 3x3 conv + maxout -> 64x22x22,
           2x2 pool -> 64x21x21
  global : 13x13 conv + maxout -> 160x21x21
  concat -> 224x21x21, 21x21 conv -> 5x1x1 (softmax in the loss / at inference)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

N_CLASSES = 5  # healthy, necrosis, edema, non-enhancing, enhancing (Havaei label order)
N_MODALITIES = 4  # T1, T1c, T2, FLAIR
REGION_ORDER = ("TC", "WT", "ET")  # channel order of region probabilities (MONAI's BraTS recipe)
ARCHS = ("twopath", "input-cascade", "local-cascade", "mf-cascade")

TWOPATH_PATCH = 33
# (patch size, crop of the second stage's 33-patch inside it: before, after)
CASCADE_GEOMETRY: dict[str, tuple[int, int, int]] = {
    "twopath": (33, 0, 0),
    "input-cascade": (65, 16, 16),  # first net 65 -> 33 output, concatenated with the 33 input
    "local-cascade": (56, 12, 11),  # first net 56 -> 24 output, after the first local hidden layer
    "mf-cascade": (53, 10, 10),  # first net 53 -> 21 output, before the output layer
}


@dataclass
class BrainNetConfig:
    """Enough to rebuild a network (stored in the weights' metadata)."""

    arch: str = "twopath"
    in_channels: int = N_MODALITIES
    n_classes: int = N_CLASSES
    local_channels: int = 64
    global_channels: int = 160
    maxout_k: int = 2
    dropout: float = 0.2
    batch_norm: bool = False  # batch norm after each maxout layer (needed for network slimming)
    # after network slimming: maxout features of local1, local2, global1 (None: the uniform widths)
    widths: list[int] | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> BrainNetConfig:
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})

    @property
    def patch_size(self) -> int:
        return CASCADE_GEOMETRY[self.arch][0]


def softmax_regions(probs):
    """(5, ...) class probabilities -> (3, ...) TC / WT / ET region probabilities (``REGION_ORDER``):
    the space in which slice nets and 3-D region nets are averaged."""
    import numpy as np

    return np.stack([probs[1] + probs[3] + probs[4], 1.0 - probs[0], probs[4]]).astype(np.float32, copy=False)


ROWSPLIT_MIN_PIXELS = 4096  # output pixels per image from which the row-split output layer pays off


class OutputConv(nn.Conv2d):
    """The 21x21 output convolution (few output channels), with a faster CPU inference path.

    Same parameters and results as ``nn.Conv2d``. With 5 output channels and a 21x21 kernel,
    oneDNN's direct convolution runs at a fraction of the CPU's speed (the output layers were ~57 %
    of whole-slice inference time). For whole-slice inference on CPU (no autograd, large maps) it is
    computed row-split instead: one 1x21 convolution with ``5 * 21`` output channels (the kernel
    rows become output channels, a shape oneDNN runs efficiently; same multiply count), then the 21
    row maps are summed, each shifted by its row. Equal to the direct convolution up to float
    rounding (tested); training (patches, gradients) and CUDA use the direct convolution.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kh, kw = self.kernel_size
        ho, wo = x.shape[-2] - kh + 1, x.shape[-1] - kw + 1
        if (
            torch.is_grad_enabled()
            or x.device.type != "cpu"
            or ho * wo < ROWSPLIT_MIN_PIXELS
            or self.groups != 1
            or self.stride != (1, 1)
            or self.padding != (0, 0)
            or self.dilation != (1, 1)
        ):
            return super().forward(x)
        out_ch, in_ch = self.weight.shape[:2]
        rows = self.weight.permute(0, 2, 1, 3).reshape(out_ch * kh, in_ch, 1, kw)  # (o, u) x c x 1 x v
        z = torch.nn.functional.conv2d(x, rows)  # (n, o * kh, H, wo)
        z = z.view(z.shape[0], out_ch, kh, z.shape[-2], wo)
        out = z[:, :, 0, :ho].clone()
        for u in range(1, kh):
            out += z[:, :, u, u : u + ho]
        if self.bias is not None:
            out += self.bias.view(1, -1, 1, 1)
        return out


class FreezableBatchNorm2d(nn.BatchNorm2d):
    """Batch norm that normalises with its running statistics, and leaves them alone, while its scale
    is frozen: phase 2 (only the output layer learns) and a cascade's frozen first stage must not
    drift with the natural class distribution's batches."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and not self.weight.requires_grad:
            return nn.functional.batch_norm(
                x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps
            )
        return super().forward(x)


class MaxoutConv(nn.Module):
    """Valid convolution producing ``k`` candidate maps per feature, max over them (Maxout); with
    ``batch_norm``, a batch norm on the ``out_ch`` maxout features (whose scales slimming prunes)."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, *, k: int = 2, batch_norm: bool = False) -> None:
        super().__init__()
        self.k = k
        self.out_ch = out_ch
        self.conv = nn.Conv2d(in_ch, out_ch * k, kernel)
        self.bn = FreezableBatchNorm2d(out_ch) if batch_norm else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.conv(x)
        n, _, h, w = z.shape
        z = z.view(n, self.out_ch, self.k, h, w).amax(dim=2)
        return z if self.bn is None else self.bn(z)


class TwoPathCNN(nn.Module):
    """Local (7x7 -> 3x3) and global (13x13) paths, concatenated, 21x21 output convolution.

    ``local_extra`` / ``head_extra`` add channels concatenated after the first local hidden layer
    (LocalCascadeCNN) or before the output layer (MFCascadeCNN).
    """

    receptive_field = TWOPATH_PATCH

    def __init__(
        self,
        *,
        in_channels: int = N_MODALITIES,
        n_classes: int = N_CLASSES,
        local_channels: int = 64,
        global_channels: int = 160,
        maxout_k: int = 2,
        dropout: float = 0.2,
        local_extra: int = 0,
        head_extra: int = 0,
        batch_norm: bool = False,
        widths: list[int] | None = None,
    ) -> None:
        super().__init__()
        w1, w2, wg = widths if widths is not None else (local_channels, local_channels, global_channels)
        if min(w1, w2, wg) < 1:
            raise ValueError(f"widths must be positive, got {widths}")
        bn = {"k": maxout_k, "batch_norm": batch_norm}
        self.local1 = MaxoutConv(in_channels, w1, 7, **bn)
        self.pool1 = nn.MaxPool2d(4, stride=1)
        self.local2 = MaxoutConv(w1 + local_extra, w2, 3, **bn)
        self.pool2 = nn.MaxPool2d(2, stride=1)
        self.global1 = MaxoutConv(in_channels, wg, 13, **bn)
        self.dropout = nn.Dropout(dropout)
        self.output = OutputConv(w2 + wg + head_extra, n_classes, 21)

    def local_hidden(self, x: torch.Tensor) -> torch.Tensor:
        """First local hidden layer (7x7 conv, maxout, 4x4 pool): size S - 9."""
        return self.pool1(self.local1(x))

    def features(self, x: torch.Tensor, *, local_extra: torch.Tensor | None = None) -> torch.Tensor:
        """Concatenated local + global maps before the output layer: size S - 12."""
        h = self.local_hidden(x)
        if local_extra is not None:
            h = torch.cat([h, local_extra], dim=1)
        local = self.pool2(self.local2(h))
        return torch.cat([local, self.global1(x)], dim=1)

    def head(self, feats: torch.Tensor, *, head_extra: torch.Tensor | None = None) -> torch.Tensor:
        if head_extra is not None:
            feats = torch.cat([feats, head_extra], dim=1)
        return self.output(self.dropout(feats))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class _Cascade(nn.Module):
    """Two TwoPathCNNs; the first (pre-trained, frozen) feeds its class maps to the second."""

    arch = ""

    def __init__(self, *, first: TwoPathCNN, second: TwoPathCNN) -> None:
        super().__init__()
        self.first = first
        self.second = second
        self.patch_size, self.crop_before, self.crop_after = CASCADE_GEOMETRY[self.arch]
        self.receptive_field = self.patch_size

    def _inner(self, x: torch.Tensor) -> torch.Tensor:
        """The second stage's input: x cropped to S - (patch - 33)."""
        b, a = self.crop_before, self.crop_after
        return x[..., b : x.shape[-2] - a, b : x.shape[-1] - a]

    def first_probs(self, x: torch.Tensor) -> torch.Tensor:
        """Softmax output of the first stage (no gradient flows into it once frozen)."""
        return torch.softmax(self.first(x), dim=1)

    def combine(self, inner: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
        """Second stage on its 33-patch input ``inner`` and the first stage's class maps ``probs``."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.combine(self._inner(x), self.first_probs(x))

    @property
    def probs_size(self) -> int:
        """Spatial size of the first stage's maps for one 33-patch (33, 24 or 21)."""
        return self.patch_size - 32

    def freeze_first(self) -> None:
        """Freeze the first stage (weights fixed, dropout off) for second-stage training."""
        for p in self.first.parameters():
            p.requires_grad_(False)
        self.first.eval()

    def train(self, mode: bool = True) -> _Cascade:
        super().train(mode)
        if not any(p.requires_grad for p in self.first.parameters()):
            self.first.eval()  # a frozen first stage stays in eval mode
        return self


class InputCascadeCNN(_Cascade):
    """First net on 65x65 -> 5x33x33, concatenated with the 4x33x33 input of the second."""

    arch = "input-cascade"

    def combine(self, inner: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
        return self.second(torch.cat([inner, probs], dim=1))


class LocalCascadeCNN(_Cascade):
    """First net on 56x56 -> 5x24x24, concatenated after the second's first local hidden layer."""

    arch = "local-cascade"

    def combine(self, inner: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
        return self.second.head(self.second.features(inner, local_extra=probs))


class MFCascadeCNN(_Cascade):
    """First net on 53x53 -> 5x21x21, concatenated before the second's output layer."""

    arch = "mf-cascade"

    def combine(self, inner: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
        return self.second.head(self.second.features(inner), head_extra=probs)


def build_twopath(
    *,
    in_channels: int = N_MODALITIES,
    n_classes: int = N_CLASSES,
    local_channels: int = 64,
    global_channels: int = 160,
    maxout_k: int = 2,
    dropout: float = 0.2,
) -> TwoPathCNN:
    return TwoPathCNN(
        in_channels=in_channels,
        n_classes=n_classes,
        local_channels=local_channels,
        global_channels=global_channels,
        maxout_k=maxout_k,
        dropout=dropout,
    )


def build_model(*, config: BrainNetConfig) -> nn.Module:
    """Build any of the four architectures from its config (random weights)."""
    if config.arch not in ARCHS:
        raise ValueError(f"unknown architecture {config.arch!r}; choose from {', '.join(ARCHS)}")
    kw = dict(
        n_classes=config.n_classes,
        local_channels=config.local_channels,
        global_channels=config.global_channels,
        maxout_k=config.maxout_k,
        dropout=config.dropout,
        batch_norm=config.batch_norm,
    )
    if config.widths is not None:
        if config.arch != "twopath":
            raise ValueError(f"per-layer widths (network slimming) apply to twopath, not {config.arch}")
        if len(config.widths) != 3:
            raise ValueError(f"twopath widths are local1, local2, global1: got {config.widths}")
        kw["widths"] = [int(v) for v in config.widths]
    if config.arch == "twopath":
        return TwoPathCNN(in_channels=config.in_channels, **kw)
    first = TwoPathCNN(in_channels=config.in_channels, **kw)
    if config.arch == "input-cascade":
        return InputCascadeCNN(
            first=first, second=TwoPathCNN(in_channels=config.in_channels + config.n_classes, **kw)
        )
    if config.arch == "local-cascade":
        return LocalCascadeCNN(
            first=first, second=TwoPathCNN(in_channels=config.in_channels, local_extra=config.n_classes, **kw)
        )
    return MFCascadeCNN(
        first=first, second=TwoPathCNN(in_channels=config.in_channels, head_extra=config.n_classes, **kw)
    )


def output_layer(model: nn.Module) -> nn.Conv2d:
    """The layer retrained in phase 2 (the second stage's output layer for a cascade)."""
    return model.second.output if isinstance(model, _Cascade) else model.output


def is_cascade(model: nn.Module) -> bool:
    return isinstance(model, _Cascade)


def prune_twopath(
    model: TwoPathCNN, config: BrainNetConfig, ratio: float
) -> tuple[TwoPathCNN, BrainNetConfig, dict]:
    """Network slimming of a batch-normed TwoPathCNN: the ``ratio`` of all maxout features with the
    smallest ``|gamma|`` (one global threshold over local1, local2, global1) go, with their ``k``
    candidate filters and their slices in the consumers (local1 -> local2; local2 and global1 ->
    the output layer). What a removed feature still emits (its ``beta``; the pools keep a constant)
    is moved into the consumer's bias, exactly (valid convolutions, maxout commutes with a shift).
    """
    from dataclasses import replace

    from medseg.engine import slim

    if not isinstance(model, TwoPathCNN) or config.arch != "twopath" or not config.batch_norm:
        raise ValueError("network slimming prunes a twopath net built with batch norm")
    model = model.eval()
    layers = [model.local1, model.local2, model.global1]
    threshold, keeps = slim.global_keep([m.bn.weight for m in layers], ratio)
    new_cfg = replace(config, widths=[int(k.numel()) for k in keeps])
    new = build_model(config=new_cfg).eval()
    k = config.maxout_k
    rows = [(keep[:, None] * k + torch.arange(k)).flatten() for keep in keeps]  # the candidates' filters
    inputs = [
        torch.arange(model.local1.conv.in_channels),
        keeps[0],
        torch.arange(model.global1.conv.in_channels),
    ]
    w2 = model.local2.out_ch
    with torch.no_grad():
        for old, nl, row, cin, keep in zip(
            layers, [new.local1, new.local2, new.global1], rows, inputs, keeps
        ):
            nl.conv.weight.copy_(old.conv.weight[row][:, cin])
            nl.conv.bias.copy_(old.conv.bias[row])
            for name in ("weight", "bias", "running_mean", "running_var"):
                getattr(nl.bn, name).copy_(getattr(old.bn, name)[keep])
            nl.bn.num_batches_tracked.copy_(old.bn.num_batches_tracked)
        head_in = torch.cat([keeps[1], w2 + keeps[2]])
        new.output.weight.copy_(model.output.weight[:, head_in])
        new.output.bias.copy_(model.output.bias)
        removed = [slim.removed_indices(m.out_ch, keep) for m, keep in zip(layers, keeps)]
        values = [slim.constant_of_removed(m.bn, r, relu=False) for m, r in zip(layers, removed)]
        # local1 -> local2 (each of the k candidates gets the shift: the max commutes with it)
        new.local2.conv.bias.add_(
            slim.constant_shift(model.local2.conv.weight, removed[0], values[0])[rows[1]]
        )
        new.output.bias.add_(slim.constant_shift(model.output.weight, removed[1], values[1]))
        new.output.bias.add_(slim.constant_shift(model.output.weight, w2 + removed[2], values[2]))
    channels = sum(m.out_ch for m in layers)
    summary = slim.prune_summary(threshold, channels, keeps, model, new, new_cfg)
    return new, new_cfg, summary
