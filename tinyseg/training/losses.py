"""Losses: CenterNet focal loss on the centre heatmap, Gaussian-weighted GIoU on boxes, BCE + dice on masks,
cross-entropy on the class of each object (appearance at its centre + shape of its mask).

`Criterion.forward` returns named, *unweighted* losses; `Criterion.weights` says how they add up (DETR style).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tinyseg.config import TrainConfig
from tinyseg.models.postprocess import cell_centers, decode_boxes


def focal_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    ignore: torch.Tensor | None = None,
    alpha: float = 2.0,
    beta: float = 4.0,
) -> torch.Tensor:
    """CenterNet's penalty-reduced focal loss. logits/target [B, C, h, w]; ignore [B, h, w] bool (crowd regions:
    no negative penalty). Normalised by the number of peaks (target == 1); 0 peaks -> normalised by 1."""
    logits = logits.float()
    log_p = F.logsigmoid(logits)
    log_1mp = F.logsigmoid(-logits)
    p = log_p.exp()
    pos = target.eq(1).float()
    neg_w = (1 - target).pow(beta) * (1 - pos)
    if ignore is not None:
        neg_w = neg_w * (~ignore).unsqueeze(1).float()
    pos_loss = (pos * (1 - p).pow(alpha) * log_p).sum()
    neg_loss = (neg_w * p.pow(alpha) * log_1mp).sum()
    return -(pos_loss + neg_loss) / pos.sum().clamp(min=1)


def giou_loss(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """1 - GIoU for matching xyxy boxes [..., 4] -> [...]."""
    area_p = (pred[..., 2] - pred[..., 0]).clamp(min=0) * (pred[..., 3] - pred[..., 1]).clamp(min=0)
    area_t = (target[..., 2] - target[..., 0]).clamp(min=0) * (target[..., 3] - target[..., 1]).clamp(min=0)
    lt = torch.maximum(pred[..., :2], target[..., :2])
    rb = torch.minimum(pred[..., 2:], target[..., 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    union = area_p + area_t - inter
    iou = inter / (union + eps)
    enc = (torch.maximum(pred[..., 2:], target[..., 2:]) - torch.minimum(pred[..., :2], target[..., :2])).prod(-1)
    return 1 - (iou - (enc - union) / (enc + eps))


def mask_losses(
    logits: torch.Tensor, target: torch.Tensor, instance: torch.Tensor, valid: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask losses over the pixels of each instance's crop, as flat lists: logits/target [Q] (target in 0..1),
    instance [Q] its index into valid [B, N] (flattened). BCE averaged over each instance's crop (so small
    objects count as much as large ones, as in YOLACT), and dice over the crop; both averaged over valid
    instances. No instances -> zero losses with a gradient path."""
    v = valid.reshape(-1).float()
    n = v.sum().clamp(min=1)
    logits = logits.float()

    def per_instance(x: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(v).index_add(0, instance, x)

    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    area = per_instance(torch.ones_like(target)).clamp(min=1)
    bce = (per_instance(bce) / area * v).sum() / n
    p = logits.sigmoid()
    dice = 1 - (2 * per_instance(p * target) + 1) / (per_instance(p) + per_instance(target) + 1)
    return bce, (dice * v).sum() / n


class Criterion(nn.Module):
    """Model outputs (with the reads at the true objects, TinySeg.read_targets) + targets -> named, unweighted
    losses; `weights` says how they add up (DETR's SetCriterion)."""

    def __init__(self, stride: int, weights: dict[str, float]):
        super().__init__()
        self.stride, self.weights = stride, weights

    def forward(self, outputs: dict[str, torch.Tensor], targets: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        bce, dice = mask_losses(
            outputs["mask_logits"], targets["mask_value"].float() / 255, targets["mask_instance"], targets["valid"]
        )
        return {
            "heatmap": focal_loss(outputs["heatmap"], targets["heatmap"], targets["ignore"]),
            "class": self.class_loss(outputs, targets),
            "box": self.box_loss(outputs["box"], targets),
            "mask_bce": bce,
            "mask_dice": dice,
        }

    def box_loss(self, raw_boxes: torch.Tensor, targets: dict[str, torch.Tensor]) -> torch.Tensor:
        """Every cell with a positive box weight regresses its object's box: weighted GIoU."""
        b, _, h, w = raw_boxes.shape
        weight = targets["box_weight"].reshape(-1)
        idx = weight.nonzero().squeeze(1)
        raw = raw_boxes.float().permute(0, 2, 3, 1).reshape(-1, 4)[idx]
        pred = decode_boxes(raw, cell_centers(idx % (h * w), w), self.stride, h * self.stride)
        tgt = targets["box"].permute(0, 2, 3, 1).reshape(-1, 4)[idx]
        return (giou_loss(pred, tgt) * weight[idx]).sum() / weight[idx].sum().clamp(min=1e-6)

    def class_loss(self, outputs: dict[str, torch.Tensor], targets: dict[str, torch.Tensor]) -> torch.Tensor:
        """Cross-entropy of the class logits from the true and from the predicted silhouettes, averaged."""
        v = targets["valid"].float()
        ce = 0
        for logits in (outputs["class_logits_truth"], outputs["class_logits"]):
            ce = ce + F.cross_entropy(logits.flatten(0, 1), targets["labels"].flatten(), reduction="none")
        return (ce.reshape(v.shape) * v).sum() / (2 * v.sum().clamp(min=1))

    def total(self, losses: dict[str, torch.Tensor]) -> torch.Tensor:
        return sum(self.weights[k] * v for k, v in losses.items())


def build_criterion(cfg: TrainConfig, stride: int) -> Criterion:
    weights = {
        "heatmap": cfg.heatmap_weight,
        "class": cfg.class_weight,
        "box": cfg.box_weight,
        "mask_bce": cfg.mask_weight,
        "mask_dice": cfg.mask_weight,
    }
    return Criterion(stride, weights)
