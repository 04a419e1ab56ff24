"""Losses: hand-computed values, the sparse mask loss against a dense one, and the criterion on empty, single and
dense images."""

import math

import pytest
import torch

from tinyseg.config import TrainConfig, preset
from tinyseg.models.detector import build_model
from tinyseg.training.losses import build_criterion, focal_loss, giou_loss, mask_losses

from .conftest import square_batch


def test_focal_loss_hand_computed():
    # One peak (target 1) with p = 0.5, one negative with target 0 and p = 0.5, one ignored negative.
    logits = torch.zeros(1, 1, 1, 3)
    target = torch.tensor([[[[1.0, 0.0, 0.0]]]])
    ignore = torch.tensor([[[False, False, True]]])
    expected = -(0.25 * math.log(0.5) + 0.25 * math.log(0.5))
    assert focal_loss(logits, target, ignore).item() == pytest.approx(expected, rel=1e-5)
    # Empty image: no peaks, normalised by 1; a confident "nothing" is nearly free.
    assert focal_loss(torch.full((1, 2, 4, 4), -10.0), torch.zeros(1, 2, 4, 4)).item() < 1e-6


def test_giou_hand_computed():
    a = torch.tensor([0.0, 0, 2, 2])
    assert giou_loss(a, a).item() == pytest.approx(0.0, abs=1e-5)
    # Disjoint boxes [0,2]x[0,2] and [3,5]x[0,2]: IoU 0, enclosure 10, union 8 -> GIoU = -0.2 -> loss 1.2.
    assert giou_loss(a, torch.tensor([3.0, 0, 5, 2])).item() == pytest.approx(1.2, rel=1e-5)


def test_mask_losses_hand_computed():
    logits = torch.zeros(4)  # p = 0.5 at the 4 pixels of instance 0's crop
    target = torch.tensor([1.0, 0.0, 0.0, 0.0])
    instance = torch.zeros(4, dtype=torch.long)
    bce, dice = mask_losses(logits, target, instance, torch.tensor([[True, False]]))
    assert bce.item() == pytest.approx(math.log(2), rel=1e-5)
    assert dice.item() == pytest.approx(1 - (2 * 0.5 + 1) / (2 + 1 + 1), rel=1e-5)
    bce, dice = mask_losses(logits, target, instance, torch.zeros(1, 2, dtype=torch.bool))
    assert bce.item() == 0 and dice.item() == 0


def test_sparse_mask_loss_matches_dense():
    """The loss builds masks only at the cells of each box (crop_cells + assemble_cells); the same losses
    computed densely over full [B, N, H, W] masks agree."""
    from tinyseg.models.masks import PrototypeMasks
    from tinyseg.models.postprocess import crop_cells

    torch.manual_seed(0)
    head = PrototypeMasks(8, 4, 8, 3)
    params, features = torch.randn(2, 3, 3), torch.randn(2, 3, 16, 16)
    boxes = torch.tensor([[[2.0, 3.0, 20.0, 12.0], [0.0, 0.0, 32.0, 32.0], [5.0, 5.0, 6.0, 6.0]]] * 2)
    valid = torch.tensor([[True, True, False], [True, False, False]])
    target = torch.rand(2, 3, 16, 16)
    instance, cell = crop_cells(boxes, valid, 16, 16, 2, margin=2.0)
    logits = head.assemble_cells(params, features, None, boxes, instance, cell)
    bce, dice = mask_losses(logits, target.reshape(6, -1)[instance, cell], instance, valid)

    dense = head.assemble(params, features)
    c = (torch.arange(16) + 0.5) * 2
    inx = (c >= boxes[..., 0:1] - 2) & (c <= boxes[..., 2:3] + 2)
    iny = (c >= boxes[..., 1:2] - 2) & (c <= boxes[..., 3:4] + 2)
    crop = (iny.unsqueeze(-1) & inx.unsqueeze(-2)).float()
    v = valid.float()
    b = torch.nn.functional.binary_cross_entropy_with_logits(dense, target, reduction="none")
    want_bce = ((b * crop).sum((2, 3)) / crop.sum((2, 3)) * v).sum() / v.sum()
    p = dense.sigmoid() * crop
    d = 1 - (2 * (p * target).sum((2, 3)) + 1) / (p.sum((2, 3)) + (target * crop).sum((2, 3)) + 1)
    assert len(cell) == int((crop.sum((2, 3)) * v).sum())  # every cell of every valid box, nothing else
    assert bce.item() == pytest.approx(want_bce.item(), rel=1e-5)
    assert dice.item() == pytest.approx(((d * v).sum() / v.sum()).item(), rel=1e-5)


@pytest.mark.parametrize("n", [0, 1, 500])
def test_criterion_on_empty_single_and_dense_images(n):
    size = 256 if n == 500 else 64
    cfg = preset("nano")
    cfg.num_classes = 2
    m = build_model(cfg)
    images, t = square_batch(min(n, (size // 8) ** 2 * 2), size)
    crit = build_criterion(TrainConfig(), m.stride)
    losses = crit(m(images, t), t)
    assert set(losses) == {"heatmap", "class", "box", "mask_bce", "mask_dice"}
    total = crit.total(losses)
    assert torch.isfinite(total)
    total.backward()
    if n == 0:
        assert losses["box"].item() == 0 and losses["class"].item() == 0 and losses["mask_bce"].item() == 0
    else:
        assert losses["box"].item() > 0 and losses["class"].item() > 0 and losses["mask_dice"].item() > 0
