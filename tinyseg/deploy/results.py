"""Detections and the mapping from network-input coordinates back to the original image.

numpy + OpenCV only (no torch): shared by the PyTorch `Segmenter` and the edge runtime, so both give the
same result for the same network outputs.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from tinyseg.config import MASK_MARGIN
from tinyseg.data.mask_formats import encode_rle, mask_polygon
from tinyseg.data.transforms import Letterbox, letterbox_input, masks_to_boxes, opencv_matrix
from tinyseg.errors import DataError


@dataclass
class Detections:
    """One image's detections in original-image pixels."""

    boxes: np.ndarray  # [N, 4] float32 xyxy
    scores: np.ndarray  # [N] float32
    classes: np.ndarray  # [N] int64, 0-based labels
    masks: np.ndarray  # [N, H, W] bool
    class_names: list[str]

    def __len__(self) -> int:
        return len(self.scores)

    def to_polygons(self) -> list[list[float]]:
        """One polygon per detection, [x1, y1, x2, y2, ...] in original-image pixel corners: its even-odd fill is
        the mask exactly, holes and separate parts included (zero-width bridges join them)."""
        return [mask_polygon(m) for m in self.masks]

    def to_coco(self, image_id: int, cat_ids: list[int] | None = None, fmt: str = "rle") -> list[dict]:
        """COCO results: image_id, category_id (cat_ids[label]; default label + 1), bbox xywh, score and the mask as
        compressed RLE (`fmt="rle"`) or one polygon (`fmt="polygons"`; an empty mask stays RLE)."""
        cat_ids = cat_ids or list(range(1, len(self.class_names) + 1))
        return detections_to_coco(image_id, self.boxes, self.scores, self.classes, self.masks, cat_ids, fmt)


def detections_to_coco(
    image_id: int,
    boxes: np.ndarray,
    scores: np.ndarray,
    classes: np.ndarray,
    masks: np.ndarray | None,
    cat_ids: list[int],
    fmt: str = "rle",
) -> list[dict]:
    """One image's detections (boxes xyxy in original pixels, masks [N, H, W] bool) -> COCO result dicts."""
    out = []
    for i in range(len(scores)):
        x1, y1, x2, y2 = (float(v) for v in boxes[i])
        r = {
            "image_id": int(image_id),
            "category_id": int(cat_ids[int(classes[i])]),
            "bbox": [x1, y1, x2 - x1, y2 - y1],
            "score": float(scores[i]),
        }
        if masks is not None:
            poly = mask_polygon(masks[i]) if fmt == "polygons" else []
            r["segmentation"] = [poly] if poly else encode_rle(masks[i])  # an empty mask has no polygon
        out.append(r)
    return out


def masks_to_original(
    masks: np.ndarray, boxes: np.ndarray, lb: Letterbox, height: int, width: int, size: int
) -> np.ndarray:
    """Mask probabilities [N, h, w] on the letterboxed input grid -> [N, H, W] bool at the original size:
    one bilinear warp per mask straight from the low-resolution grid (no intermediate resize), thresholded
    at 0.5 and cut to its window `boxes` (original pixels, xyxy)."""
    n = len(masks)
    out = np.zeros((n, height, width), bool)
    if n == 0:
        return out
    ms = size / masks.shape[-1]  # input pixels per mask cell
    to_mask = np.array([[lb.scale / ms, 0, lb.pad_x / ms], [0, lb.scale / ms, lb.pad_y / ms]], np.float32)
    m_cv = opencv_matrix(to_mask)
    for i in range(n):
        x1, y1, x2, y2 = boxes[i]
        # Only pixels whose centre lies inside the box can be set: warp just that window.
        c0, r0 = max(int(np.ceil(x1 - 0.5)), 0), max(int(np.ceil(y1 - 0.5)), 0)
        c1, r1 = min(int(np.floor(x2 - 0.5)) + 1, width), min(int(np.floor(y2 - 0.5)) + 1, height)
        if c1 <= c0 or r1 <= r0:
            continue
        m = m_cv.copy()
        m[:, 2] += m[:, 0] * c0 + m[:, 1] * r0
        up = cv2.warpAffine(
            masks[i].astype(np.float32),
            m,
            (c1 - c0, r1 - r0),
            flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
            borderMode=cv2.BORDER_CONSTANT,
        )
        out[i, r0:r1, c0:c1] = up > 0.5
    return out


def to_detections(
    boxes: np.ndarray,
    scores: np.ndarray,
    classes: np.ndarray,
    masks: np.ndarray,
    lb: Letterbox,
    height: int,
    width: int,
    size: int,
    conf: float,
    class_names: list[str],
) -> Detections:
    """One image's fixed-size network output (input coordinates) -> Detections at the original size.

    Each mask is cut at its box grown by MASK_MARGIN (the graph leaves that to the host), and the reported box
    is the mask's tight box, more precise than the regressed one (which is kept where the mask is empty)."""
    keep = scores >= conf
    b = lb.boxes_to_original(boxes[keep])
    g = MASK_MARGIN / lb.scale
    window = b + np.array([-g, -g, g, g], np.float32)
    for a in (b, window):
        a[:, 0::2] = a[:, 0::2].clip(0, width)
        a[:, 1::2] = a[:, 1::2].clip(0, height)
    masks = masks_to_original(masks[keep], window, lb, height, width, size)
    nonempty = masks.any((1, 2))
    b[nonempty] = masks_to_boxes(masks[nonempty])
    return Detections(b, scores[keep].astype(np.float32), classes[keep].astype(np.int64), masks, class_names)


def predict_image(run, image: np.ndarray, size: int, conf: float, class_names: list[str]) -> Detections:
    """One RGB uint8 image [H, W, 3] through a graph-like `run` (letterboxed uint8 [1, 3, S, S] -> outputs):
    letterbox in, Detections at the original size out. Shared by the PyTorch and the edge predictors."""
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        got = f"{image.dtype} {list(image.shape)}" if isinstance(image, np.ndarray) else type(image).__name__
        raise DataError(f"expected an RGB uint8 image [H, W, 3], got {got}")
    h, w = image.shape[:2]
    lb, x = letterbox_input(image, size)
    out = run(x)
    return to_detections(
        out["boxes"][0], out["scores"][0], out["classes"][0], out["masks"][0], lb, h, w, size, conf, class_names
    )
