"""Synthetic instance-segmentation dataset: textured, rotated, occluding shapes on cluttered backgrounds.

It is the embedded default dataset of the demo and the tests, so it is meant as a fair test, not a toy:
six shape classes told apart by shape only (colour and texture are random), sizes from ~8 px to a third of
the image, rotation, aspect jitter, occlusion (annotations are the *visible* part), unannotated clutter
(lines, arcs, dots) on varied backgrounds, and 0 to many objects per image. Deterministic for a seed:
image i of a split depends only on (seed, split, i).
"""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

import cv2
import numpy as np
import pycocotools.mask as mask_util
from tqdm import tqdm

from tinyseg.data.photo import PHOTO_CLASSES, render_photo
from tinyseg.data.scenes import place_objects
from tinyseg.io import atomic_write, write_text

CLASSES = ("circle", "square", "triangle", "star", "ring", "cross")
_SPLIT_IDS = {"train": 1, "val": 2}


def _unit_polygon(cls: str, rng: np.random.Generator) -> np.ndarray:
    """Outline of a shape of radius ~1 centred at 0, as [P, 2] float (ring: the outer circle)."""
    if cls in ("circle", "ring"):
        t = np.linspace(0, 2 * np.pi, 48, endpoint=False)
        return np.stack([np.cos(t), np.sin(t)], 1)
    if cls == "square":
        return np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], float) * 0.8
    if cls == "triangle":
        t = np.pi / 2 + np.array([0, 2, 4]) * np.pi / 3
        return np.stack([np.cos(t), np.sin(t)], 1)
    if cls == "star":
        inner = rng.uniform(0.38, 0.5)
        t = np.arange(10) * np.pi / 5
        r = np.where(np.arange(10) % 2 == 0, 1.0, inner)
        return np.stack([r * np.cos(t), r * np.sin(t)], 1)
    if cls == "cross":
        a = rng.uniform(0.28, 0.38)
        return np.array(
            [[-a, -1], [a, -1], [a, -a], [1, -a], [1, a], [a, a], [a, 1], [-a, 1], [-a, a], [-1, a], [-1, -a], [-a, -a]]
        )
    raise ValueError(cls)


def _texture(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """A random [h, w, 3] float32 texture: solid, gradient, stripes or speckle, in random colours."""
    c1 = rng.uniform(0, 255, 3).astype(np.float32)
    c2 = rng.uniform(0, 255, 3).astype(np.float32)
    kind = rng.integers(4)
    if kind == 0:
        out = np.broadcast_to(c1, (h, w, 3)).astype(np.float32)
    else:
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        ang = rng.uniform(0, np.pi)
        proj = xx * np.cos(ang) + yy * np.sin(ang)
        if kind == 1:
            t = (proj - proj.min()) / max(float(np.ptp(proj)), 1.0)
        elif kind == 2:
            period = rng.uniform(3, 10)
            t = ((proj / period) % 2 < 1).astype(np.float32)
        else:
            t = rng.uniform(0, 1, (h, w)).astype(np.float32)
        out = c1 + (c2 - c1) * t[..., None] * rng.uniform(0.3, 1.0)
    noise = rng.normal(0, rng.uniform(0, 12), (h, w, 1)).astype(np.float32)
    return np.ascontiguousarray(out + noise)


def _background(size: int, rng: np.random.Generator) -> np.ndarray:
    img = _texture(size, size, rng)
    # Unannotated clutter: lines, arcs and dot clusters, so the model learns that not every edge is an object.
    for _ in range(rng.integers(0, 9)):
        color = tuple(float(c) for c in rng.uniform(0, 255, 3))
        kind = rng.integers(3)
        p = rng.integers(0, size, 4)
        thick = int(rng.integers(1, 4))
        if kind == 0:
            cv2.line(img, (int(p[0]), int(p[1])), (int(p[2]), int(p[3])), color, thick, cv2.LINE_AA)
        elif kind == 1:
            axes = (int(rng.integers(10, size // 2)), int(rng.integers(10, size // 2)))
            start = float(rng.uniform(0, 360))
            cv2.ellipse(img, (int(p[0]), int(p[1])), axes, 0, start, start + float(rng.uniform(40, 160)), color, thick)
        else:
            for _ in range(rng.integers(3, 15)):
                q = rng.normal(p[:2], 12).astype(int)
                cv2.circle(img, (int(q[0]), int(q[1])), int(rng.integers(1, 3)), color, -1)
    return img


def _shape_mask(cls: str, size: int, rng: np.random.Generator) -> tuple[np.ndarray, int, int]:
    """Full-image binary mask of one randomly placed object, plus its centre."""
    radius = np.exp(rng.uniform(np.log(4.5), np.log(size / 6)))
    aspect = rng.uniform(0.75, 1.33) if cls not in ("circle", "ring", "square") else 1.0
    ang = rng.uniform(0, 2 * np.pi)
    pts = _unit_polygon(cls, rng) * radius * np.array([aspect, 1 / aspect])
    rot = np.array([[np.cos(ang), -np.sin(ang)], [np.sin(ang), np.cos(ang)]])
    cx, cy = rng.uniform(0, size, 2)
    poly = pts @ rot.T + (cx, cy)
    mask = np.zeros((size, size), np.uint8)
    cv2.fillPoly(mask, [np.round(poly * 16).astype(np.int32)], 1, cv2.LINE_8, shift=4)
    if cls == "ring":
        cv2.circle(mask, (int(cx * 16), int(cy * 16)), int(radius * rng.uniform(0.45, 0.65) * 16), 0, -1, shift=4)
    return mask, int(cx), int(cy)


def render_image(size: int, rng: np.random.Generator, max_objects: int = 14) -> tuple[np.ndarray, list[dict]]:
    """One image ([size, size, 3] uint8 BGR) and its instances: dicts with `category` (0-based) and `mask`."""
    img = _background(size, rng)
    # 0 to many objects: a few empty images, mostly a handful, sometimes crowded.
    n = 0 if rng.random() < 0.05 else int(min(rng.geometric(1 / 6), max_objects * 2))

    def paint(new: np.ndarray, cls_id: int) -> None:
        ys, xs = np.nonzero(new)
        y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
        tex = _texture(y1 - y0, x1 - x0, rng)
        # Keep objects distinguishable from what is under them (a fair task), but not always by much.
        under = img[y0:y1, x0:x1][new[y0:y1, x0:x1]].mean(0)
        if np.abs(tex.mean((0, 1)) - under).max() < 40:
            tex = 255 - tex
        img[y0:y1, x0:x1][new[y0:y1, x0:x1]] = tex[new[y0:y1, x0:x1]]

    placed = place_objects(n, len(CLASSES), lambda c: _shape_mask(CLASSES[c], size, rng)[0].astype(bool), paint, rng)
    # Mild blur + noise so edges are not perfectly crisp (the camera never is).
    if rng.random() < 0.5:
        img = cv2.GaussianBlur(img, (3, 3), rng.uniform(0.3, 1.0))
    return np.clip(img, 0, 255).astype(np.uint8), placed


# Generated styles: their class names and the function that renders one image.
STYLES = {"shapes": (CLASSES, render_image), "photo": (PHOTO_CLASSES, render_photo)}


def _coco_annotation(ann_id: int, image_id: int, cat: int, mask: np.ndarray) -> dict:
    rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    x, y, w, h = mask_util.toBbox(rle).tolist()
    rle["counts"] = rle["counts"].decode("ascii")
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": cat + 1,
        "segmentation": rle,
        "area": float(mask_util.area(rle)),
        "bbox": [x, y, w, h],
        "iscrowd": 0,
    }


def _render_one(args: tuple) -> list[dict]:
    """Render image i, write its PNG, return its instances as (category, RLE) -- picklable, for a process pool."""
    out_dir, split, i, size, seed, style = args
    rng = np.random.default_rng([seed, _SPLIT_IDS.get(split, 9), i])
    img, inst = STYLES[style][1](size, rng)
    path = out_dir / "images" / split / f"{i:06d}.png"
    with atomic_write(path) as tmp:
        if not cv2.imwrite(str(tmp), img, [cv2.IMWRITE_PNG_COMPRESSION, 1]):
            raise OSError(f"{path}: could not write image")
    return [_coco_annotation(0, i + 1, obj["category"], obj["mask"]) for obj in inst]


def generate_split(
    out_dir: Path,
    split: str,
    num: int,
    size: int,
    seed: int,
    progress: bool = True,
    workers: int = 1,
    style: str = "shapes",
) -> Path:
    """Write `out_dir/images/<split>/*.png` and `out_dir/<split>.json`; returns the JSON path."""
    (out_dir / "images" / split).mkdir(parents=True, exist_ok=True)
    jobs = [(out_dir, split, i, size, seed, style) for i in range(num)]
    pool = multiprocessing.get_context("fork").Pool(workers) if workers > 1 else None
    try:
        it = pool.imap(_render_one, jobs, chunksize=8) if pool else map(_render_one, jobs)
        per_image = list(tqdm(it, total=num, desc=f"synth {split}", disable=not progress, unit="img"))
    finally:
        if pool:
            pool.close()
    images, anns = [], []
    for i, inst in enumerate(per_image):
        images.append({"id": i + 1, "file_name": f"images/{split}/{i:06d}.png", "width": size, "height": size})
        for a in inst:
            a["id"] = len(anns) + 1
            anns.append(a)
    coco = {
        "info": {"description": f"tinyseg synthetic {style}, seed {seed}"},
        "images": images,
        "annotations": anns,
        "categories": [{"id": i + 1, "name": n, "supercategory": style} for i, n in enumerate(STYLES[style][0])],
    }
    path = out_dir / f"{split}.json"
    write_text(json.dumps(coco), path)
    return path


def generate(
    out_dir: str | Path,
    train: int = 1000,
    val: int = 100,
    size: int = 320,
    seed: int = 0,
    progress: bool = True,
    workers: int = 1,
    style: str = "shapes",
) -> tuple[Path, Path]:
    """The train and val splits of a generated set: `style` "shapes" (the demo's) or "photo" (data/photo.py)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return (
        generate_split(out, "train", train, size, seed, progress, workers, style),
        generate_split(out, "val", val, size, seed, progress, workers, style),
    )
