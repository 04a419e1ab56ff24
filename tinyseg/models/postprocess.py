"""Decoding in pure tensor ops (MaxPool, TopK, Gather, Softplus): exportable into one graph.

Peaks are cells equal to the max of their 3x3 neighbourhood (CenterNet), so there is no NMS.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# Box distances are softplus(raw) * BOX_SCALE input pixels: positive, smooth, ~11 px at init (raw = 0).
# Applied only to the cells that are read (K peaks, or the training samples), not to the whole map.
BOX_SCALE = 16.0


def find_peaks(heatmap: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Centre logits [B, 1, h, w] -> objectness [B, K] and flat cell index [B, K] of the K strongest peaks.
    A peak is the maximum of its 3x3 neighbourhood; of equal neighbours only the first in raster order counts,
    or a plateau would be one object found twice (int8 heatmaps have plateaus: a few hundred values only)."""
    b, _, h, w = heatmap.shape
    heat = heatmap.sigmoid()
    peaks = heat * ((F.max_pool2d(heat, 3, 1, 1) == heat) & (heat > _earlier_neighbours_max(heat)))
    return peaks.reshape(b, -1).topk(min(k, h * w))


def _earlier_neighbours_max(heat: torch.Tensor) -> torch.Tensor:
    """[B, 1, h, w] (>= 0) -> the largest of each cell's neighbours before it in raster order (up-left, up,
    up-right, left; 0 off the map)."""
    p = F.pad(heat, (1, 1, 1, 0))
    up = torch.maximum(torch.maximum(p[:, :, :-1, :-2], p[:, :, :-1, 1:-1]), p[:, :, :-1, 2:])
    return torch.maximum(up, p[:, :, 1:, :-2])


def gather(feat: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """feat [B, C, h, w], pos [B, K] flat cell index -> [B, K, C]."""
    b, c = feat.shape[:2]
    return feat.reshape(b, c, -1).gather(2, pos.unsqueeze(1).expand(-1, c, -1)).transpose(1, 2)


def cell_centers(pos: torch.Tensor, width: int) -> torch.Tensor:
    """Flat cell index [...] -> (x, y) cell coordinates [..., 2] (float)."""
    return torch.stack([pos % width, pos // width], -1).float()


def decode_boxes(raw: torch.Tensor, centers: torch.Tensor, stride: int, size: int) -> torch.Tensor:
    """raw box outputs [..., 4] (ltrb), centers [..., 2] cells -> boxes [..., 4] xyxy in input pixels."""
    ltrb = F.softplus(raw) * BOX_SCALE
    c = (centers + 0.5) * stride
    boxes = torch.cat([c - ltrb[..., :2], c + ltrb[..., 2:]], -1)
    return boxes.clamp(0, size)


def crop_cells(
    boxes: torch.Tensor, valid: torch.Tensor, h: int, w: int, stride: int, margin: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """The cells (of an h x w grid of `stride`-px cells) whose centre lies inside each valid box grown by
    `margin` px. boxes [B, N, 4] input pixels, valid [B, N] bool -> (instance [Q] index into B * N, flat cell
    index [Q]), one entry per (instance, cell) pair: only these pixels carry a mask loss, a small fraction of
    the B * N * h * w a dense loss would touch."""
    xs = (torch.arange(w, device=boxes.device, dtype=boxes.dtype) + 0.5) * stride
    ys = (torch.arange(h, device=boxes.device, dtype=boxes.dtype) + 0.5) * stride
    x1, y1, x2, y2 = (boxes[..., i, None] for i in range(4))
    inx = (xs >= x1 - margin) & (xs <= x2 + margin)
    iny = (ys >= y1 - margin) & (ys <= y2 + margin) & valid.unsqueeze(-1)
    image, inst, y, x = (iny.unsqueeze(-1) & inx.unsqueeze(-2)).nonzero(as_tuple=True)
    return image * boxes.shape[1] + inst, y * w + x


def top_pairs(
    objectness: torch.Tensor, class_logits: torch.Tensor, score_thresh: float | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """objectness [B, K], class logits [B, K, C] -> the best (peak, class) pairs: scores [B, n] =
    P(object) * P(class) sorted descending, peak [B, n] index into B * K (flat), classes [B, n].

    An object whose class is uncertain appears once per plausible class with the score split between them
    (what per-class AP rewards), a confident one once. n is the most pairs scoring >= score_thresh in any image
    of the batch (at least 1, at most K): only those get masks, the rest were most of the mask work.
    score_thresh None keeps all K: a static shape, for converters that cannot trace a data-dependent one."""
    b, k, c = class_logits.shape
    scores, pair = (objectness.unsqueeze(-1) * class_logits.softmax(-1)).reshape(b, k * c).topk(k)
    if score_thresh is not None:
        n = (scores >= score_thresh).sum(1).max().clamp(min=1)
        keep = torch.arange(n, device=pair.device)
        scores, pair = scores.index_select(1, keep), pair.index_select(1, keep)
    peak = (pair // c + torch.arange(b, device=pair.device).unsqueeze(1) * k).reshape(-1)
    return scores, peak, pair % c


def take(x: torch.Tensor, index: torch.Tensor, b: int) -> torch.Tensor:
    """x [B, K, ...], index [B * n] into B * K -> [B, n, ...]."""
    return x.reshape(-1, *x.shape[2:])[index].reshape(b, -1, *x.shape[2:])
