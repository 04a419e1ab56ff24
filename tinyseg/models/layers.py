"""The building blocks every module of the network is made of: conv + BN + ReLU, separable conv, and a
strided depthwise conv that trains fast on CPUs."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def make_divisible(v: float, divisor: int = 8, min_value: int = 16) -> int:
    """Round a channel count to a multiple of `divisor` (vector-friendly), at least `min_value`."""
    return max(min_value, int(v + divisor / 2) // divisor * divisor)


class StridedDepthwiseConv(nn.Conv2d):
    """A strided depthwise conv that trains fast on CPUs, where PyTorch's backward of a strided depthwise conv
    is slow. The stride-1 conv over all pixels, keeping every `stride`-th output, gives the same numbers (same
    weights and padding: output (i, j) of the strided conv is output (s*i, s*j) of the stride-1 one) and its
    backward is fast. The subsampled view is made contiguous (BN on a strided view is slow). Only CPU training
    takes this path; inference, CUDA and export run the plain strided conv. Full convs keep their stride: for
    them the detour costs more than it saves (benchmarks/README.md)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and x.is_cpu and torch.is_grad_enabled()):
            return super().forward(x)
        sy, sx = self.stride
        y = F.conv2d(x, self.weight, self.bias, 1, self.padding, self.dilation, self.groups)
        cl = x.is_contiguous(memory_format=torch.channels_last)
        return y[:, :, ::sy, ::sx].contiguous(memory_format=torch.channels_last if cl else torch.contiguous_format)


class ConvBNAct(nn.Sequential):
    """Conv (no bias) + BatchNorm + optional ReLU; BN folds into the conv at export."""

    def __init__(self, cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1, act: bool = True):
        conv = StridedDepthwiseConv if stride > 1 and groups == cin == cout > 1 else nn.Conv2d
        layers: list[nn.Module] = [
            conv(cin, cout, k, stride, k // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout),
        ]
        if act:
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


class SeparableConv(nn.Sequential):
    """3x3 depthwise + 1x1 pointwise, each with BN + ReLU: a 3x3 receptive field at ~1/8 the cost of a full conv."""

    def __init__(self, cin: int, cout: int):
        super().__init__(ConvBNAct(cin, cin, 3, groups=cin), ConvBNAct(cin, cout, 1))
