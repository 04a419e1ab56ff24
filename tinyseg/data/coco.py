"""COCO instances files: reading and validating any COCO JSON into `CocoData`.

Polygons, RLE and uncompressed RLE are all turned into compressed RLE once at load; masks are decoded per
sample (data/dataset.py). `iscrowd=1` regions become ignore regions (no heatmap penalty there), never objects.
Category ids (any integers, e.g. COCO's 1..90) map to contiguous labels 0..C-1 and back.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_util

from tinyseg.data.transforms import MaskCrop
from tinyseg.errors import DataError, DataWarning


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


def to_rle(seg, h: int, w: int) -> dict:
    """A COCO `segmentation` (polygons, RLE or uncompressed RLE) -> compressed RLE. Raises ValueError."""
    if isinstance(seg, list):  # polygons
        polys = [p for p in seg if isinstance(p, list) and len(p) >= 6 and len(p) % 2 == 0]
        if not polys:
            raise ValueError("polygon with fewer than 3 points")
        return mask_util.merge(mask_util.frPyObjects(polys, h, w))
    if isinstance(seg, dict) and "counts" in seg and "size" in seg:
        if list(seg["size"]) != [h, w]:
            raise ValueError(f"RLE size {seg['size']} does not match image size {[h, w]}")
        if isinstance(seg["counts"], list):  # uncompressed RLE
            return mask_util.frPyObjects(seg, h, w)
        counts = seg["counts"].encode("ascii") if isinstance(seg["counts"], str) else seg["counts"]
        return {"size": [h, w], "counts": counts}
    raise ValueError("segmentation is neither polygons nor RLE")


def load_coco(ann_file: str | Path, image_dir: str | Path | None = None, check_files: bool = True) -> CocoData:
    """Parse and validate a COCO instances JSON. Raises DataError; warns (DataWarning) about what it skips."""
    path = Path(ann_file)
    d = _read_json(path)
    img_dir = Path(image_dir) if image_dir else path.parent
    if not img_dir.is_dir():
        raise DataError(f"{img_dir}: image folder not found")
    cat_ids, names = _categories(d["categories"], path)
    records, missing = _images(d["images"], img_dir, path, check_files)
    skipped = _add_annotations(d.get("annotations", []), records, {c: i for i, c in enumerate(cat_ids)}, d["images"])
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
        d = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(d, dict) or not isinstance(d.get("images"), list) or not isinstance(d.get("categories"), list):
        raise DataError(f"{path}: not a COCO instances file (needs 'images' and 'categories' lists)")
    return d


def _categories(cats: list, path: Path) -> tuple[list[int], list[str]]:
    """-> category ids sorted (label i is the i-th), and their names."""
    try:
        cats = sorted(cats, key=lambda c: c["id"])
        cat_ids = [int(c["id"]) for c in cats]
        names = [str(c.get("name", c["id"])) for c in cats]
    except (KeyError, TypeError, ValueError):
        raise DataError(f"{path}: every category needs an integer 'id'") from None
    if not cats:
        raise DataError(f"{path}: no categories")
    return cat_ids, names


def _images(images: list, img_dir: Path, path: Path, check_files: bool) -> tuple[dict[int, ImageRecord], list[str]]:
    """-> records by image id, and the files that are missing (their images are skipped)."""
    records: dict[int, ImageRecord] = {}
    missing: list[str] = []
    for im in images:
        try:
            rec = ImageRecord(int(im["id"]), img_dir / str(im["file_name"]), int(im["height"]), int(im["width"]))
        except (KeyError, TypeError, ValueError):
            raise DataError(f"{path}: image entry {im!r:.120} needs id, file_name, height and width") from None
        if check_files and not rec.file.is_file():
            missing.append(str(rec.file))
            continue
        records[rec.id] = rec
    return records, missing


def _add_annotations(anns: list, records: dict[int, ImageRecord], label_of: dict[int, int], images: list) -> dict:
    """Attach each usable annotation to its image record; -> {reason: [annotation ids]} of what was skipped."""
    skipped: dict[str, list] = {}
    for a in anns:
        try:
            rec = records.get(int(a["image_id"]))
            if rec is None:
                reason = "its image is missing" if int(a["image_id"]) in _ids(images) else "unknown image_id"
                skipped.setdefault(reason, []).append(a.get("id"))
                continue
            if int(a["category_id"]) not in label_of:
                skipped.setdefault("unknown category_id", []).append(a.get("id"))
                continue
            rle = to_rle(a["segmentation"], rec.height, rec.width)
        except (KeyError, TypeError) as e:
            skipped.setdefault(f"missing field {e}", []).append(a.get("id") if isinstance(a, dict) else None)
            continue
        except ValueError as e:
            skipped.setdefault(str(e), []).append(a.get("id"))
            continue
        if _box_outside(a.get("bbox"), rec):
            # Boxes are always re-derived from the (clipped) mask, so this is harmless; say so once.
            skipped.setdefault("bbox outside the image: kept, box taken from the mask instead", []).append(a.get("id"))
        label = label_of[int(a["category_id"])]
        if a.get("iscrowd", 0):
            rec.crowd_rles.append(rle)
            rec.crowd_labels.append(label)
        elif mask_util.area(rle) > 0:
            rec.labels.append(label)
            rec.rles.append(rle)
        else:
            skipped.setdefault("empty mask", []).append(a.get("id"))
    return skipped


def _box_outside(bbox, rec: ImageRecord) -> bool:
    if not (isinstance(bbox, list) and len(bbox) == 4):
        return False
    x, y, w, h = bbox
    return x < -1 or y < -1 or x + w > rec.width + 1 or y + h > rec.height + 1


def _ids(images: list) -> set[int]:
    return {int(im["id"]) for im in images if isinstance(im, dict) and "id" in im}


def decode_masks(rles: list[dict], h: int, w: int) -> np.ndarray:
    """Compressed RLEs -> [N, H, W] uint8 masks."""
    if not rles:
        return np.zeros((0, h, w), np.uint8)
    return np.ascontiguousarray(mask_util.decode(rles).transpose(2, 0, 1))


def rles_to_crops(rles: list[dict], chunk: int = 32) -> list[MaskCrop]:
    """Decode RLEs a chunk at a time and keep each mask's bounding-box crop."""
    out = []
    for i in range(0, len(rles), chunk):
        part = rles[i : i + chunk]
        dec = mask_util.decode(part)  # [H, W, n], Fortran order: slicing one mask's box is cheap
        for k, (x, y, bw, bh) in enumerate(mask_util.toBbox(part).astype(int)):
            out.append(MaskCrop(int(x), int(y), np.ascontiguousarray(dec[y : y + bh, x : x + bw, k])))
    return out
