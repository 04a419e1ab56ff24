"""Losses: CenterNet focal loss on the centre heatmap, Gaussian-weighted GIoU on boxes, BCE + dice on masks,
cross-entropy on the class of each object (appearance at its centre + shape of its mask).

`Criterion.forward` returns named, *unweighted* losses; `Criterion.weights` says how they add up (DETR style).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tinyseg.models.postprocess import cell_centers, crop_cells, decode_boxes, gather
from tinyseg.results import MASK_MARGIN


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
    def __init__(
        self,
        model: nn.Module,
        heatmap_weight: float = 1.0,
        class_weight: float = 1.0,
        box_weight: float = 2.0,
        mask_weight: float = 2.0,
    ):
        super().__init__()
        self.mask_head, self.classifier, self.stride = model.mask, model.classifier, model.stride
        self.weights = {
            "heatmap": heatmap_weight,
            "class": class_weight,
            "box": box_weight,
            "mask_bce": mask_weight,
            "mask_dice": mask_weight,
        }

    def forward(self, outputs: dict[str, torch.Tensor], targets: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        heat = outputs["heatmap"]
        b, _, h, w = heat.shape
        size = h * self.stride
        losses = {"heatmap": focal_loss(heat, targets["heatmap"], targets["ignore"])}

        # Boxes: every cell with a positive weight regresses its object's box.
        weight = targets["box_weight"].reshape(-1)
        idx = weight.nonzero().squeeze(1)
        wsel = weight[idx]
        raw = outputs["box"].float().permute(0, 2, 3, 1).reshape(-1, 4)[idx]
        cells = idx % (h * w)
        centers = torch.stack([cells % w, cells // w], -1).float()
        pred = decode_boxes(raw, centers, self.stride, size)
        tgt = targets["box"].permute(0, 2, 3, 1).reshape(-1, 4)[idx]
        losses["box"] = (giou_loss(pred, tgt) * wsel).sum() / wsel.sum().clamp(min=1e-6)

        # Masks: read the mask parameters at each object's centre cell; build each mask only inside its box
        # grown by MASK_MARGIN (where the host cuts it), as (instance, cell) pairs. A dense [B, N, H, W] loss
        # cost ~40% of a training step for pixels that count for nothing.
        pos = targets["centers"]
        valid = targets["valid"]
        centers = cell_centers(pos, w)
        params = gather(outputs["mask_params"], pos)
        features = outputs["mask_features"]
        mh, mw = features.shape[-2:]
        mstride = size // mh
        instance, cell = crop_cells(targets["boxes"], valid, mh, mw, mstride, MASK_MARGIN)
        logits = self.mask_head.assemble_cells(params, features, centers, targets["boxes"], instance, cell)
        masks = targets["masks"]  # uint8 [B, N, H, W], 0..255
        target = masks.reshape(-1, mh * mw)[instance, cell].float() / 255
        losses["mask_bce"], losses["mask_dice"] = mask_losses(logits, target, instance, valid)

        # Classes: from the true mask in the true box (clean, fast to learn) and from the predicted mask in the
        # predicted box (exactly what inference sees: the same samples of the uncut mask; detached so the class
        # loss does not bend masks or boxes), each with the appearance logits at the centre.
        appearance = gather(outputs["classes"].float(), pos)
        boxes = decode_boxes(gather(outputs["box"].float(), pos), centers, self.stride, size).detach().nan_to_num(0.0)
        index = self.classifier.points(boxes, mh, mw, mstride)
        predicted = self.mask_head.assemble_at(params.detach(), features.detach(), centers, boxes, index).sigmoid()
        truth = self.classifier.sample(masks, targets["boxes"], mstride).float() / 255
        v = valid.float()
        ce = 0
        for silhouettes in (truth, predicted):
            cls = self.classifier(appearance, silhouettes.float())
            ce = ce + F.cross_entropy(cls.flatten(0, 1), targets["labels"].flatten(), reduction="none")
        losses["class"] = (ce.reshape(v.shape) * v).sum() / (2 * v.sum().clamp(min=1))
        return losses

    def total(self, losses: dict[str, torch.Tensor]) -> torch.Tensor:
        return sum(self.weights[k] * v for k, v in losses.items())
