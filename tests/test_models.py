"""The network: head shapes for every preset, the CPU-fast strided depthwise conv, nano's budget."""

import pytest
import torch

from tinyseg.config import preset
from tinyseg.models.detector import build_model, detect_flops
from tinyseg.models.layers import StridedDepthwiseConv


@pytest.mark.parametrize("name", ["nano", "small", "medium"])
def test_head_shapes(name):
    cfg = preset(name)
    cfg.num_classes = 5
    m = build_model(cfg).eval()
    with torch.no_grad():
        out = m(torch.zeros(2, 3, 128, 128, dtype=torch.uint8))
    assert out["heatmap"].shape == (2, 1, 32, 32) and out["classes"].shape == (2, 5, 32, 32)
    assert out["box"].shape == (2, 4, 32, 32)
    assert out["mask_params"].shape == (2, cfg.num_prototypes, 32, 32)
    assert out["mask_features"].shape == (2, cfg.num_prototypes, 64, 64)
    assert m.backbone.strides == (2, 4, 8, 16, 32) and set(m.backbone.channels) == {2, 4, 8, 16, 32}
    m.score_thresh = 0.0  # every one of the 20 detections gets a mask
    det = m.decode(out, 20)
    assert det["boxes"].shape == (2, 20, 4) and det["masks"].shape == (2, 20, 64, 64)


@pytest.mark.parametrize("size", [20, 21])
def test_strided_depthwise_trains_like_the_strided_conv(size):
    """CPU training computes the strided depthwise conv at stride 1 and subsamples: same outputs and gradients
    as the strided conv that inference and export use, odd sizes included."""
    conv = StridedDepthwiseConv(8, 8, 3, 2, 1, groups=8, bias=False)
    x = torch.randn(2, 8, size, size).contiguous(memory_format=torch.channels_last).requires_grad_()
    grads = []
    for train in (True, False):
        conv.train(train)
        x.grad, conv.weight.grad = None, None
        y = conv(x)
        (y * torch.arange(y.numel()).reshape(y.shape).sin()).sum().backward()
        grads.append((y.detach(), x.grad.clone(), conv.weight.grad.clone()))
    assert grads[0][0].shape == (2, 8, (size + 1) // 2, (size + 1) // 2)
    assert grads[0][0].is_contiguous(memory_format=torch.channels_last)
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    model = build_model(preset("nano"))
    assert sum(isinstance(m, StridedDepthwiseConv) for m in model.modules()) == 3  # strides 8, 16 and 32


def test_nano_budget():
    """Issue targets for nano at 320: <= 1.5 M parameters, <= 1.5 GFLOPs with post-processing."""
    cfg = preset("nano")
    cfg.num_classes = 6
    m = build_model(cfg).eval()
    assert sum(p.numel() for p in m.parameters()) <= 1.5e6
    assert detect_flops(m, 320, 100) <= 1.5e9
