"""Post-processing in pure tensor ops (MaxPool, TopK, Gather, MatMul, Sigmoid): exportable into one graph.

Peaks are cells equal to the max of their 3x3 neighbourhood (CenterNet), so there is no NMS.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def find_peaks(heatmap: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """heatmap logits [B, C, h, w] -> scores [B, K], classes [B, K], flat cell index [B, K]."""
    b, c, h, w = heatmap.shape
    heat = heatmap.sigmoid()
    peaks = heat * (F.max_pool2d(heat, 3, 1, 1) == heat)
    scores, idx = peaks.reshape(b, -1).topk(min(k, c * h * w))
    return scores, idx // (h * w), idx % (h * w)


def gather(feat: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """feat [B, C, h, w], pos [B, K] flat cell index -> [B, K, C]."""
    b, c = feat.shape[:2]
    return feat.reshape(b, c, -1).gather(2, pos.unsqueeze(1).expand(-1, c, -1)).transpose(1, 2)


def cell_centers(pos: torch.Tensor, width: int) -> torch.Tensor:
    """Flat cell index [B, K] -> (x, y) cell coordinates [B, K, 2] (float)."""
    return torch.stack([pos % width, pos // width], -1).float()


def decode_boxes(ltrb: torch.Tensor, centers: torch.Tensor, stride: int, size: int) -> torch.Tensor:
    """ltrb [B, K, 4] distances in pixels, centers [B, K, 2] cells -> boxes [B, K, 4] xyxy in input pixels."""
    c = (centers + 0.5) * stride
    boxes = torch.cat([c - ltrb[..., :2], c + ltrb[..., 2:]], -1)
    return boxes.clamp(0, size)


def box_crop(boxes: torch.Tensor, h: int, w: int, stride: int, margin: float = 0.0) -> torch.Tensor:
    """[B, K, 4] input-pixel boxes -> [B, K, h, w] float {0,1}: cells whose centre lies inside the (grown) box."""
    xs = (torch.arange(w, device=boxes.device, dtype=boxes.dtype) + 0.5) * stride
    ys = (torch.arange(h, device=boxes.device, dtype=boxes.dtype) + 0.5) * stride
    x1, y1, x2, y2 = (boxes[..., i, None] for i in range(4))
    inx = (xs >= x1 - margin) & (xs <= x2 + margin)
    iny = (ys >= y1 - margin) & (ys <= y2 + margin)
    return (iny.unsqueeze(-1) & inx.unsqueeze(-2)).to(boxes.dtype)


def postprocess(outputs: dict[str, torch.Tensor], mask_head, stride: int, max_det: int) -> dict[str, torch.Tensor]:
    """Model outputs -> fixed-size detections, all in network-input coordinates:
    boxes [B, K, 4] xyxy pixels, scores [B, K], classes [B, K] int64, masks [B, K, H, W] probabilities at the
    mask features' resolution, zeroed outside the box grown by 2 px (the exact crop happens at full resolution)."""
    heat = outputs["heatmap"]
    b, c, h, w = heat.shape
    scores, classes, pos = find_peaks(heat, max_det)
    centers = cell_centers(pos, w)
    boxes = decode_boxes(gather(outputs["box"], pos), centers, stride, h * stride)
    params = gather(outputs["mask_params"], pos)
    logits = mask_head.assemble(params, outputs["mask_features"], centers, boxes)
    mh, mw = logits.shape[-2:]
    mask_stride = h * stride // mh
    masks = logits.sigmoid() * box_crop(boxes, mh, mw, mask_stride, margin=2.0)
    return {"boxes": boxes, "scores": scores, "classes": classes, "masks": masks}
