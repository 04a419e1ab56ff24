"""Mask branches. Each one turns the fused feature map into
  params   [B, P, h, w]  per-location mask parameters (read at each detected peak), and
  features [B, F, h, w]  a shared mask feature map,
and `assemble(params [B, N, P], features, centers [B, N, 2], boxes [B, N, 4]) -> logits [B, N, h, w]`.
The detector, the loss and the post-processing only use this interface, so CondInst's dynamic convolutions
and CenterMask's local shape + global saliency can be added beside the prototype design.
"""

from __future__ import annotations

import torch
from torch import nn

from tinyseg.models.heads import Head
from tinyseg.models.neck import SeparableConv


class PrototypeMasks(nn.Module):
    """YOLACT / YOLACT-Edge: K shared prototype masks; each peak predicts K coefficients;
    mask logits = coefficients . prototypes (one batched MatMul, exportable as is)."""

    def __init__(self, cin: int, hidden: int, num_prototypes: int):
        super().__init__()
        self.protonet = nn.Sequential(
            SeparableConv(cin, hidden), SeparableConv(hidden, hidden), nn.Conv2d(hidden, num_prototypes, 1)
        )
        self.coefficients = Head(cin, hidden, num_prototypes)
        nn.init.normal_(self.coefficients.out.weight, std=0.1)  # non-zero start: masks differ from the first step
        self.num_params = num_prototypes

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.coefficients(x), self.protonet(x)

    def assemble(self, params: torch.Tensor, features: torch.Tensor, centers: torch.Tensor | None = None,
                 boxes: torch.Tensor | None = None) -> torch.Tensor:
        b, k, h, w = features.shape
        return torch.bmm(params, features.reshape(b, k, h * w)).reshape(b, -1, h, w)


def build_mask_head(kind: str, cin: int, hidden: int, num_prototypes: int) -> nn.Module:
    if kind == "prototypes":
        return PrototypeMasks(cin, hidden, num_prototypes)
    raise ValueError(f"unknown mask head {kind!r} (available: prototypes)")
