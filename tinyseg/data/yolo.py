"""YOLO-seg datasets (Ultralytics layout): a data.yaml (`path`, `train`, `val`, `names`), image folders, and for
each image a labels/.../NAME.txt with one object per line: `class x1 y1 x2 y2 ...`, normalised to 0..1.

Read into the same validated `CocoData` as a COCO JSON, and written from it. A YOLO line holds one polygon: masks
become one exact polygon each (data/mask_formats.py), holes and separate parts included.
"""

from __future__ import annotations

import os
import shutil
import warnings
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from tinyseg.data.coco import MAX_IMAGE_PIXELS, CocoData, ImageRecord
from tinyseg.data.mask_formats import mask_polygon
from tinyseg.data.rle import decode_masks, to_rle
from tinyseg.errors import DataError, DataWarning
from tinyseg.io import image_files, write_json, write_text

DECIMALS = 6  # normalised coordinates: 1e-6 of a 4096-px side is 0.004 px


def _load_yaml(path: Path) -> dict:
    if not path.is_file():
        raise DataError(f"{path}: data.yaml not found")
    try:
        d = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: not valid YAML ({str(e)[:200]})") from None
    if not isinstance(d, dict):
        raise DataError(f"{path}: not a YOLO data.yaml (expected a mapping with train, val and names)")
    return d


def class_names(d: dict, path: Path) -> list[str]:
    """`names` as a list, or as a mapping {0: name, 1: name, ...} with ids 0..C-1."""
    names = d.get("names")
    if isinstance(names, dict) and sorted(names) == list(range(len(names))):
        names = [names[i] for i in range(len(names))]
    if not (isinstance(names, list) and names):
        raise DataError(f"{path}: `names` must be a list of class names (or a mapping 0..C-1 -> name)")
    return [str(n) for n in names]


def split_folder(yaml_path: Path, split: str) -> Path:
    """The image folder of a split: `split` in data.yaml, relative to `path` (itself relative to the yaml)."""
    d = _load_yaml(yaml_path)
    if not isinstance(d.get(split), str):
        raise DataError(f"{yaml_path}: no `{split}` image folder (a list of folders or a .txt list is not supported)")
    root = yaml_path.parent / str(d.get("path") or ".")
    return root / d[split]


def has_yolo_split(yaml_path: str | Path, split: str) -> bool:
    return isinstance(_load_yaml(Path(yaml_path)).get(split), str)


def label_file(image: Path) -> Path:
    """Ultralytics' rule: the last `images` folder in the path becomes `labels`, the suffix `.txt`."""
    parts = list(image.parts)
    k = max((i for i, p in enumerate(parts) if p == "images"), default=None)
    if k is None:
        return image.with_suffix(".txt")
    parts[k] = "labels"
    return Path(*parts).with_suffix(".txt")


def read_yolo(yaml_path: str | Path, split: str = "train") -> CocoData:
    """A YOLO-seg split -> CocoData (category ids 1..C for classes 0..C-1). Raises DataError; warns (DataWarning)
    about lines it skips, naming the file and line."""
    yaml_path = Path(yaml_path)
    names = class_names(_load_yaml(yaml_path), yaml_path)
    folder = split_folder(yaml_path, split)
    if not folder.is_dir():
        raise DataError(f"{yaml_path}: {split} image folder {folder} not found")
    files = image_files(folder, recursive=True)
    records, skipped = [], []
    for i, file in enumerate(files, 1):
        rec = _record(i, file)
        if rec is not None:
            skipped += _read_labels(rec, label_file(file), len(names))
            records.append(rec)
    for where in skipped[:5]:
        warnings.warn(f"{where}", DataWarning, stacklevel=2)
    if len(skipped) > 5:
        warnings.warn(f"{yaml_path}: {len(skipped)} label lines skipped in all", DataWarning, stacklevel=2)
    if not records:
        raise DataError(f"{yaml_path}: no readable images in the {split} folder {folder}")
    return CocoData(yaml_path, folder, names, list(range(1, len(names) + 1)), records)


def _record(image_id: int, file: Path) -> ImageRecord | None:
    try:
        with Image.open(file) as im:
            w, h = im.size
    except (OSError, Image.DecompressionBombError, ValueError) as e:
        warnings.warn(f"{file}: skipped, not a readable image ({str(e)[:100]})", DataWarning, stacklevel=3)
        return None
    if not (0 < w * h <= MAX_IMAGE_PIXELS):
        warnings.warn(f"{file}: skipped, impossible size {w}x{h}", DataWarning, stacklevel=3)
        return None
    return ImageRecord(image_id, file, h, w)


def _read_labels(rec: ImageRecord, path: Path, num_classes: int) -> list[str]:
    """Add the objects of a label file to `rec`; -> 'file:line: why' for each line skipped."""
    if not path.is_file():
        return []  # an image without a label file has no objects (Ultralytics' convention)
    skipped = []
    for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            values = [float(v) for v in line.split()]
            cls = int(values[0])
            if cls != values[0] or not 0 <= cls < num_classes:
                raise ValueError(f"class {values[0]:g} is not one of 0..{num_classes - 1}")
            xy = np.asarray(values[1:], np.float64)
            if len(xy) == 4:  # a detection box (cx, cy, w, h): its rectangle is the mask
                cx, cy, bw, bh = xy
                xy = np.array(
                    [
                        cx - bw / 2,
                        cy - bh / 2,
                        cx + bw / 2,
                        cy - bh / 2,
                        cx + bw / 2,
                        cy + bh / 2,
                        cx - bw / 2,
                        cy + bh / 2,
                    ]
                )
            xy[0::2] *= rec.width
            xy[1::2] *= rec.height
            rle = to_rle([xy.tolist()], rec.height, rec.width)
        except (ValueError, IndexError) as e:
            skipped.append(f"{path}:{n}: skipped ({e})")
            continue
        rec.labels.append(cls)
        rec.rles.append(rle)
    return skipped


def write_yolo(data: CocoData, out_dir: str | Path, split: str) -> Path:
    """Write `data` as split `split` of a YOLO-seg dataset in out_dir (images copied, labels written, data.yaml
    created or given the split); -> the data.yaml path. Crowd regions have no YOLO form and are left out."""
    out = Path(out_dir)
    yaml_path = out / "data.yaml"
    meta = _load_yaml(yaml_path) if yaml_path.is_file() else {"path": "."}
    if "names" in meta and class_names(meta, yaml_path) != data.class_names:
        raise DataError(f"{yaml_path}: its names differ from {data.path}'s categories {data.class_names}")
    images, labels = out / "images" / split, out / "labels" / split
    images.mkdir(parents=True, exist_ok=True)
    labels.mkdir(parents=True, exist_ok=True)
    crowds = 0
    for rec in data.images:
        name = f"{rec.id:08d}_{rec.file.name}"  # ids keep names unique when file names repeat across folders
        _copy(rec.file, images / name)
        masks = decode_masks(rec.rles, rec.height, rec.width)
        lines = [_line(label, m, rec.width, rec.height) for label, m in zip(rec.labels, masks)]
        write_text("".join(line for line in lines if line), (labels / name).with_suffix(".txt"))
        crowds += len(rec.crowd_rles)
    if crowds:
        warnings.warn(
            f"{data.path}: {crowds} crowd regions left out (YOLO-seg has no crowd)", DataWarning, stacklevel=2
        )
    meta.update({split: f"images/{split}", "names": dict(enumerate(data.class_names))})
    write_text(yaml.safe_dump(meta, sort_keys=False), yaml_path)
    return yaml_path


def _line(label: int, mask: np.ndarray, w: int, h: int) -> str:
    poly = np.asarray(mask_polygon(mask)).reshape(-1, 2) / (w, h)
    if not len(poly):
        return ""
    return f"{label} " + " ".join(f"{v:.{DECIMALS}f}".rstrip("0").rstrip(".") for v in poly.ravel()) + "\n"


def _copy(src: Path, dst: Path) -> None:
    """Hard link when on the same filesystem (no copy of the pixels), else copy."""
    if dst.exists():
        dst.unlink()
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def write_coco(data: CocoData, path: str | Path, split: str) -> Path:
    """Write `data` as a COCO instances JSON at `path` with polygons (traced as for YOLO); the images are linked
    into images/<split>/ beside it, so the JSON works with its default image folder."""
    path = Path(path)
    folder = path.parent / "images" / split
    folder.mkdir(parents=True, exist_ok=True)
    images, anns = [], []
    for rec in data.images:
        name = f"images/{split}/{rec.file.name}"
        _copy(rec.file, path.parent / name)
        images.append({"id": rec.id, "file_name": name, "height": rec.height, "width": rec.width})
        for crowd, labels, rles in ((0, rec.labels, rec.rles), (1, rec.crowd_labels, rec.crowd_rles)):
            for label, m in zip(labels, decode_masks(rles, rec.height, rec.width)):
                poly = mask_polygon(m)
                if poly:
                    ann = {"id": len(anns) + 1, "image_id": rec.id, "category_id": data.cat_ids[label]}
                    ann.update(segmentation=[poly], area=int(m.sum()), iscrowd=crowd)
                    anns.append(ann)
    cats = [{"id": c, "name": n} for c, n in zip(data.cat_ids, data.class_names)]
    write_json({"images": images, "annotations": anns, "categories": cats}, path)
    return path
