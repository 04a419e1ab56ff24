"""Mask branches. Each one turns the fused stride-4 map (plus the backbone's stride-2 map) into
  params   [B, P, h, w]    per-location mask parameters at stride 4 (read at each detected peak), and
  features [B, F, H, W]    a shared mask feature map at stride 2,
and `assemble(params [B, N, P], features, centers [B, N, 2], boxes [B, N, 4]) -> logits [B, N, H, W]`, and
`assemble_at(params, features, centers, boxes, index [B, N, M]) -> logits [B, N, M]` at M flat cells per mask
(inside its box), without building the full masks: the shape classifier's samples, and
`assemble_cells(params, features, centers, boxes, instance [Q], cell [Q]) -> logits [Q]` for a list of
(instance into B * N, flat cell) pairs: the loss reads each mask only inside its box.

Why stride 2 for the masks: ground truth resampled to stride 4 and back already loses much of the mask AP of
small objects (docs/design.md); they need the finer grid.
The detector only uses this interface; the three designs of the family sit behind it: YOLACT's prototypes,
CondInst's dynamic convolutions (which read `centers`) and CenterMask's local shape + global saliency (`boxes`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tinyseg.config import MASK_HEADS
from tinyseg.errors import ConfigError
from tinyseg.models.heads import Head
from tinyseg.models.layers import ConvBNAct, SeparableConv


def flat_rows(index: torch.Tensor, cells: int) -> torch.Tensor:
    """Cell indices [B, ...] into each image's `cells` cells -> the same cells' rows in the B images' cells stacked
    [B * cells, ...]. Read through this, a gather is one 1-D Gather in an exported graph; a gather along an inner
    dimension becomes a GatherND whose coordinates a static-shape converter stores as constants of the index's
    full shape (megabytes in a .tflite)."""
    offset = torch.arange(index.shape[0], device=index.device) * cells
    return index + offset.reshape(-1, *[1] * (index.dim() - 1))


def prototype_table(features: torch.Tensor) -> torch.Tensor:
    """Prototypes [B, K, h, w] -> [B, h * w, K] (channels last), the one layout both the mask MatMul and the
    silhouette Gather read. OpenVINO's CPU plugin keeps this conv output channels-last: read as [B, K, h * w]
    it would be reordered to planar for each reader; ONNX Runtime fuses the transposed MatMul."""
    b, k, h, w = features.shape
    return features.permute(0, 2, 3, 1).reshape(b, h * w, k)


class PrototypeMasks(nn.Module):
    """YOLACT / YOLACT-Edge: K shared prototype masks; each peak predicts K coefficients;
    mask logits = coefficients . prototypes (one batched MatMul, exportable as is)."""

    def __init__(self, cin: int, fine_channels: int, hidden: int, num_prototypes: int):
        super().__init__()
        k = num_prototypes
        # Prototypes are formed at stride 4 (context) and upsampled; a thin stride-2 path adds edge detail.
        # Everything at stride 2 has only K channels: at 160x160 each extra channel costs more than it gives.
        self.coarse = nn.Sequential(SeparableConv(cin, hidden), nn.Conv2d(hidden, k, 1))
        self.fine = nn.Sequential(ConvBNAct(fine_channels, k, 1), ConvBNAct(k, k, 3, groups=k), nn.Conv2d(k, k, 1))
        self.coefficients = Head(cin, hidden, num_prototypes)
        nn.init.normal_(self.coefficients.out.weight, std=0.1)  # non-zero start: masks differ from the first step
        self.num_params = num_prototypes

    def forward(self, x: torch.Tensor, fine: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B, C, S/4, S/4] fused map, fine [B, C2, S/2, S/2] -> (coefficients [B, K, S/4, S/4],
        prototypes [B, K, S/2, S/2])."""
        up = F.interpolate(self.coarse(x), scale_factor=2.0, mode="bilinear", align_corners=False)
        return self.coefficients(x), up + self.fine(fine)

    def assemble(
        self,
        params: torch.Tensor,
        features: torch.Tensor,
        centers: torch.Tensor | None = None,
        boxes: torch.Tensor | None = None,
    ) -> torch.Tensor:
        b, k, h, w = features.shape
        return torch.bmm(params, prototype_table(features).transpose(1, 2)).reshape(b, -1, h, w)

    def assemble_at(
        self,
        params: torch.Tensor,
        features: torch.Tensor,
        centers: torch.Tensor | None,
        boxes: torch.Tensor | None,
        index: torch.Tensor,
    ) -> torch.Tensor:
        # Each sample is one row Gather of the table (K contiguous floats) and a dot product, instead of K
        # element-wise gathers.
        b, k, h, w = features.shape
        n, m = index.shape[1:]
        rows = flat_rows(index, h * w).reshape(b, n * m)
        if (h * w) % 2:
            picked = prototype_table(features).reshape(b * h * w, k)[rows].reshape(b, n, m, k)
            return (picked @ params.unsqueeze(-1)).squeeze(-1)
        # Rows of two cells (2K floats), then the dot products with both and a select: OpenVINO's CPU plugin
        # gathers rows of <= 16 floats with a slow vector-gather kernel in a static-shape graph.
        pairs = prototype_table(features).reshape(b * h * w // 2, 2 * k)[rows // 2].reshape(b, n, m * 2, k)
        dots = (pairs @ params.unsqueeze(-1)).reshape(b, n, m, 2)
        return torch.where((rows % 2 == 1).reshape(b, n, m), dots[..., 1], dots[..., 0])

    def assemble_cells(
        self,
        params: torch.Tensor,
        features: torch.Tensor,
        centers: torch.Tensor | None,
        boxes: torch.Tensor | None,
        instance: torch.Tensor,
        cell: torch.Tensor,
    ) -> torch.Tensor:
        # Training: a different number of cells per instance (its box), as flat (instance, cell) pairs.
        b, k, h, w = features.shape
        image = instance // params.shape[1]
        table = prototype_table(features).reshape(b * h * w, k)
        rows, coefficients = table[image * (h * w) + cell], params.reshape(-1, params.shape[-1])[instance]
        return (rows.float() * coefficients.float()).sum(-1)  # fp32 sums under bf16 autocast, like a MatMul's


class DynamicConvMasks(nn.Module):
    """CondInst (Tian et al., ECCV 2020): each peak predicts the weights of a tiny mask FCN, three 1x1 dynamic
    convs (8 channels, 169 parameters), run on a shared 8-channel mask feature map concatenated with the pixel
    coordinates relative to the peak. The relative coordinates place the mask, so no box crop is needed. Every
    dynamic conv is a batched MatMul over the instances (exportable as is)."""

    CHANNELS = 8
    SHAPES = ((8, 10), (8,), (8, 8), (8,), (1, 8), (1,))  # W1, b1, W2, b2, W3, b3
    SIZES = tuple(int(torch.tensor(s).prod()) for s in SHAPES)
    REL_SCALE = 64.0  # px: relative coordinates in units a typical object spans (CondInst's size of interest)
    # The hidden dynamic convs' activation: leaky, not the paper's ReLU. With ReLU, one large early step could shut
    # every hidden unit for every pixel, and a mask stuck at its box's mean receives no gradient again (it
    # happened in benchmark runs, starting open or not); a leaky unit always passes some.
    LEAK = 0.1

    def __init__(self, cin: int, fine_channels: int, hidden: int, head_stride: int, mask_stride: int):
        super().__init__()
        c = self.CHANNELS
        self.coarse = nn.Sequential(SeparableConv(cin, hidden), nn.Conv2d(hidden, c, 1))
        self.fine = nn.Sequential(ConvBNAct(fine_channels, c, 1), ConvBNAct(c, c, 3, groups=c), nn.Conv2d(c, c, 1))
        self.num_params = sum(self.SIZES)
        self.controller = Head(cin, hidden, self.num_params)
        nn.init.normal_(self.controller.out.weight, std=0.1)  # non-zero start: the dynamic convs pass gradients
        self._open_hidden_units(self.controller.out.bias)
        self.head_stride, self.mask_stride = head_stride, mask_stride

    def _open_hidden_units(self, bias: torch.Tensor) -> None:
        """Start the dynamic convs' hidden biases at +1: with zero biases a seed could start (and stay) with every
        ReLU shut, a mask stuck at 0.5 that no gradient can reach."""
        starts = torch.tensor((0,) + self.SIZES).cumsum(0)
        with torch.no_grad():
            for hidden_bias in (1, 3):  # b1, b2
                bias[starts[hidden_bias] : starts[hidden_bias + 1]] = 1.0

    def forward(self, x: torch.Tensor, fine: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (controller outputs [B, 169, S/4, S/4], mask features [B, 8, S/2, S/2])."""
        up = F.interpolate(self.coarse(x), scale_factor=2.0, mode="bilinear", align_corners=False)
        return self.controller(x), up + self.fine(fine)

    def _relative(self, cells: torch.Tensor, width: int, centers: torch.Tensor) -> torch.Tensor:
        """Flat mask cells [..., M] and peak cells [..., 2] (leading dims that broadcast) -> the cells' centres
        relative to the peak's [..., 2, M], in REL_SCALE units."""
        px = (cells % width + 0.5) * self.mask_stride
        py = (cells // width + 0.5) * self.mask_stride
        c = (centers.to(px.dtype) + 0.5) * self.head_stride
        return torch.stack([px - c[..., 0:1], py - c[..., 1:2]], -2) / self.REL_SCALE

    def _mlp(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """params [..., 169], x [..., 10, M] -> logits [..., M]: the three dynamic 1x1 convs."""
        w1, b1, w2, b2, w3, b3 = torch.split(params.to(x.dtype), self.SIZES, -1)
        lead = params.shape[:-1]
        h = F.leaky_relu(w1.reshape(*lead, 8, 10) @ x + b1.unsqueeze(-1), self.LEAK)
        h = F.leaky_relu(w2.reshape(*lead, 8, 8) @ h + b2.unsqueeze(-1), self.LEAK)
        return (w3.reshape(*lead, 1, 8) @ h + b3.unsqueeze(-1))[..., 0, :]  # not squeeze: an If node in ONNX

    def assemble(self, params, features, centers=None, boxes=None) -> torch.Tensor:
        b, c, h, w = features.shape
        n = params.shape[1]
        # Broadcast, not expanded: a converter that traces static shapes folds an expanded arange, and all that is
        # computed from it, into [B, K, M] constants (tens of MB in a .tflite).
        cells = torch.arange(h * w, device=features.device).reshape(1, 1, h * w)
        feats = features.reshape(b, 1, c, h * w).expand(b, n, c, h * w)
        x = torch.cat([feats, self._relative(cells, w, centers)], 2)
        return self._mlp(params, x).reshape(b, n, h, w)

    def assemble_at(self, params, features, centers, boxes, index) -> torch.Tensor:
        b, c, h, w = features.shape
        n, m = index.shape[1:]
        table = features.permute(0, 2, 3, 1).reshape(b * h * w, c)  # one row per cell
        feats = table[flat_rows(index, h * w)].reshape(b, n, m, c).transpose(2, 3)
        x = torch.cat([feats, self._relative(index, w, centers)], 2)
        return self._mlp(params, x)

    def assemble_cells(self, params, features, centers, boxes, instance, cell) -> torch.Tensor:
        b, c, h, w = features.shape
        image = instance // params.shape[1]
        feats = features.permute(0, 2, 3, 1).reshape(b * h * w, c)[image * (h * w) + cell]
        rel = self._relative(cell.unsqueeze(-1), w, centers.reshape(-1, 2)[instance])  # [Q, 2, 1]
        x = torch.cat([feats.unsqueeze(-1), rel], 1).float()  # [Q, 10, 1]: fp32 sums under bf16 autocast
        return self._mlp(params.reshape(-1, params.shape[-1])[instance].float(), x)[:, 0]


class ShapeSaliencyMasks(nn.Module):
    """CenterMask (Wang et al., CVPR 2020): each peak predicts a coarse S x S Local Shape, pasted (bilinear) into
    its box; a class-agnostic Global Saliency map at stride 2 gives the detail; mask = sigmoid(shape) *
    sigmoid(saliency), zero outside the box. The S x S shape is a linear map of a per-peak code, which equals the
    paper's S^2-channel 1x1 conv read at the peak at a fraction of the cost of computing it at every cell."""

    SIZE = 32  # S: the paper's local shape size
    OUTSIDE = -30.0  # shape logit outside the box: the mask is 0 there

    def __init__(self, cin: int, fine_channels: int, hidden: int, mask_stride: int):
        super().__init__()
        self.coarse = nn.Sequential(SeparableConv(cin, hidden), nn.Conv2d(hidden, 1, 1))
        self.fine = nn.Sequential(ConvBNAct(fine_channels, 8, 1), ConvBNAct(8, 8, 3, groups=8), nn.Conv2d(8, 1, 1))
        self.code = SeparableConv(cin, hidden)
        self.shape = nn.Linear(hidden, self.SIZE * self.SIZE)
        self.num_params = hidden
        self.mask_stride = mask_stride

    def forward(self, x: torch.Tensor, fine: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (shape codes [B, hidden, S/4, S/4], saliency logits [B, 1, S/2, S/2])."""
        up = F.interpolate(self.coarse(x), scale_factor=2.0, mode="bilinear", align_corners=False)
        return self.code(x), up + self.fine(fine)

    def _corners(
        self, boxes: torch.Tensor, cells: torch.Tensor, width: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """boxes [..., 4] xyxy pixels, flat mask cells [..., M] -> where the S x S shape, resized to the box
        (bilinear, half-pixel centres), is read at each cell: index [..., M, 4] of the four neighbours in S*S,
        their weights [..., M, 4], and inside [..., M] (the cell's centre is in the box)."""
        s = self.SIZE
        px = (cells % width + 0.5) * self.mask_stride
        py = (cells // width + 0.5) * self.mask_stride
        x1, y1, x2, y2 = (boxes[..., i : i + 1].float() for i in range(4))
        inside = (px >= x1) & (px <= x2) & (py >= y1) & (py <= y2)
        u = ((px - x1) / (x2 - x1).clamp(min=1.0) * s - 0.5).clamp(0, s - 1)
        v = ((py - y1) / (y2 - y1).clamp(min=1.0) * s - 0.5).clamp(0, s - 1)
        u0, v0 = u.floor(), v.floor()
        fu, fv = u - u0, v - v0
        u0, v0 = u0.long(), v0.long()
        u1, v1 = (u0 + 1).clamp(max=s - 1), (v0 + 1).clamp(max=s - 1)
        index = torch.stack([v0 * s + u0, v0 * s + u1, v1 * s + u0, v1 * s + u1], -1)
        weights = torch.stack([(1 - fu) * (1 - fv), fu * (1 - fv), (1 - fu) * fv, fu * fv], -1)
        return index, weights, inside

    def _paste(self, codes: torch.Tensor, boxes: torch.Tensor, cells: torch.Tensor, width: int) -> torch.Tensor:
        """codes [B, N, hidden], boxes [B, N, 4], cells [B, N, M] (or [1, 1, M]) -> shape logits [B, N, M], OUTSIDE
        off the box."""
        shape = self.shape(codes.float())  # [B, N, S*S]
        index, weights, inside = self._corners(boxes, cells, width)
        picked = shape.reshape(-1)[flat_rows(index.flatten(0, 1), shape.shape[-1])].reshape(index.shape)
        return torch.where(inside, (picked * weights).sum(-1), self.OUTSIDE)

    @staticmethod
    def _product(shape: torch.Tensor, saliency: torch.Tensor) -> torch.Tensor:
        """The logit of sigmoid(a) * sigmoid(b) = a + b - log(1 + e^a + e^b), computed with m = max(a, b, 0)
        factored out: stable for any a, b, and only elementwise ops (every runtime has them)."""
        a, b = shape, saliency.float()
        m = torch.clamp(torch.maximum(a, b), min=0.0)
        return a + b - m - torch.log(torch.exp(-m) + torch.exp(a - m) + torch.exp(b - m))

    def assemble(self, params, features, centers=None, boxes=None) -> torch.Tensor:
        b, _, h, w = features.shape
        n = params.shape[1]
        cells = torch.arange(h * w, device=features.device).reshape(1, 1, h * w)  # broadcast (DynamicConvMasks)
        shape = self._paste(params, boxes, cells, w)
        return self._product(shape, features.reshape(b, 1, h * w)).reshape(b, n, h, w)

    def assemble_at(self, params, features, centers, boxes, index) -> torch.Tensor:
        b, _, h, w = features.shape
        saliency = features.reshape(b * h * w)[flat_rows(index, h * w)]
        return self._product(self._paste(params, boxes, index, w), saliency)

    def assemble_cells(self, params, features, centers, boxes, instance, cell) -> torch.Tensor:
        b, _, h, w = features.shape
        image = instance // params.shape[1]
        saliency = features.reshape(b * h * w)[image * (h * w) + cell]
        shapes = self.shape(params.reshape(-1, params.shape[-1]).float())  # [B * N, S*S]: once per instance
        index, weights, inside = self._corners(boxes.reshape(-1, 4)[instance], cell.unsqueeze(-1), w)
        picked = shapes.reshape(-1)[instance.unsqueeze(-1) * shapes.shape[-1] + index[:, 0]]  # [Q, 4]
        shape = torch.where(inside[:, 0], (picked * weights[:, 0]).sum(-1), self.OUTSIDE)
        return self._product(shape, saliency)


def build_mask_head(
    kind: str, cin: int, fine_channels: int, hidden: int, num_prototypes: int, head_stride: int, mask_stride: int
) -> nn.Module:
    if kind == "prototypes":
        return PrototypeMasks(cin, fine_channels, hidden, num_prototypes)
    if kind == "condinst":
        return DynamicConvMasks(cin, fine_channels, hidden, head_stride, mask_stride)
    if kind == "centermask":
        return ShapeSaliencyMasks(cin, fine_channels, hidden, mask_stride)
    raise ConfigError(f"model.mask_head: unknown mask head {kind!r} (available: {', '.join(MASK_HEADS)})")
