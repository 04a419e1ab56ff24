"""Heads: CenterNet-style dense heads on the fused stride-4 map (centre heatmap + appearance class logits, box
distances) and the per-detection shape classifier."""

from __future__ import annotations

import math

import torch
from torch import nn

from tinyseg.models.layers import SeparableConv


class Head(nn.Module):
    """One separable 3x3 conv, then a 1x1 to `out` channels (CenterNet's heads: one 3x3 each; more depth at
    stride 4 costs more than it gives on a CPU budget)."""

    def __init__(self, cin: int, hidden: int, out: int):
        super().__init__()
        self.tower = SeparableConv(cin, hidden)
        self.out = nn.Conv2d(hidden, out, 1)
        nn.init.normal_(self.out.weight, std=0.01)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.tower(x))


class HeatmapHead(Head):
    """Logits [B, 1 + C, h, w]: channel 0 is a class-agnostic centre heatmap (bias initialised to the prior
    p=0.01, RetinaNet, so the focal loss starts calm), channels 1.. are appearance class logits, read where the
    centre heatmap peaks and added to the ShapeClassifier's logits."""

    def __init__(self, cin: int, hidden: int, num_classes: int, prior: float = 0.01):
        super().__init__(cin, hidden, 1 + num_classes)
        nn.init.constant_(self.out.bias[:1], -math.log((1 - prior) / prior))


class BoxHead(Head):
    """Raw distances (left, top, right, bottom) from each cell centre to the box sides [B, 4, h, w];
    `postprocess.decode_boxes` turns the few cells that are read into pixels.

    Chosen over CenterNet's size+offset with L1: trained with GIoU the loss is scale-free, so 8-px and 100-px
    objects pull equally, and every cell inside an object's Gaussian is a training sample (training/targets.py).
    """

    def __init__(self, cin: int, hidden: int):
        super().__init__(cin, hidden, 4)


class ShapeClassifier(nn.Module):
    """Class logits per detection = appearance logits at its peak + an MLP on its predicted mask sampled on a
    grid x grid lattice over its box (a silhouette: free of colour, texture and scale).

    Why: the silhouette is what tells the classes of shape-like data apart, and a classifier that sees it
    learns within the first few hundred steps, where a centre-cell classifier (CenterNet's per-class heatmap)
    stays at chance. Exportable: the samples are a Gather of grid^2 cells per detection (see points()), the
    MLP two Gemms."""

    def __init__(self, num_classes: int, grid: int = 16, hidden: int = 64):
        super().__init__()
        self.grid = grid
        self.mlp = nn.Sequential(nn.Linear(grid * grid, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, num_classes))

    def points(self, boxes: torch.Tensor, h: int, w: int, stride: int) -> torch.Tensor:
        """boxes [B, K, 4] xyxy pixels -> flat index [B, K, grid^2] of the stride-`stride` cells (of an h x w
        grid) under the centres of a grid x grid lattice of bins over each box."""
        t = (torch.arange(self.grid, device=boxes.device, dtype=boxes.dtype) + 0.5) / self.grid
        x = boxes[..., 0:1] + (boxes[..., 2:3] - boxes[..., 0:1]) * t  # [B, K, grid] pixels
        y = boxes[..., 1:2] + (boxes[..., 3:4] - boxes[..., 1:2]) * t
        ix = (x / stride).floor().clamp(0, w - 1).long()
        iy = (y / stride).floor().clamp(0, h - 1).long()
        return (iy.unsqueeze(-1) * w + ix.unsqueeze(-2)).flatten(-2)

    def sample(self, masks: torch.Tensor, boxes: torch.Tensor, stride: int) -> torch.Tensor:
        """masks [B, K, H, W] (0..1), boxes [B, K, 4] -> silhouettes [B, K, grid^2]."""
        b, k, h, w = masks.shape
        return masks.reshape(b, k, h * w).gather(2, self.points(boxes, h, w, stride))

    def forward(self, appearance: torch.Tensor, silhouettes: torch.Tensor) -> torch.Tensor:
        """appearance [B, K, C] logits, silhouettes [B, K, grid^2] in 0..1 -> class logits [B, K, C]."""
        return appearance + self.mlp(silhouettes * 2 - 1)
