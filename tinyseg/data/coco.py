"""COCO instances files: reading and validating any COCO JSON into `CocoData`.

Polygons, RLE and uncompressed RLE are all turned into compressed RLE once at load; masks are decoded per
sample (data/dataset.py). `iscrowd=1` regions become ignore regions (no heatmap penalty there), never objects.
Category ids (any integers, e.g. COCO's 1..90) map to contiguous labels 0..C-1 and back.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_util

from tinyseg.data.rle import as_int, to_rle
from tinyseg.errors import DataError, DataWarning
from tinyseg.io import read_image

# The largest image a JSON may declare: Pillow's decompression-bomb limit, and 65535 px a side.
MAX_IMAGE_PIXELS = 2 * 89_478_485
MAX_IMAGE_SIDE = 65_535


@dataclass
class ImageRecord:
    id: int
    file: Path
    height: int
    width: int
    labels: list[int] = field(default_factory=list)
    rles: list[dict] = field(default_factory=list)  # compressed RLE per object
    crowd_rles: list[dict] = field(default_factory=list)
    crowd_labels: list[int] = field(default_factory=list)


@dataclass
class CocoData:
    """A parsed, validated COCO instances file."""

    path: Path
    image_dir: Path
    class_names: list[str]
    cat_ids: list[int]  # label -> category id
    images: list[ImageRecord]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def load_coco(
    ann_file: str | Path, image_dir: str | Path | None = None, check_files: bool = True, allow_outside: bool = False
) -> CocoData:
    """Parse and validate a COCO instances JSON. Raises DataError naming the file, the entry and the problem;
    warns (DataWarning) about what it skips. `allow_outside`: file_names may lead outside the image folder."""
    path = Path(ann_file)
    d = _read_json(path)
    img_dir = Path(image_dir) if image_dir else path.parent
    if not img_dir.is_dir():
        raise DataError(f"{img_dir}: image folder not found")
    cat_ids, names = _categories(d["categories"], path)
    records, missing = _images(d["images"], img_dir, path, check_files, allow_outside)
    anns = d.get("annotations", [])
    if not isinstance(anns, list):
        raise DataError(f"{path}: 'annotations' is not a list")
    skipped = _add_annotations(anns, records, {c: i for i, c in enumerate(cat_ids)}, d["images"])
    if missing:
        warnings.warn(
            f"{path}: skipped {len(missing)} images whose files are missing, e.g. {missing[:3]}",
            DataWarning,
            stacklevel=2,
        )
    for reason, ids in skipped.items():
        what = "fixed" if reason.startswith("bbox outside") else "skipped"
        warnings.warn(f"{path}: {what} {len(ids)} annotations ({reason}), ids {ids[:5]}", DataWarning, stacklevel=2)
    if not records:
        raise DataError(f"{path}: the dataset is empty (no usable images)")
    return CocoData(path, img_dir, names, cat_ids, list(records.values()))


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise DataError(f"{path}: annotation file not found")
    try:
        d = json.loads(path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise DataError(f"{path}: not valid JSON ({str(e)[:200]})") from None
    if not isinstance(d, dict) or not isinstance(d.get("images"), list) or not isinstance(d.get("categories"), list):
        raise DataError(f"{path}: not a COCO instances file (needs 'images' and 'categories' lists)")
    return d


def _categories(cats: list, path: Path) -> tuple[list[int], list[str]]:
    """-> category ids sorted (label i is the i-th), and their names."""
    if not cats:
        raise DataError(f"{path}: no categories")
    for c in cats:
        if not isinstance(c, dict) or as_int(c.get("id")) is None:
            raise DataError(f"{path}: category {str(c)[:80]} needs an integer 'id'")
    cats = sorted(cats, key=lambda c: c["id"])
    cat_ids = [c["id"] for c in cats]
    if len(set(cat_ids)) != len(cat_ids):
        dup = sorted({i for i in cat_ids if cat_ids.count(i) > 1})
        raise DataError(f"{path}: category ids {dup[:5]} appear more than once")
    return cat_ids, [str(c.get("name", c["id"])) for c in cats]


def _images(
    images: list, img_dir: Path, path: Path, check_files: bool, allow_outside: bool
) -> tuple[dict[int, ImageRecord], list[str]]:
    """-> records by image id, and the files that are missing (their images are skipped)."""
    records: dict[int, ImageRecord] = {}
    missing: list[str] = []
    for im in images:
        rec = _image_record(im, img_dir, path, allow_outside)
        if rec.id in records:
            raise DataError(f"{path}: image id {rec.id} appears more than once ({records[rec.id].file.name}, ...)")
        if check_files and not rec.file.is_file():
            missing.append(str(rec.file))
            continue
        records[rec.id] = rec
    return records, missing


def _image_record(im, img_dir: Path, path: Path, allow_outside: bool) -> ImageRecord:
    fields = (im.get(k) for k in ("id", "height", "width")) if isinstance(im, dict) else ()
    image_id, h, w = (as_int(v) for v in fields) if isinstance(im, dict) else (None, None, None)
    name = im.get("file_name") if isinstance(im, dict) else None
    if image_id is None or h is None or w is None or not isinstance(name, str) or not name:
        raise DataError(f"{path}: image entry {str(im)[:120]} needs integer id, height, width and a file_name")
    if not (0 < h <= MAX_IMAGE_SIDE and 0 < w <= MAX_IMAGE_SIDE and h * w <= MAX_IMAGE_PIXELS):
        raise DataError(f"{path}: image {image_id} ({name}) has an impossible size {w}x{h}")
    file = Path(os.path.normpath(img_dir / name))
    if not allow_outside and not _inside(file, img_dir):
        raise DataError(
            f"{path}: image {image_id} file_name {name!r} leads outside the image folder {img_dir} "
            "(allow it with data.allow_outside_images=true)"
        )
    return ImageRecord(image_id, file, h, w)


def _inside(file: Path, folder: Path) -> bool:
    root = os.path.normpath(os.path.abspath(folder))
    return os.path.commonpath([root, os.path.abspath(file)]) == root


def _add_annotations(anns: list, records: dict[int, ImageRecord], label_of: dict[int, int], images: list) -> dict:
    """Attach each usable annotation to its image record; -> {reason: [annotation ids]} of what was skipped."""
    skipped: dict[str, list] = {}
    known = _ids(images)
    for a in anns:
        reason, rle = _annotation_rle(a, records, label_of, known)
        if reason:
            skipped.setdefault(reason, []).append(a.get("id") if isinstance(a, dict) else None)
            continue
        rec = records[a["image_id"]]
        if _box_outside(a.get("bbox"), rec):
            # Boxes are always re-derived from the (clipped) mask, so this is harmless; say so once.
            skipped.setdefault("bbox outside the image: kept, box taken from the mask instead", []).append(a.get("id"))
        label = label_of[a["category_id"]]
        if a.get("iscrowd", 0):
            rec.crowd_rles.append(rle)
            rec.crowd_labels.append(label)
        elif mask_util.area(rle) > 0:
            rec.labels.append(label)
            rec.rles.append(rle)
        else:
            skipped.setdefault("empty mask", []).append(a.get("id"))
    return skipped


def _annotation_rle(a, records: dict, label_of: dict, known: set) -> tuple[str, dict | None]:
    """-> ("", its RLE) for a usable annotation, else (why it is skipped, None)."""
    if not isinstance(a, dict):
        return "not an object", None
    image_id, cat_id = as_int(a.get("image_id")), as_int(a.get("category_id"))
    if image_id is None or cat_id is None or "segmentation" not in a:
        return "missing or non-integer image_id, category_id or segmentation", None
    if image_id not in records:
        return ("its image is missing" if image_id in known else "unknown image_id"), None
    if cat_id not in label_of:
        return "unknown category_id", None
    rec = records[image_id]
    try:
        return "", to_rle(a["segmentation"], rec.height, rec.width)
    except ValueError as e:
        return str(e), None


def _box_outside(bbox, rec: ImageRecord) -> bool:
    if not (isinstance(bbox, list) and len(bbox) == 4 and all(isinstance(v, int | float) for v in bbox)):
        return False
    x, y, w, h = bbox
    return x < -1 or y < -1 or x + w > rec.width + 1 or y + h > rec.height + 1


def _ids(images: list) -> set[int]:
    return {im["id"] for im in images if isinstance(im, dict) and as_int(im.get("id")) is not None}


def read_record_image(rec: ImageRecord) -> np.ndarray:
    """The image of a record as RGB, checked against the size its JSON entry declares."""
    img = read_image(rec.file)
    if img.shape[:2] != (rec.height, rec.width):
        raise DataError(
            f"{rec.file}: image is {img.shape[1]}x{img.shape[0]} but the JSON says {rec.width}x{rec.height}"
        )
    return img
