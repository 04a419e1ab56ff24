"""A light FPN: lateral 1x1 convs, top-down nearest upsampling + add, fused into one stride-4 map.

Stride 4 rather than 8: objects of 8 px (and DSB2018's touching nuclei, ~3-5 px apart at 320) need their
centres in different cells of the heatmap; at stride 8 many would collide.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tinyseg.models.layers import ConvBNAct, SeparableConv


class FPNFuse(nn.Module):
    def __init__(self, in_channels: dict[int, int], out_channels: int):
        super().__init__()
        self.strides = sorted(in_channels)
        self.lateral = nn.ModuleDict({str(s): ConvBNAct(in_channels[s], out_channels, 1) for s in self.strides})
        # One smoothing conv per merge, so upsampled coarse features are blended, not just pasted.
        self.smooth = nn.ModuleDict({str(s): SeparableConv(out_channels, out_channels) for s in self.strides[:-1]})
        self.out_channels = out_channels
        self.stride = self.strides[0]

    def forward(self, feats: dict[int, torch.Tensor]) -> torch.Tensor:
        """feats {stride: [B, C_s, S/s, S/s]} (extra strides are ignored) -> [B, out_channels, S/4, S/4]."""
        x = self.lateral[str(self.strides[-1])](feats[self.strides[-1]])
        for s in reversed(self.strides[:-1]):
            x = F.interpolate(x, scale_factor=2.0, mode="nearest") + self.lateral[str(s)](feats[s])
            x = self.smooth[str(s)](x)
        return x
