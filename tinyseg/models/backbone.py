"""MobileNetV2-style backbone (inverted residuals, linear bottlenecks) with a width multiplier, in plain PyTorch.

Trained from scratch, so: BatchNorm after every conv, Kaiming init, zero-init of the last BN in each residual
block (every block starts as identity, which keeps a from-scratch net trainable with a high learning rate).
"""

from __future__ import annotations

import torch
from torch import nn

from tinyseg.models.layers import ConvBNAct, make_divisible


class InvertedResidual(nn.Module):
    """1x1 expand -> 3x3 depthwise (stride) -> 1x1 linear projection, with identity shortcut when shapes match.

    `fused=True` is EfficientNetV2's Fused-MBConv: one full 3x3 conv replaces expand + depthwise. At high
    resolution that is faster on CPUs: one pass over the expanded map instead of three (see ModelConfig.fused)."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int, fused: bool = False):
        super().__init__()
        hidden = cin * expand
        layers: list[nn.Module] = []
        if fused:
            layers.append(ConvBNAct(cin, hidden, 3, stride))
        else:
            if expand != 1:
                layers.append(ConvBNAct(cin, hidden, 1))
            layers.append(ConvBNAct(hidden, hidden, 3, stride, groups=hidden))
        layers.append(ConvBNAct(hidden, cout, 1, act=False))
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout
        if self.residual:
            nn.init.zeros_(self.block[-1][1].weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x) if self.residual else self.block(x)


class MobileNetV2Backbone(nn.Module):
    """Returns {stride: feature} for strides 2, 4, 8, 16, 32: the neck fuses 4..32 into one stride-4 map; the
    stride-2 map gives the mask prototypes their fine detail.

    Attributes `channels` and `strides` report what each output carries.
    """

    BASE_CHANNELS = (16, 32, 64, 128, 256)  # stages at strides 2, 4, 8, 16, 32, before the width multiplier

    def __init__(self, width: float, depths: tuple[int, ...], expand: int, fused: int):
        super().__init__()
        if len(depths) != 5:
            raise ValueError(f"depths needs 5 entries (strides 2..32), got {depths}")
        chans = [make_divisible(c * width) for c in self.BASE_CHANNELS]
        self.stem = ConvBNAct(3, chans[0], 3, 2)
        stages = []
        cin = chans[0]
        for i, (c, n) in enumerate(zip(chans, depths)):
            blocks = []
            for j in range(n):
                stride = 2 if (j == 0 and i > 0) else 1
                fuse = j == 0 and 0 < i <= fused
                blocks.append(InvertedResidual(cin, c, stride, 1 if i == 0 else expand, fused=fuse))
                cin = c
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.ModuleList(stages)
        self.strides = (2, 4, 8, 16, 32)
        self.channels = dict(zip(self.strides, chans))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> dict[int, torch.Tensor]:
        out = {}
        x = self.stem(x)
        for s, stage in zip(self.strides, self.stages):
            x = stage(x)
            out[s] = x
        return out
