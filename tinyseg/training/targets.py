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
- mask cells: the (instance, cell) pairs inside each box grown by MASK_MARGIN and the true mask there: the
  mask loss reads each mask only where the host keeps it.

`TrainingCollate` builds them in the DataLoader's workers from the dataset's samples (data/dataset.py).
"""

from __future__ import annotations

import numpy as np
import torch

from tinyseg.config import MASK_MARGIN, TrainConfig
from tinyseg.data.dataset import stack_images
from tinyseg.models.postprocess import crop_cells

GAUSSIAN_ALPHA = TrainConfig.gaussian_alpha  # the default of train.gaussian_alpha
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


def build_targets(labels: np.ndarray, boxes: np.ndarray, size: int, stride: int, alpha: float = GAUSSIAN_ALPHA) -> dict:
    """labels [N] int, boxes [N, 4] xyxy in input pixels -> dense targets on the (size/stride)^2 grid; each
    object's Gaussian has sigma = alpha * its size / 6."""
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
        sx = max(alpha * (x2 - x1) / 6, MIN_SIGMA)
        sy = max(alpha * (y2 - y1) / 6, MIN_SIGMA)
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
        box_w[ys, xs][inside] = wgt[inside]
        for k in range(4):
            box_t[k, ys, xs][inside] = boxes[i, k]
    return {"heatmap": heat, "box": box_t, "box_weight": box_w, "centers": centers}


INSTANCE_KEYS = ("labels", "boxes", "centers", "masks")


class TrainingCollate:
    """A batch of dataset samples -> (images [B, 3, S, S] channels-last, targets): the dense targets stacked,
    the per-instance ones (labels, boxes, centers, masks of the instances that carry a mask loss) padded to the
    largest count with a `valid` flag, and the mask cells as flat lists (mask_instance into B * N, mask_cell,
    mask_value 0..255)."""

    def __init__(self, stride: int, mask_stride: int, gaussian_alpha: float = GAUSSIAN_ALPHA):
        self.stride, self.mask_stride, self.gaussian_alpha = stride, mask_stride, gaussian_alpha

    def __call__(self, batch: list) -> tuple[torch.Tensor, dict]:
        images = stack_images(batch)
        size = images.shape[-1]
        per_image = [self._image_targets(sample, size) for _, sample in batch]
        out = {k: torch.stack([t[k] for t in per_image]) for k in ("heatmap", "box", "box_weight", "ignore")}
        out.update(_pad_instances(per_image))
        g = size // self.mask_stride
        instance, cell = crop_cells(out["boxes"], out["valid"], g, g, self.mask_stride, MASK_MARGIN)
        out["mask_instance"], out["mask_cell"] = instance, cell
        out["mask_value"] = out["masks"].reshape(-1, g * g)[instance, cell]
        return images, out

    def _image_targets(self, sample: dict, size: int) -> dict:
        t = build_targets(sample["labels"].numpy(), sample["boxes"].numpy(), size, self.stride, self.gaussian_alpha)
        sel = sample["mask_index"]
        g, r = size // self.stride, self.stride // self.mask_stride
        ignore = sample["crowd"].reshape(g, r, g, r).amax((1, 3)) > 0
        return {
            "heatmap": torch.from_numpy(t["heatmap"]),
            "box": torch.from_numpy(t["box"]),
            "box_weight": torch.from_numpy(t["box_weight"]),
            "ignore": ignore,
            "labels": sample["labels"][sel],
            "boxes": sample["boxes"][sel],
            "centers": torch.from_numpy(t["centers"])[sel],
            "masks": sample["masks"],
        }


def _pad_instances(per_image: list[dict]) -> dict:
    n = max(1, max(len(t["labels"]) for t in per_image))
    out = {"valid": torch.zeros(len(per_image), n, dtype=torch.bool)}
    for k in INSTANCE_KEYS:
        ref = per_image[0][k]
        out[k] = torch.zeros((len(per_image), n, *ref.shape[1:]), dtype=ref.dtype)
    for i, t in enumerate(per_image):
        m = len(t["labels"])
        out["valid"][i, :m] = True
        for k in INSTANCE_KEYS:
            out[k][i, :m] = t[k]
    return out
