"""Training targets on the stride-`s` output grid, built in numpy inside the data workers.

- heatmap [1, h, w]: class-agnostic "there is an object centre here": an elliptical Gaussian per object at its
  box centre, sigma = alpha * size / 6 (TTFNet), so the focal loss sees elongated objects as elongated.
  The class is not part of the heatmap: objectness learns from every object in one channel, and the class is
  predicted per detection (see heads.ShapeClassifier).
- box [4, h, w] + box_weight [h, w]: every cell inside an object's Gaussian (and box) regresses that object's
  box (TTFNet's Gaussian-weighted GIoU). Many training samples per object instead of one makes box training
  converge several times faster, which matters on a CPU budget. Each object's weights sum to log(area) so
  large objects do not drown small ones; where objects overlap, the smaller one wins.
- centers [N]: flat index of each object's centre cell, where its mask coefficients are read.
"""

from __future__ import annotations

import numpy as np

GAUSSIAN_ALPHA = 0.54
MIN_SIGMA = 0.5  # cells: a tiny object still gets a peak with a soft shoulder


def gaussian_window(cx: int, cy: int, sx: float, sy: float, h: int, w: int):
    """Return (y-slice, x-slice, gaussian) of a Gaussian with peak 1 at integer cell (cx, cy), cut at 3 sigma."""
    rx, ry = int(np.ceil(3 * sx)), int(np.ceil(3 * sy))
    x0, x1 = max(cx - rx, 0), min(cx + rx + 1, w)
    y0, y1 = max(cy - ry, 0), min(cy + ry + 1, h)
    dx = np.arange(x0, x1, dtype=np.float32) - cx
    dy = np.arange(y0, y1, dtype=np.float32) - cy
    g = np.exp(-(dy[:, None] ** 2) / (2 * sy * sy) - dx[None, :] ** 2 / (2 * sx * sx))
    return slice(y0, y1), slice(x0, x1), g


def build_targets(labels: np.ndarray, boxes: np.ndarray, size: int, stride: int) -> dict:
    """labels [N] int, boxes [N, 4] xyxy in input pixels -> dense targets on the (size/stride)^2 grid."""
    h = w = size // stride
    heat = np.zeros((1, h, w), np.float32)
    box_t = np.zeros((4, h, w), np.float32)
    box_w = np.zeros((h, w), np.float32)
    centers = np.zeros(len(labels), np.int64)
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    for i in np.argsort(-areas, kind="stable"):  # large first: smaller objects overwrite shared cells
        x1, y1, x2, y2 = boxes[i] / stride
        cx = min(max(int((x1 + x2) / 2), 0), w - 1)
        cy = min(max(int((y1 + y2) / 2), 0), h - 1)
        centers[i] = cy * w + cx
        sx = max(GAUSSIAN_ALPHA * (x2 - x1) / 6, MIN_SIGMA)
        sy = max(GAUSSIAN_ALPHA * (y2 - y1) / 6, MIN_SIGMA)
        ys, xs, g = gaussian_window(cx, cy, sx, sy, h, w)
        hm = heat[0, ys, xs]
        np.maximum(hm, g, out=hm)
        # Box samples: cells of the Gaussian whose centre lies inside the box (plus the centre cell itself).
        gx = (np.arange(xs.start, xs.stop) + 0.5)[None, :]
        gy = (np.arange(ys.start, ys.stop) + 0.5)[:, None]
        inside = (gx >= x1) & (gx <= x2) & (gy >= y1) & (gy <= y2)
        inside[cy - ys.start, cx - xs.start] = True
        wgt = np.where(inside, g, 0)
        wgt *= np.log(max(areas[i], 1.0) + 1.0) / wgt.sum()
        region = inside
        box_w[ys, xs][region] = wgt[region]
        for k in range(4):
            box_t[k, ys, xs][region] = boxes[i, k]
    return {"heatmap": heat, "box": box_t, "box_weight": box_w, "centers": centers}
