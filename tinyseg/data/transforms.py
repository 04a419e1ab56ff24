"""Geometric and colour transforms that keep image, masks and boxes consistent.

Every geometric transform is one 2x3 affine matrix (letterbox, random scale/crop/translate, flip), applied
with OpenCV to the image and to the masks; boxes are re-derived from the transformed masks so they are
always the tight box of the visible part.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

PAD_VALUE = 114  # letterbox padding grey, as in YOLO-family models


@dataclass
class Letterbox:
    """Maps original pixels to the square network input: x_in = x * scale + pad_x."""

    scale: float
    pad_x: float
    pad_y: float

    @classmethod
    def fit(cls, height: int, width: int, size: int) -> Letterbox:
        scale = size / max(height, width)
        return cls(scale, (size - width * scale) / 2, (size - height * scale) / 2)

    @classmethod
    def from_matrix(cls, m: np.ndarray) -> Letterbox:
        """The inverse of matrix()."""
        return cls(float(m[0, 0]), float(m[0, 2]), float(m[1, 2]))

    def matrix(self) -> np.ndarray:
        return np.array([[self.scale, 0, self.pad_x], [0, self.scale, self.pad_y]], np.float32)

    def boxes_to_original(self, boxes: np.ndarray) -> np.ndarray:
        """[N, 4] xyxy in network-input pixels -> original-image pixels."""
        out = boxes.astype(np.float32).copy()
        out[:, 0::2] = (out[:, 0::2] - self.pad_x) / self.scale
        out[:, 1::2] = (out[:, 1::2] - self.pad_y) / self.scale
        return out


def opencv_matrix(matrix: np.ndarray) -> np.ndarray:
    """Our matrices map continuous coordinates (pixel i spans [i, i+1], so a flip is x' = size - x and a
    letterbox is exact at any scale); OpenCV puts pixel centres at integers. Convert the former to the latter."""
    m = matrix.astype(np.float32).copy()
    m[:, 2] += 0.5 * (m[:, 0] + m[:, 1]) - 0.5
    return m


def warp_image(img: np.ndarray, matrix: np.ndarray, size: int) -> np.ndarray:
    return cv2.warpAffine(
        img,
        opencv_matrix(matrix),
        (size, size),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=(PAD_VALUE, PAD_VALUE, PAD_VALUE),
    )


def letterbox_input(img: np.ndarray, size: int) -> tuple[Letterbox, np.ndarray]:
    """RGB uint8 [H, W, 3] -> (its Letterbox, the graph's input: uint8 [1, 3, size, size], contiguous)."""
    lb = Letterbox.fit(*img.shape[:2], size)
    return lb, np.ascontiguousarray(warp_image(img, lb.matrix(), size).transpose(2, 0, 1)[None])


@dataclass
class MaskCrop:
    """One instance mask stored as its bounding-box crop: dense images (hundreds of small objects in a large
    image) then cost memory and time in proportion to the objects, not to objects x image size."""

    x0: int
    y0: int
    mask: np.ndarray  # [h, w] uint8 {0,1}


def warp_crops(crops: list[MaskCrop], matrix: np.ndarray, size: int) -> list[MaskCrop]:
    """Warp each crop into the size x size output; returns crops in output coordinates (empty ones: 0x0)."""
    out = []
    for c in crops:
        h, w = c.mask.shape
        corners = (
            np.array([[c.x0, c.y0, 1], [c.x0 + w, c.y0, 1], [c.x0, c.y0 + h, 1], [c.x0 + w, c.y0 + h, 1]], np.float32)
            @ matrix.T
        )
        x0, y0 = (max(int(np.floor(v)) - 1, 0) for v in corners.min(0))
        x1, y1 = (min(int(np.ceil(v)) + 1, size) for v in corners.max(0))
        if x1 <= x0 or y1 <= y0:
            out.append(MaskCrop(0, 0, np.zeros((0, 0), np.uint8)))
            continue
        m = matrix.copy()
        m[:, 2] = matrix @ np.array([c.x0, c.y0, 1], np.float32) - (x0, y0)
        warped = cv2.warpAffine(c.mask * 255, opencv_matrix(m), (x1 - x0, y1 - y0), flags=cv2.INTER_LINEAR)
        out.append(MaskCrop(x0, y0, (warped > 127).astype(np.uint8)))
    return out


def paste(crops: list[MaskCrop], size: int) -> np.ndarray:
    """Crops -> full [N, size, size] uint8 masks."""
    out = np.zeros((len(crops), size, size), np.uint8)
    for i, c in enumerate(crops):
        h, w = c.mask.shape
        out[i, c.y0 : c.y0 + h, c.x0 : c.x0 + w] = c.mask
    return out


def occlude(crop: MaskCrop, cover: np.ndarray) -> MaskCrop:
    """The crop without the pixels `cover` [S, S] bool hides (something pasted on top)."""
    h, w = crop.mask.shape
    hidden = cover[crop.y0 : crop.y0 + h, crop.x0 : crop.x0 + w]
    return MaskCrop(crop.x0, crop.y0, (crop.mask & ~hidden).astype(np.uint8)) if crop.mask.size else crop


def downsample_crops(crops: list[MaskCrop], size: int, stride: int) -> np.ndarray:
    """Crops -> [N, size/stride, size/stride] uint8 0..255 area fractions (soft targets for the mask loss),
    averaging only each crop's own (stride-aligned) window: the cost follows the objects' size, not N x the
    image."""
    g = size // stride
    out = np.zeros((len(crops), g, g), np.uint8)
    for i, c in enumerate(crops):
        h, w = c.mask.shape
        if not c.mask.size:
            continue
        gx0, gy0 = c.x0 // stride, c.y0 // stride
        gx1, gy1 = -(-(c.x0 + w) // stride), -(-(c.y0 + h) // stride)
        buf = np.zeros(((gy1 - gy0) * stride, (gx1 - gx0) * stride), np.float32)
        buf[c.y0 - gy0 * stride : c.y0 - gy0 * stride + h, c.x0 - gx0 * stride : c.x0 - gx0 * stride + w] = c.mask
        small = buf.reshape(gy1 - gy0, stride, gx1 - gx0, stride).mean((1, 3))
        out[i, gy0:gy1, gx0:gx1] = np.round(small * 255).astype(np.uint8)
    return out


def tight_box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """[H, W] mask -> its tight box (x1, y1, x2, y2), x2/y2 exclusive (a 1-px object is 1 px wide); None if empty."""
    ys, xs = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if not len(xs):
        return None
    return int(xs[0]), int(ys[0]), int(xs[-1]) + 1, int(ys[-1]) + 1


def masks_to_boxes(masks: np.ndarray) -> np.ndarray:
    """[N, H, W] -> [N, 4] xyxy tight boxes (zeros for an empty mask)."""
    boxes = np.zeros((len(masks), 4), np.float32)
    for i, m in enumerate(masks):
        boxes[i] = tight_box(m) or 0
    return boxes


def crop_boxes(crops: list[MaskCrop]) -> tuple[np.ndarray, np.ndarray]:
    """Tight xyxy boxes [N, 4] (in output coordinates) and pixel counts [N] of crops."""
    boxes = masks_to_boxes([c.mask for c in crops]) if crops else np.zeros((0, 4), np.float32)
    for i, c in enumerate(crops):
        if boxes[i].any():
            boxes[i] += (c.x0, c.y0, c.x0, c.y0)
    return boxes, np.array([int(c.mask.sum()) for c in crops], np.int64)


def random_affine(
    height: int, width: int, size: int, rng: np.random.Generator, scale_min: float, scale_max: float, flip_prob: float
) -> np.ndarray:
    """Letterbox, then random zoom (crop when > 1, shrink when < 1), random placement, and horizontal flip."""
    s = size / max(height, width) * np.exp(rng.uniform(np.log(scale_min), np.log(scale_max)))
    new_w, new_h = width * s, height * s
    # Random placement: anywhere such that the scaled image still covers/lies inside the canvas.
    tx = rng.uniform(min(0.0, size - new_w), max(0.0, size - new_w))
    ty = rng.uniform(min(0.0, size - new_h), max(0.0, size - new_h))
    m = np.array([[s, 0, tx], [0, s, ty]], np.float32)
    if rng.random() < flip_prob:
        m[0] = [-s, 0, size - tx]
    return m


def color_jitter(
    img: np.ndarray, rng: np.random.Generator, strength: float, mode: str, keep_grey: bool
) -> np.ndarray:  # fmt: skip
    """Random contrast, brightness and per-channel gain through one lookup table per channel (fast), then a
    random channel order half the time. See `jitter_about_image_mean` and `jitter_about_mid_grey` for the modes.
    keep_grey: a grey image (three equal channels) gets the first channel's table on all three, so it is never
    tinted; the random numbers drawn stay the same, so a colour image is jittered exactly as without it."""
    if strength <= 0:
        return img
    luts = jitter_about_image_mean(img, rng, strength) if mode == "image" else jitter_about_mid_grey(rng, strength)
    if keep_grey and is_grey(img):
        luts = [luts[0]] * 3
    out = np.stack([cv2.LUT(img[:, :, c], luts[c]) for c in range(3)], 2)
    if rng.random() < 0.5:
        out = out[:, :, rng.permutation(3)]
    return np.ascontiguousarray(out)


def is_grey(img: np.ndarray) -> bool:
    """True when the three channels of an HxWx3 image are equal everywhere."""
    return bool(np.array_equal(img[:, :, 0], img[:, :, 1]) and np.array_equal(img[:, :, 1], img[:, :, 2]))


def jitter_about_image_mean(img: np.ndarray, rng: np.random.Generator, strength: float) -> list[np.ndarray]:
    """Contrast about each channel's own mean, then brightness and colour balance as gains: a dark image
    (fluorescence microscopy) stays dark and its dim objects stay above the background."""
    x = np.arange(256, dtype=np.float32)
    contrast = 1 + rng.uniform(-strength, strength)
    brightness = 1 + rng.uniform(-strength, strength)
    means = img.reshape(-1, 3).mean(0)
    luts = []
    for c in range(3):
        gain = brightness * (1 + rng.uniform(-strength, strength) * 0.5)
        luts.append(np.clip(((x - means[c]) * contrast + means[c]) * gain, 0, 255).astype(np.uint8))
    return luts


def jitter_about_mid_grey(rng: np.random.Generator, strength: float) -> list[np.ndarray]:
    """Contrast about grey 128 and an additive brightness: on a dark image this clips dim objects to black and
    lifts the background."""
    x = np.arange(256, dtype=np.float32)
    contrast = 1 + rng.uniform(-strength, strength)
    luts = []
    for _ in range(3):
        gain = contrast * (1 + rng.uniform(-strength, strength) * 0.5)
        bias = rng.uniform(-strength, strength) * 64
        luts.append(np.clip((x - 128) * gain + 128 + bias, 0, 255).astype(np.uint8))
    return luts


def blur_and_noise(img: np.ndarray, rng: np.random.Generator, blur_prob: float, noise: float) -> np.ndarray:
    """Camera-like degradations: a Gaussian blur (sigma 0.5-1.5 px) with probability blur_prob, then Gaussian
    noise of up to `noise` grey levels. No random numbers are drawn when both are off."""
    if blur_prob > 0 and rng.random() < blur_prob:
        img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.5, 1.5))
    if noise > 0:
        sigma = rng.uniform(0, noise)
        img = np.clip(img + rng.normal(0, sigma, img.shape).astype(np.float32), 0, 255).astype(np.uint8)
    return img
