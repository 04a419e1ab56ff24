"""CenterNet-style named heads on the fused stride-4 map: per-class centre heatmap and box distances."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from tinyseg.models.neck import SeparableConv

# Box distances are softplus(x) * BOX_SCALE input pixels: positive, smooth, ~11 px at init (x = 0).
BOX_SCALE = 16.0


class Head(nn.Module):
    """One separable 3x3 conv, then a 1x1 to `out` channels (CenterNet's heads: one 3x3 each; more depth at
    stride 4 costs more than it gives on a CPU budget)."""

    def __init__(self, cin: int, hidden: int, out: int, bias_init: float = 0.0):
        super().__init__()
        self.tower = SeparableConv(cin, hidden)
        self.out = nn.Conv2d(hidden, out, 1)
        nn.init.normal_(self.out.weight, std=0.01)
        nn.init.constant_(self.out.bias, bias_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.tower(x))


class HeatmapHead(Head):
    """Logits [B, C, h, w]; bias initialised to the prior p=0.01 (RetinaNet) so the focal loss starts calm."""

    def __init__(self, cin: int, hidden: int, num_classes: int, prior: float = 0.01):
        super().__init__(cin, hidden, num_classes, -math.log((1 - prior) / prior))


class BoxHead(Head):
    """Distances (left, top, right, bottom) from each cell centre to the box sides, in input pixels [B, 4, h, w].

    Chosen over CenterNet's size+offset with L1: trained with GIoU the loss is scale-free, so 8-px and 100-px
    objects pull equally, and every cell inside an object's Gaussian is a training sample (see targets.py).
    """

    def __init__(self, cin: int, hidden: int):
        super().__init__(cin, hidden, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.softplus(super().forward(x)) * BOX_SCALE
