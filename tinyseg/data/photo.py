"""A generated dataset built to look more like photos than the shapes set, with sided classes (`tinyseg synth
--style photo`).

What makes it photo-like: smooth, low-frequency backgrounds with a horizon and vignetting; objects that are upright
(within 15 degrees, as things in photos are), shaded by one light and casting a soft shadow; unannotated
distractor blobs in the same colours; sizes over a 10x range; camera blur, noise and a colour cast per image.
What makes it hard in the way car-part photos are: three of its eight classes come in left / right pairs that
differ only by being mirror images (a door cut at its left or right corner, a mirror or a light pointing left or
right), so a horizontal flip must swap their labels (data/flips.py finds the pairs from the names).
"""

from __future__ import annotations

import cv2
import numpy as np

from tinyseg.data.scenes import place_objects

PHOTO_CLASSES = (
    "wheel",
    "hood",
    "front_left_door",
    "front_right_door",
    "left_mirror",
    "right_mirror",
    "left_light",
    "right_light",
)
MAX_TILT = np.deg2rad(15.0)

# Left-facing outlines in unit coordinates (x right, y down); the right-hand class is the mirror image.
_LEFT_OUTLINES = {
    "door": [(-0.3, -1.0), (1.0, -1.0), (1.0, 1.0), (-1.0, 1.0), (-1.0, -0.3)],
    "mirror": [(-1.0, 0.1), (0.1, -0.6), (0.8, -0.55), (1.0, 0.0), (0.8, 0.5), (0.1, 0.6)],
    "light": [(-1.0, -0.2), (0.3, -0.5), (1.0, -0.5), (1.0, 0.5), (-0.6, 0.5)],
}
_HOOD = [(-0.7, -0.6), (0.7, -0.6), (1.0, 0.6), (-1.0, 0.6)]


def _outline(name: str) -> np.ndarray:
    """Unit outline [P, 2] of a class (wheel: a circle)."""
    if name == "wheel":
        t = np.linspace(0, 2 * np.pi, 48, endpoint=False)
        return np.stack([np.cos(t), np.sin(t)], 1)
    if name == "hood":
        return np.array(_HOOD, float)
    part = next(p for p in _LEFT_OUTLINES if p in name)
    pts = np.array(_LEFT_OUTLINES[part], float)
    return pts if "left" in name else pts * (-1.0, 1.0)


def _smooth_field(size: int, rng: np.random.Generator, cells: int) -> np.ndarray:
    """[size, size, 3] float32 colour field varying over `cells` cells: a photo's soft variation."""
    coarse = rng.uniform(0, 255, (cells, cells, 3)).astype(np.float32)
    return cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC)


def _background(size: int, rng: np.random.Generator) -> np.ndarray:
    """Two smooth regions split at a horizon, fine noise, and unannotated distractor blobs."""
    sky = 0.6 * _smooth_field(size, rng, 3) + 0.4 * rng.uniform(60, 230, 3)
    ground = 0.7 * _smooth_field(size, rng, int(rng.integers(4, 10))) + 0.3 * rng.uniform(20, 200, 3)
    horizon = int(rng.uniform(0.2, 0.6) * size)
    img = np.concatenate([sky[:horizon], ground[horizon:]]).astype(np.float32)
    img = 0.5 * img + 0.5 * img.mean(-1, keepdims=True)  # muted: scenes are less saturated than random colours
    img += rng.normal(0, rng.uniform(2, 8), (size, size, 1)).astype(np.float32)
    for _ in range(rng.integers(0, 7)):  # distractors: what an object detector must learn to ignore
        centre = tuple(int(v) for v in rng.integers(0, size, 2))
        axes = tuple(int(v) for v in rng.integers(4, size // 6, 2))
        blob = np.zeros((size, size), np.float32)
        cv2.ellipse(blob, centre, axes, float(rng.uniform(0, 180)), 0, 360, 1.0, -1)
        blob = cv2.GaussianBlur(blob, (0, 0), float(rng.uniform(1, 4)))[..., None]
        img = img * (1 - blob) + blob * rng.uniform(0, 255, 3).astype(np.float32)
    return img


def _object_mask(name: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """Full-image mask of one upright object at a random place and scale."""
    radius = np.exp(rng.uniform(np.log(6.0), np.log(size / 5)))
    stretch = rng.uniform(0.8, 1.25)
    tilt = rng.uniform(-MAX_TILT, MAX_TILT)
    rot = np.array([[np.cos(tilt), -np.sin(tilt)], [np.sin(tilt), np.cos(tilt)]])
    poly = (_outline(name) * radius * (stretch, 1 / stretch)) @ rot.T + rng.uniform(0, size, 2)
    mask = np.zeros((size, size), np.uint8)
    cv2.fillPoly(mask, [np.round(poly * 16).astype(np.int32)], 1, cv2.LINE_8, shift=4)
    return mask.astype(bool)


def _shaded(mask: np.ndarray, name: str, rng: np.random.Generator) -> np.ndarray:
    """The object's pixels [h, w, 3] over its bounding box: a base colour lit from one side, with fine texture
    (a wheel: dark tyre, light rim)."""
    ys, xs = np.nonzero(mask)
    y0, x0 = ys.min(), xs.min()
    h, w = ys.max() + 1 - y0, xs.max() + 1 - x0
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    light = rng.uniform(0, 2 * np.pi)
    ramp = (np.cos(light) * xx / max(w, 1) + np.sin(light) * yy / max(h, 1))[..., None]
    base = rng.uniform(30, 230, 3).astype(np.float32)
    if name == "wheel":
        r = np.hypot(xx - w / 2, yy - h / 2) / (max(h, w) / 2)
        base = np.where((r < 0.55)[..., None], rng.uniform(150, 230), rng.uniform(15, 50)) * np.ones(3, np.float32)
    out = base * (0.75 + 0.5 * ramp) + rng.normal(0, 4, (h, w, 1))
    return out.astype(np.float32)


def render_photo(size: int, rng: np.random.Generator, max_objects: int = 12) -> tuple[np.ndarray, list[dict]]:
    """One image ([size, size, 3] uint8 BGR) and its instances: dicts with `category` (0-based) and `mask`."""
    img = _background(size, rng)
    n = 0 if rng.random() < 0.05 else int(min(rng.geometric(1 / 5), max_objects))

    def paint(new: np.ndarray, cls_id: int) -> None:
        img[:] = _draw(img, new, PHOTO_CLASSES[cls_id], rng)

    placed = place_objects(n, len(PHOTO_CLASSES), lambda c: _object_mask(PHOTO_CLASSES[c], size, rng), paint, rng)
    return _camera(img, rng), placed


def _draw(img: np.ndarray, mask: np.ndarray, name: str, rng: np.random.Generator) -> np.ndarray:
    """A soft shadow below-right of the object, then the object itself."""
    shift = np.float32([[1, 0, rng.uniform(1, 5)], [0, 1, rng.uniform(2, 6)]])
    shadow = cv2.warpAffine(mask.astype(np.float32), shift, mask.shape[::-1])
    shadow = cv2.GaussianBlur(shadow, (0, 0), 3.0)[..., None]
    img = img * (1 - 0.45 * shadow)
    ys, xs = np.nonzero(mask)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    region, inside = img[y0:y1, x0:x1], mask[y0:y1, x0:x1]
    region[inside] = _shaded(mask, name, rng)[inside]
    return img


def _camera(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Colour cast, vignetting, lens blur and sensor noise."""
    size = img.shape[0]
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size - 0.5
    vignette = 1.0 - rng.uniform(0.0, 0.6) * (xx**2 + yy**2)
    img = img * rng.uniform(0.85, 1.15, 3).astype(np.float32) * vignette[..., None]
    if rng.random() < 0.6:
        img = cv2.GaussianBlur(img, (0, 0), float(rng.uniform(0.4, 1.2)))
    img = img + rng.normal(0, rng.uniform(1, 6), img.shape).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8)
