"""CornerNet (Law & Deng 2018) as a light, anchor-free PTC detector (``arch="cornernet"``).

A box is a pair of corners: per class, a top-left and a bottom-right heatmap, an embedding per
corner (the two corners of one box get close values: pull/push loss) and a sub-cell offset. No
anchors, so capillaries of very different sizes need no anchor tuning.

- ``backbone``: everything dense, one tensor in and one out, so the engine Predictor's
  ``openvino_part="backbone"`` runs all of it on OpenVINO and only the decoding stays on PyTorch: a
  small hourglass (stem to stride 4, down to stride 32 and back with skips) and the two corner
  heads, whose predictions it returns concatenated (top-left then bottom-right).
- corner pooling (top-left: max over everything to the right + everything below; bottom-right:
  left + above) with ``cummax`` on flipped axes. ``cummax`` does not convert to OpenVINO, so when
  traced for the conversion the same maxima are taken by doubling shifts (``max(x, shift(x, 2^s))``
  for s < :data:`POOL_STEPS`), exact up to 2^8 = 256 cells (1024 model px; a 1024 px tile is 128).
- geometry: each corner also regresses its box's width and height (log cells, L1 loss; the idea of
  CentripetalNet, Dong et al. 2020), and a pair must agree with the box each of its corners
  predicts. Why: PTC boxes (margins included) overlap their neighbours, and 1-D embeddings learnt
  in a few CPU-minutes do not keep 7-13 boxes per tile apart, so the top-left corner of one PTC
  paired with the bottom-right corner of its neighbour. Held-out synthetic tiles (96 PTCs) after
  106 CPU-s of training, scores >= 0.5: embeddings alone 82 true and 139 false boxes, with the
  geometry check 82 true and 1 false.
- decoding: top-k corners per image; pairs of the same class with the bottom-right corner below and
  right of the top-left one, embeddings closer than :data:`EMBEDDING_THRESHOLD` and IoU >=
  :data:`GEOMETRY_IOU` with both corners' predicted boxes, scored by the mean corner score, then
  ``torchvision.ops.batched_nms``.

Same call as torchvision's detectors (list of CHW float images in [0, 1], optional targets; train:
dict of losses, eval: list of ``boxes``/``labels``/``scores`` in tile pixels), so the trainer, the
Predictor, the tile engine, batch scoring and the GeoJSON export take it unchanged. Like the light
Faster R-CNN it normalises, rescales by ``input_scale`` and pads internally.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

if TYPE_CHECKING:
    from medseg.pathology.detector import DetectorConfig

STRIDE = 4  # backbone output stride (heatmap cell = 4 model px)
SIZE_DIVISIBLE = 32  # the hourglass goes down to stride 32: padded inputs are multiples of it
TOP_K = 100  # corners of each kind kept per image before pairing
EMBEDDING_THRESHOLD = 0.5  # corners farther apart in embedding do not form a box (CornerNet: 0.5)
SCORE_THRESH = 0.05  # pairs below this mean corner score are dropped before NMS
NMS_IOU = 0.5
GEOMETRY_IOU = 0.5  # a pair's box must overlap the box each corner predicts (corner + its size) this much
MIN_OVERLAP = 0.7  # Gaussian radius: corners within it still give boxes with IoU >= 0.7 (CornerNet)
PULL_WEIGHT = 0.1
PUSH_WEIGHT = 0.1
OFFSET_WEIGHT = 1.0
SIZE_WEIGHT = 1.0
# typical box (tile px): a 30 px PTC enlarged by its 40-50 px margins; starts the size regression
# there (at 0 = one cell it needs hundreds of steps to reach ~12 cells, and pairing waits for it)
BOX_SIZE_PRIOR = 110.0
POOL_STEPS = 8  # traced (OpenVINO) corner pooling reaches 2**8 cells
HEAT_PRIOR = 0.1  # initial corner probability (the heatmap bias), as in CornerNet / RetinaNet


def _conv_bn_relu(cin: int, cout: int, stride: int = 1, relu: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout)]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class Residual(nn.Module):
    """Two 3 x 3 convolutions and an identity skip (the hourglass' building block)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            _conv_bn_relu(channels, channels), _conv_bn_relu(channels, channels, relu=False)
        )

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(x + self.body(x))


class Hourglass(nn.Module):
    """Stem to stride 4, encoder to stride 32, decoder back to stride 4 with skip connections.

    ``channels`` (c0, c1, c2, c3): stride 2, stride 4, stride 8, stride 16 and 32. One output tensor
    (N, c1, H/4, W/4); H and W must be multiples of 32 (the model pads). Residual blocks only below
    stride 4, where they are cheap: a lighter stride-4 level (0.53 M parameters in all) trained to a
    higher held-out F1 in the same CPU time (more steps) than one with residual blocks there.
    """

    def __init__(self, channels: tuple[int, ...]) -> None:
        super().__init__()
        c0, c1, c2, c3 = channels
        self.stem = nn.Sequential(_conv_bn_relu(3, c0, 2), _conv_bn_relu(c0, c1, 2))
        self.down8 = nn.Sequential(_conv_bn_relu(c1, c2, 2), Residual(c2))
        self.down16 = nn.Sequential(_conv_bn_relu(c2, c3, 2), Residual(c3))
        self.down32 = nn.Sequential(_conv_bn_relu(c3, c3, 2), Residual(c3), Residual(c3))
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.merge16 = Residual(c3)
        self.proj8 = nn.Sequential(nn.Conv2d(c3, c2, 1, bias=False), nn.BatchNorm2d(c2))
        self.merge8 = Residual(c2)
        self.proj4 = nn.Sequential(nn.Conv2d(c2, c1, 1, bias=False), nn.BatchNorm2d(c1))
        self.merge4 = _conv_bn_relu(c1, c1)
        self.out_channels = c1

    def forward(self, x: Tensor) -> Tensor:
        f4 = self.stem(x)
        f8 = self.down8(f4)
        f16 = self.down16(f8)
        f32 = self.down32(f16)
        u16 = self.merge16(self.up(f32) + f16)
        u8 = self.merge8(self.proj8(self.up(u16)) + f8)
        return self.merge4(self.proj4(self.up(u8)) + f4)


def _shift_max(x: Tensor, dim: int, forward: bool, steps: int = POOL_STEPS) -> Tensor:
    """Running maximum by doubling shifts (traceable, no ``cummax``): ``forward`` takes the maximum
    over index >= i, else <= i, exactly for sizes up to ``2**steps`` along ``dim`` (-1 or -2)."""
    for s in range(steps):
        k = 1 << s
        pad = [0, 0, 0, 0]
        pad[(0 if dim == -1 else 2) + (1 if forward else 0)] = k
        padded = F.pad(x, pad, value=float("-inf"))
        if dim == -1:
            shifted = padded[..., k:] if forward else padded[..., :-k]
        else:
            shifted = padded[..., k:, :] if forward else padded[..., :-k, :]
        x = torch.maximum(x, shifted)
    return x


def corner_pool(x: Tensor, corner: str, steps: int = POOL_STEPS) -> tuple[Tensor, Tensor]:
    """(horizontal, vertical) corner pooling of a map (N, C, H, W).

    ``"tl"``: at (i, j) the maximum over columns j' >= j of row i, and over rows i' >= i of column j
    (what lies right of and below a top-left corner); ``"br"``: j' <= j and i' <= i. When traced,
    doubling shifts reach ``2**steps`` cells.
    """
    if corner not in ("tl", "br"):
        raise ValueError(f"corner must be 'tl' or 'br', not {corner!r}")
    if torch.jit.is_tracing():  # OpenVINO's conversion: no cummax there
        forward = corner == "tl"
        return _shift_max(x, -1, forward, steps), _shift_max(x, -2, forward, steps)
    if corner == "tl":
        horizontal = x.flip(-1).cummax(-1).values.flip(-1)
        vertical = x.flip(-2).cummax(-2).values.flip(-2)
    else:
        horizontal = x.cummax(-1).values
        vertical = x.cummax(-2).values
    return horizontal, vertical


class CornerHead(nn.Module):
    """Corner pooling module + predictions of one corner kind: (N, K + 5, H, W) = K class
    heatmap logits, 1 embedding, 2 offsets (x, y) in cells, 2 log box sizes (w, h) in cells."""

    def __init__(self, channels: int, mid: int, num_fg: int, corner: str, size_prior: float = 1.0) -> None:
        super().__init__()
        self.corner = corner
        self.pool_steps = POOL_STEPS  # an attribute: the OpenVINO cache key hashes it with the weights
        self.branch_h = _conv_bn_relu(channels, mid)
        self.branch_v = _conv_bn_relu(channels, mid)
        self.fuse = _conv_bn_relu(mid, channels, relu=False)
        self.skip = nn.Sequential(nn.Conv2d(channels, channels, 1, bias=False), nn.BatchNorm2d(channels))
        self.conv = _conv_bn_relu(channels, channels)
        self.out = nn.Conv2d(channels, num_fg + 5, 1)
        nn.init.normal_(self.out.weight, std=0.01)
        nn.init.zeros_(self.out.bias)
        with torch.no_grad():
            self.out.bias[:num_fg] = -math.log((1 - HEAT_PRIOR) / HEAT_PRIOR)
            self.out.bias[num_fg + 3 :] = math.log(size_prior)

    def forward(self, x: Tensor) -> Tensor:
        horizontal, _ = corner_pool(self.branch_h(x), self.corner, self.pool_steps)
        _, vertical = corner_pool(self.branch_v(x), self.corner, self.pool_steps)
        y = F.relu(self.fuse(horizontal + vertical) + self.skip(x))
        return self.out(self.conv(y))


class CornerNetBody(nn.Module):
    """The dense part: hourglass + top-left and bottom-right corner heads, predictions concatenated
    into one tensor (N, 2 (K + 5), H/4, W/4) so that it converts to OpenVINO as one model."""

    def __init__(
        self,
        channels: tuple[int, ...],
        num_fg: int,
        head_channels: int | None = None,
        size_prior: float = 1.0,
    ) -> None:
        super().__init__()
        self.hourglass = Hourglass(channels)
        width = self.hourglass.out_channels
        mid = head_channels or channels[0]
        self.tl_head = CornerHead(width, mid, num_fg, "tl", size_prior)
        self.br_head = CornerHead(width, mid, num_fg, "br", size_prior)
        self.out_channels = 2 * (num_fg + 5)

    def forward(self, x: Tensor) -> Tensor:
        feats = self.hourglass(x)
        return torch.cat([self.tl_head(feats), self.br_head(feats)], 1)


# -- targets and losses ------------------------------------------------------------------------


def gaussian_radius(height: Tensor, width: Tensor, min_overlap: float = MIN_OVERLAP) -> Tensor:
    """CornerNet's radius (in cells) within which a corner still gives a box of IoU >= ``min_overlap``
    with the true one (the smallest root of the three cases of the original code)."""
    a1, b1 = 1.0, height + width
    c1 = width * height * (1 - min_overlap) / (1 + min_overlap)
    r1 = (b1 + torch.sqrt(b1**2 - 4 * a1 * c1)) / 2
    a2, b2 = 4.0, 2 * (height + width)
    c2 = (1 - min_overlap) * width * height
    r2 = (b2 + torch.sqrt(b2**2 - 4 * a2 * c2)) / 2
    a3, b3 = 4 * min_overlap, -2 * min_overlap * (height + width)
    c3 = (min_overlap - 1) * width * height
    r3 = (b3 + torch.sqrt(b3**2 - 4 * a3 * c3)) / 2
    return torch.minimum(torch.minimum(r1, r2), r3)


def corner_targets(
    boxes: Tensor, labels: Tensor, num_fg: int, size: tuple[int, int], stride: int = STRIDE
) -> dict[str, Tensor]:
    """Training targets of one image on a (H, W) heatmap grid from boxes in model pixels.

    Returns ``tl_heat``/``br_heat`` (K, H, W): penalty-reduced Gaussians, exactly 1 at each corner's
    cell; ``tl_index``/``br_index`` (N,): flat cell index (class-free) of each box's corners;
    ``tl_offset``/``br_offset`` (N, 2): the corner's sub-cell position (x, y) in [0, 1); ``size``
    (N, 2): log of the box's width and height in cells (what both corners regress).
    """
    h, w = size
    device = boxes.device
    heat = {k: torch.zeros(num_fg, h, w, device=device) for k in ("tl", "br")}
    out: dict[str, Tensor] = {}
    if len(boxes) == 0:
        for k in ("tl", "br"):
            out[f"{k}_heat"] = heat[k]
            out[f"{k}_index"] = torch.zeros(0, dtype=torch.int64, device=device)
            out[f"{k}_offset"] = torch.zeros(0, 2, device=device)
        out["size"] = torch.zeros(0, 2, device=device)
        return out
    cells = boxes / stride
    out["size"] = torch.log((cells[:, 2:] - cells[:, :2]).clamp(min=0.1))
    radius = gaussian_radius(cells[:, 3] - cells[:, 1], cells[:, 2] - cells[:, 0]).clamp(min=0).floor()
    sigma = (2 * radius + 1) / 6
    ys = torch.arange(h, device=device, dtype=torch.float32)[None, :, None]
    xs = torch.arange(w, device=device, dtype=torch.float32)[None, None, :]
    limit = torch.tensor([w, h], device=device, dtype=torch.float32) - 1e-3
    for k, cols in (("tl", [0, 1]), ("br", [2, 3])):
        pos = torch.minimum(cells[:, cols].clamp(min=0), limit)
        cell = pos.floor()
        cx, cy = cell[:, 0, None, None], cell[:, 1, None, None]
        d2 = (xs - cx) ** 2 + (ys - cy) ** 2
        r = radius[:, None, None]
        g = torch.exp(-d2 / (2 * sigma[:, None, None] ** 2))
        g = torch.where(((xs - cx).abs() <= r) & ((ys - cy).abs() <= r), g, torch.zeros_like(g))
        for c in range(num_fg):
            mine = labels - 1 == c
            if mine.any():
                heat[k][c] = g[mine].amax(0)
        out[f"{k}_heat"] = heat[k]
        out[f"{k}_index"] = (cell[:, 1] * w + cell[:, 0]).long()
        out[f"{k}_offset"] = pos - cell
    return out


def focal_heatmap_loss(logits: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """CornerNet's penalty-reduced focal loss, summed (``(loss_sum, positives)``): positives weigh
    (1 - p)^2, negatives p^2 (1 - y)^4, so cells near a corner are penalised less."""
    p = torch.sigmoid(logits.float()).clamp(1e-4, 1 - 1e-4)
    pos = target.eq(1).float()
    neg_w = (1 - target).pow(4) * (1 - pos)
    loss = -(torch.log(p) * (1 - p).pow(2) * pos + torch.log(1 - p) * p.pow(2) * neg_w).sum()
    return loss, pos.sum()


def embedding_losses(tl: Tensor, br: Tensor) -> tuple[Tensor, Tensor]:
    """Pull (corners of one box together) and push (boxes apart by a margin of 1) of one image."""
    mean = (tl + br) / 2
    pull = ((tl - mean) ** 2 + (br - mean) ** 2).mean()
    n = len(mean)
    if n < 2:
        return pull, mean.sum() * 0
    dist = (mean[:, None] - mean[None, :]).abs()
    off_diag = 1 - torch.eye(n, device=mean.device)
    push = (F.relu(1 - dist) * off_diag).sum() / (n * (n - 1))
    return pull, push


# -- the detector --------------------------------------------------------------------------------


class CornerNet(nn.Module):
    """Light CornerNet with torchvision's detection call (see the module docstring)."""

    def __init__(
        self,
        *,
        num_classes: int,
        channels: tuple[int, ...],
        input_scale: float,
        image_mean: tuple[float, ...],
        image_std: tuple[float, ...],
        detections_per_img: int = 300,
        head_channels: int | None = None,
    ) -> None:
        super().__init__()
        if len(channels) != 4:
            raise ValueError(f"CornerNet needs 4 channel widths, got {tuple(channels)}")
        self.num_fg = int(num_classes) - 1
        self.input_scale = float(input_scale)
        self.detections_per_img = int(detections_per_img)
        prior = BOX_SIZE_PRIOR * self.input_scale / STRIDE  # cells
        self.backbone = CornerNetBody(tuple(channels), self.num_fg, head_channels, size_prior=prior)
        self.register_buffer("image_mean", torch.tensor(image_mean).view(-1, 1, 1), persistent=False)
        self.register_buffer("image_std", torch.tensor(image_std).view(-1, 1, 1), persistent=False)

    # -- input ------------------------------------------------------------------------------------
    def _batch(self, images: list[Tensor]) -> tuple[Tensor, list[tuple[int, int]], list[tuple[int, int]]]:
        """Normalise, rescale by ``input_scale`` and zero-pad to a multiple of 32 (one batch)."""
        originals, sizes, scaled = [], [], []
        for img in images:
            h, w = img.shape[-2:]
            originals.append((h, w))
            x = (img - self.image_mean.to(img.dtype)) / self.image_std.to(img.dtype)
            if self.input_scale != 1.0:
                size = (max(1, round(h * self.input_scale)), max(1, round(w * self.input_scale)))
                x = F.interpolate(
                    x[None], size=size, mode="bilinear", align_corners=False, antialias=self.input_scale < 1
                )[0]
            sizes.append(tuple(x.shape[-2:]))
            scaled.append(x)
        ph = max(s[0] for s in sizes)
        pw = max(s[1] for s in sizes)
        ph, pw = (math.ceil(v / SIZE_DIVISIBLE) * SIZE_DIVISIBLE for v in (ph, pw))
        batch = scaled[0].new_zeros(len(scaled), scaled[0].shape[0], ph, pw)
        for b, x in zip(batch, scaled):
            b[:, : x.shape[-2], : x.shape[-1]].copy_(x)
        return batch, originals, sizes

    def forward(self, images: list[Tensor], targets: list[dict[str, Tensor]] | None = None) -> Any:
        """Train mode: dict of scalar losses (targets: ``boxes`` xyxy tile px, ``labels`` 1|2 per
        image); eval mode: per image ``boxes`` (tile px, clipped), ``labels``, ``scores``."""
        if self.training and targets is None:
            raise ValueError("in training mode CornerNet needs targets")
        batch, originals, sizes = self._batch(images)
        tl, br = self.backbone(batch).split(self.num_fg + 5, dim=1)
        if self.training:
            scales = [
                torch.tensor([s[1] / o[1], s[0] / o[0]] * 2, device=batch.device)
                for s, o in zip(sizes, originals)
            ]
            return self.losses(tl, br, [{**t, "boxes": t["boxes"] * r} for t, r in zip(targets, scales)])
        return self.decode(tl, br, originals, sizes)

    # -- training ---------------------------------------------------------------------------------
    def losses(self, tl: Tensor, br: Tensor, targets: list[dict[str, Tensor]]) -> dict[str, Tensor]:
        """Heatmap focal loss (per positive), pull / push (per image with boxes), offset and size
        L1 (per corner)."""
        k = self.num_fg
        h, w = tl.shape[-2:]
        heat_sum = tl.new_zeros(())
        positives = tl.new_zeros(())
        pull = push = off = size = tl.new_zeros(())
        n_img = n_corners = 0
        for i, t in enumerate(targets):
            tg = corner_targets(t["boxes"].float(), t["labels"], k, (h, w))
            for pred, key in ((tl[i], "tl"), (br[i], "br")):
                loss, n = focal_heatmap_loss(pred[:k], tg[f"{key}_heat"])
                heat_sum = heat_sum + loss
                positives = positives + n
            if len(tg["tl_index"]) == 0:
                continue
            flat_tl, flat_br = tl[i].flatten(1).float(), br[i].flatten(1).float()
            e_tl, e_br = flat_tl[k, tg["tl_index"]], flat_br[k, tg["br_index"]]
            p, q = embedding_losses(e_tl, e_br)
            pull, push, n_img = pull + p, push + q, n_img + 1
            for flat, key in ((flat_tl, "tl"), (flat_br, "br")):
                pred_off = flat[k + 1 : k + 3, tg[f"{key}_index"]].t()
                off = off + F.smooth_l1_loss(pred_off, tg[f"{key}_offset"], reduction="sum")
                pred_size = flat[k + 3 : k + 5, tg[f"{key}_index"]].t()
                size = size + F.smooth_l1_loss(pred_size, tg["size"], reduction="sum")
            n_corners += 2 * len(tg["tl_index"])
        return {
            "loss_heatmap": heat_sum / positives.clamp(min=1),
            "loss_pull": PULL_WEIGHT * pull / max(1, n_img),
            "loss_push": PUSH_WEIGHT * push / max(1, n_img),
            "loss_offset": OFFSET_WEIGHT * off / max(1, n_corners),
            "loss_size": SIZE_WEIGHT * size / max(1, n_corners),
        }

    # -- inference --------------------------------------------------------------------------------
    def _top_corners(self, pred: Tensor, k_top: int) -> dict[str, Tensor]:
        """Top-k corner peaks (3 x 3 local maxima) of one image: score, class, x, y (model px),
        embedding, and the width and height (model px) of the box the corner predicts."""
        k = self.num_fg
        heat = torch.sigmoid(pred[:k].float())
        heat = heat * (F.max_pool2d(heat[None], 3, 1, 1)[0] == heat)
        h, w = heat.shape[-2:]
        scores, idx = heat.flatten().topk(min(k_top, heat.numel()))
        cell = idx % (h * w)
        flat = pred.flatten(1).float()[:, cell]
        size = torch.exp(flat[k + 3 : k + 5].clamp(max=8.0)) * STRIDE
        return {
            "score": scores,
            "cls": idx // (h * w),
            "x": ((cell % w).float() + flat[k + 1]) * STRIDE,
            "y": ((cell // w).float() + flat[k + 2]) * STRIDE,
            "emb": flat[k],
            "w": size[0],
            "h": size[1],
        }

    @staticmethod
    def pair_corners(tl: dict[str, Tensor], br: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """(valid (T, B), score (T, B)) of every top-left / bottom-right pair: same class, the
        bottom-right corner below and right, close embeddings, and a box that overlaps the box each
        corner predicts by :data:`GEOMETRY_IOU`; the score is the mean of the two corner scores."""
        pw = br["x"][None, :] - tl["x"][:, None]
        ph = br["y"][None, :] - tl["y"][:, None]
        valid = (
            (tl["cls"][:, None] == br["cls"][None, :])
            & (pw > 0)
            & (ph > 0)
            & ((tl["emb"][:, None] - br["emb"][None, :]).abs() < EMBEDDING_THRESHOLD)
        )
        pw, ph = pw.clamp(min=0), ph.clamp(min=0)
        for corner, axis in ((tl, 0), (br, 1)):
            # the predicted box shares the corner with the pair's box: IoU from widths and heights
            w, h = corner["w"].unsqueeze(1 - axis), corner["h"].unsqueeze(1 - axis)
            inter = torch.minimum(pw, w) * torch.minimum(ph, h)
            iou = inter / (pw * ph + w * h - inter).clamp(min=1e-6)
            valid &= iou >= GEOMETRY_IOU
        score = (tl["score"][:, None] + br["score"][None, :]) / 2
        return valid, score

    def decode(
        self, tl: Tensor, br: Tensor, originals: list[tuple[int, int]], sizes: list[tuple[int, int]]
    ) -> list[dict[str, Tensor]]:
        """Pair corners into boxes (:meth:`pair_corners`), NMS per class, back to tile pixels, clipped."""
        from torchvision.ops import batched_nms, clip_boxes_to_image

        results = []
        for i, ((oh, ow), (sh, sw)) in enumerate(zip(originals, sizes)):
            c1, c2 = self._top_corners(tl[i], TOP_K), self._top_corners(br[i], TOP_K)
            valid, score = self.pair_corners(c1, c2)
            score = torch.where(valid, score, torch.full_like(score, -1))
            score, idx = score.flatten().topk(min(self.detections_per_img, score.numel()))
            keep = score > SCORE_THRESH
            score, idx = score[keep], idx[keep]
            a, b = idx // len(c2["x"]), idx % len(c2["x"])
            boxes = torch.stack([c1["x"][a], c1["y"][a], c2["x"][b], c2["y"][b]], 1)
            boxes = boxes * torch.tensor([ow / sw, oh / sh] * 2, device=boxes.device)
            boxes = clip_boxes_to_image(boxes, (oh, ow))
            labels = c1["cls"][a] + 1
            keep = batched_nms(boxes, score, labels, NMS_IOU)[: self.detections_per_img]
            results.append({"boxes": boxes[keep], "labels": labels[keep].long(), "scores": score[keep]})
        return results


def build_cornernet(*, config: DetectorConfig) -> CornerNet:
    """The light CornerNet of a :class:`~medseg.pathology.detector.DetectorConfig` (its channel widths,
    ``input_scale``, normalisation, classes and detections per image; anchors are not used)."""
    return CornerNet(
        num_classes=config.num_classes,
        channels=tuple(config.channels),
        input_scale=config.input_scale,
        image_mean=tuple(config.image_mean),
        image_std=tuple(config.image_std),
        detections_per_img=config.detections_per_img,
    )
