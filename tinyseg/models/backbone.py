"""MobileNetV2-style backbone (inverted residuals, linear bottlenecks) with a width multiplier, in plain PyTorch.

Trained from scratch, so: BatchNorm after every conv, Kaiming init, zero-init of the last BN in each residual
block (every block starts as identity, which keeps a from-scratch net trainable with a high learning rate).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def make_divisible(v: float, divisor: int = 8, min_value: int = 16) -> int:
    return max(min_value, int(v + divisor / 2) // divisor * divisor)


class StridedDepthwiseConv(nn.Conv2d):
    """A strided depthwise conv that trains fast on CPUs. PyTorch's CPU backward of a strided depthwise conv is
    slow. The stride-1 conv over all pixels, keeping every `stride`-th output, gives the same numbers (same
    weights and padding: output (i, j) of the strided conv is output (s*i, s*j) of the stride-1 one) and trains
    faster: conv + BN + ReLU, forward + backward, batch 8, bf16 autocast, channels-last: 64 ch 80->40 22 -> 16 ms,
    128 ch 40->20 17 -> 5.5 ms, 256 ch 20->10 13 -> 2.8 ms. The subsampled view is made contiguous: BN on the
    strided view was 2-5x slower. CPU training takes this path; inference, CUDA and export the plain strided
    conv. (For full convs the stride-1 detour is 3x slower: they keep the stride.)"""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and x.is_cpu and torch.is_grad_enabled()):
            return super().forward(x)
        sy, sx = self.stride
        y = F.conv2d(x, self.weight, self.bias, 1, self.padding, self.dilation, self.groups)
        cl = x.is_contiguous(memory_format=torch.channels_last)
        return y[:, :, ::sy, ::sx].contiguous(memory_format=torch.channels_last if cl else torch.contiguous_format)


class ConvBNAct(nn.Sequential):
    def __init__(self, cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1, act: bool = True):
        conv = StridedDepthwiseConv if stride > 1 and groups == cin == cout > 1 else nn.Conv2d
        layers: list[nn.Module] = [
            conv(cin, cout, k, stride, k // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout),
        ]
        if act:
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


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

    def __init__(self, width: float = 0.5, depths: tuple[int, ...] = (1, 2, 2, 3, 2), expand: int = 4, fused: int = 0):
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
