"""COCO instances datasets: reading and validating any COCO JSON, the training/eval Dataset, and collate.

Polygons, RLE and uncompressed RLE are all turned into compressed RLE once at load; masks are decoded per
sample. `iscrowd=1` regions become ignore regions (no heatmap penalty there), never objects. Category ids
(any integers, e.g. COCO's 1..90) map to contiguous labels 0..C-1 and back.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_util
import torch
from torch.utils.data import Dataset, Sampler
from tqdm import tqdm

from tinyseg.data import transforms as T
from tinyseg.data.io import DatasetError, DatasetWarning, read_image  # noqa: F401 (re-exported)
from tinyseg.targets import build_targets


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


def _to_rle(seg, h: int, w: int) -> dict:
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
    """Parse and validate a COCO instances JSON. Raises DatasetError; warns (DatasetWarning) about what it skips."""
    path = Path(ann_file)
    if not path.is_file():
        raise DatasetError(f"{path}: annotation file not found")
    try:
        d = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DatasetError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(d, dict) or not isinstance(d.get("images"), list) or not isinstance(d.get("categories"), list):
        raise DatasetError(f"{path}: not a COCO instances file (needs 'images' and 'categories' lists)")
    anns = d.get("annotations", [])
    img_dir = Path(image_dir) if image_dir else path.parent
    if not img_dir.is_dir():
        raise DatasetError(f"{img_dir}: image folder not found")
    try:
        cats = sorted(d["categories"], key=lambda c: c["id"])
        cat_ids = [int(c["id"]) for c in cats]
        names = [str(c.get("name", c["id"])) for c in cats]
    except (KeyError, TypeError, ValueError):
        raise DatasetError(f"{path}: every category needs an integer 'id'") from None
    if not cats:
        raise DatasetError(f"{path}: no categories")
    label_of = {cid: i for i, cid in enumerate(cat_ids)}

    records: dict[int, ImageRecord] = {}
    missing: list[str] = []
    for im in d["images"]:
        try:
            rec = ImageRecord(int(im["id"]), img_dir / str(im["file_name"]), int(im["height"]), int(im["width"]))
        except (KeyError, TypeError, ValueError):
            raise DatasetError(f"{path}: image entry {im!r:.120} needs id, file_name, height and width") from None
        if check_files and not rec.file.is_file():
            missing.append(str(rec.file))
            continue
        records[rec.id] = rec
    skipped: dict[str, list] = {}
    for a in anns:
        try:
            rec = records.get(int(a["image_id"]))
            if rec is None:
                reason = "its image is missing" if int(a["image_id"]) in _ids(d["images"]) else "unknown image_id"
                skipped.setdefault(reason, []).append(a.get("id"))
                continue
            if int(a["category_id"]) not in label_of:
                skipped.setdefault("unknown category_id", []).append(a.get("id"))
                continue
            rle = _to_rle(a["segmentation"], rec.height, rec.width)
        except (KeyError, TypeError) as e:
            skipped.setdefault(f"missing field {e}", []).append(a.get("id") if isinstance(a, dict) else None)
            continue
        except ValueError as e:
            skipped.setdefault(str(e), []).append(a.get("id"))
            continue
        bbox = a.get("bbox")
        if (
            isinstance(bbox, list)
            and len(bbox) == 4
            and (
                bbox[0] < -1 or bbox[1] < -1 or bbox[0] + bbox[2] > rec.width + 1 or bbox[1] + bbox[3] > rec.height + 1
            )
        ):
            # Boxes are always re-derived from the (clipped) mask, so this is harmless; say so once.
            skipped.setdefault("bbox outside the image: kept, box taken from the mask instead", []).append(a.get("id"))
        if a.get("iscrowd", 0):
            rec.crowd_rles.append(rle)
            rec.crowd_labels.append(label_of[int(a["category_id"])])
        elif mask_util.area(rle) > 0:
            rec.labels.append(label_of[int(a["category_id"])])
            rec.rles.append(rle)
        else:
            skipped.setdefault("empty mask", []).append(a.get("id"))
    if missing:
        warnings.warn(
            f"{path}: skipped {len(missing)} images whose files are missing, e.g. {missing[:3]}",
            DatasetWarning,
            stacklevel=2,
        )
    for reason, ids in skipped.items():
        what = "fixed" if reason.startswith("bbox outside") else "skipped"
        warnings.warn(f"{path}: {what} {len(ids)} annotations ({reason}), ids {ids[:5]}", DatasetWarning, stacklevel=2)
    if not records:
        raise DatasetError(f"{path}: the dataset is empty (no usable images)")
    return CocoData(path, img_dir, names, cat_ids, list(records.values()))


def _ids(images: list) -> set[int]:
    return {int(im["id"]) for im in images if isinstance(im, dict) and "id" in im}


def decode_masks(rles: list[dict], h: int, w: int) -> np.ndarray:
    if not rles:
        return np.zeros((0, h, w), np.uint8)
    return np.ascontiguousarray(mask_util.decode(rles).transpose(2, 0, 1))


def rles_to_crops(rles: list[dict], h: int, w: int, chunk: int = 32) -> list[T.MaskCrop]:
    """Decode RLEs a chunk at a time and keep each mask's bounding-box crop."""
    out = []
    for i in range(0, len(rles), chunk):
        part = rles[i : i + chunk]
        dec = mask_util.decode(part)  # [H, W, n], Fortran order: slicing one mask's box is cheap
        for k, (x, y, bw, bh) in enumerate(mask_util.toBbox(part).astype(int)):
            out.append(T.MaskCrop(int(x), int(y), np.ascontiguousarray(dec[y : y + bh, x : x + bw, k])))
    return out


class CocoDataset(Dataset):
    """Letterboxed (eval) or randomly augmented (train) samples with their training targets.

    Returns (image uint8 [3, S, S], target dict). Images are decoded once and kept in memory when they fit
    (`cache_bytes`): on a 2-core laptop PNG decoding would otherwise cost as much as the forward pass.
    """

    def __init__(
        self,
        data: CocoData,
        imgsz: int,
        train: bool,
        stride: int = 4,
        scale_min: float = 0.6,
        scale_max: float = 1.5,
        flip_prob: float = 0.5,
        color_jitter: float = 0.3,
        min_instance_pixels: int = 6,
        max_mask_instances: int = 64,
        seed: int = 0,
        cache_bytes: int = 4 << 30,
    ):
        self.data, self.imgsz, self.train, self.stride = data, imgsz, train, stride
        self.mask_stride = max(stride // 2, 1)  # the model's prototypes are at half the heatmap stride
        self.scale_min, self.scale_max, self.flip_prob = scale_min, scale_max, flip_prob
        self.color_jitter, self.min_pixels, self.max_mask = color_jitter, min_instance_pixels, max_mask_instances
        self.seed, self.epoch = seed, 0
        need = sum(r.height * r.width * 3 for r in data.images)
        self.cache: list | None = [None] * len(data.images) if need <= cache_bytes else None

    def preload(self, progress: bool = True) -> None:
        """Decode every image now (in the main process, so DataLoader workers inherit the cache)."""
        if self.cache is None:
            return
        for i in tqdm(range(len(self)), desc=f"load {self.data.path.name}", disable=not progress, leave=False):
            self._load(i)

    def __len__(self) -> int:
        return len(self.data.images)

    def set_epoch(self, epoch: int) -> None:
        """Augmentation of sample i in epoch e depends only on (seed, e, i): exact resume, any worker count."""
        self.epoch = epoch

    def image(self, i: int) -> np.ndarray:
        if self.cache is not None and self.cache[i] is not None:
            return self.cache[i][0]
        return self._load(i)[0]

    def crops(self, i: int) -> tuple[list[T.MaskCrop], list[T.MaskCrop]]:
        """(object crops, crowd crops) of image i."""
        if self.cache is not None and self.cache[i] is not None:
            return self.cache[i][1]
        return self._load(i)[1]

    def _load(self, i: int):
        rec = self.data.images[i]
        img = read_image(rec.file)
        if img.shape[:2] != (rec.height, rec.width):
            raise DatasetError(
                f"{rec.file}: image is {img.shape[1]}x{img.shape[0]} but the JSON says {rec.width}x{rec.height}"
            )
        crops = (rles_to_crops(rec.rles, rec.height, rec.width), rles_to_crops(rec.crowd_rles, rec.height, rec.width))
        if self.cache is not None:
            self.cache[i] = (img, crops)
        return img, crops

    def __getitem__(self, index: int | tuple[int, int]):
        """index: i, or (epoch, i) from an EpochSampler (persistent workers never see set_epoch)."""
        epoch, i = index if isinstance(index, tuple) else (self.epoch, index)
        rec = self.data.images[i]
        img = self.image(i)
        obj_crops, crowd_crops = self.crops(i)
        S = self.imgsz
        if self.train:
            rng = np.random.default_rng([self.seed, epoch, i])
            m = T.random_affine(rec.height, rec.width, S, rng, self.scale_min, self.scale_max, self.flip_prob)
        else:
            rng = None
            m = T.Letterbox.fit(rec.height, rec.width, S).matrix()
        out = T.warp_image(img, m, S)
        if self.train:
            out = T.color_jitter(out, rng, self.color_jitter)
        crops = T.warp_crops(obj_crops, m, S)
        boxes, areas = T.crop_boxes(crops)
        keep = np.flatnonzero(areas >= self.min_pixels)
        crops, boxes = [crops[k] for k in keep], boxes[keep]
        labels = np.asarray(rec.labels, np.int64)[keep]
        tgt = build_targets(labels, boxes, S, self.stride)
        ignore = None
        if crowd_crops:
            crowd = T.paste(T.warp_crops(crowd_crops, m, S), S).max(0, keepdims=True)
            ignore = T.downsample_masks(crowd, self.stride)[0] > 0
        # Only a sample of instances gets the (per-instance, relatively costly) mask loss.
        sel = np.arange(len(labels))
        if rng is not None and len(sel) > self.max_mask:
            sel = np.sort(rng.choice(len(sel), self.max_mask, replace=False))
        target = {
            "heatmap": torch.from_numpy(tgt["heatmap"]),
            "box": torch.from_numpy(tgt["box"]),
            "box_weight": torch.from_numpy(tgt["box_weight"]),
            "ignore": torch.from_numpy(ignore)
            if ignore is not None
            else torch.zeros(S // self.stride, S // self.stride, dtype=bool),
            "labels": torch.from_numpy(labels[sel]),
            "boxes": torch.from_numpy(boxes[sel]),
            "centers": torch.from_numpy(tgt["centers"][sel]),
            "masks": torch.from_numpy(T.downsample_crops([crops[k] for k in sel], S, self.mask_stride)),
            "image_id": rec.id,
            "orig_size": (rec.height, rec.width),
            "matrix": torch.from_numpy(m),
        }
        # A [3, S, S] view of the HWC pixels, not a copy: torch's strided uint8 copy took 4.6 of the 8.6 ms this
        # method spends per training image; collate() stacks the views channels-last, the layout the CPU
        # training step wants anyway.
        return torch.from_numpy(out).permute(2, 0, 1), target


class EpochSampler(Sampler):
    """Shuffles with a generator seeded by (seed, epoch) and yields (epoch, index): the augmentation of every
    sample is then fixed by (seed, epoch, index) even with persistent DataLoader workers, so a resumed run
    sees exactly the batches the uninterrupted run would have."""

    def __init__(self, n: int, seed: int = 0, shuffle: bool = True):
        self.n, self.seed, self.shuffle, self.epoch = n, seed, shuffle, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 100003 + self.epoch)
        order = torch.randperm(self.n, generator=g).tolist() if self.shuffle else range(self.n)
        return iter([(self.epoch, i) for i in order])


INSTANCE_KEYS = ("labels", "boxes", "centers", "masks")


def collate(batch):
    """Stack images and dense targets; pad per-instance targets to the largest count, with a `valid` flag.
    Images come out [B, 3, S, S] in channels-last memory (a view of [B, S, S, 3]): one contiguous copy each."""
    images = torch.stack([b[0].permute(1, 2, 0) for b in batch]).permute(0, 3, 1, 2)
    targets = [b[1] for b in batch]
    out = {k: torch.stack([t[k] for t in targets]) for k in ("heatmap", "box", "box_weight", "ignore", "matrix")}
    n = max(1, max(len(t["labels"]) for t in targets))
    out["valid"] = torch.zeros(len(batch), n, dtype=torch.bool)
    for k in INSTANCE_KEYS:
        ref = targets[0][k]
        out[k] = torch.zeros((len(batch), n, *ref.shape[1:]), dtype=ref.dtype)
    for i, t in enumerate(targets):
        m = len(t["labels"])
        out["valid"][i, :m] = True
        for k in INSTANCE_KEYS:
            out[k][i, :m] = t[k]
    out["image_id"] = [t["image_id"] for t in targets]
    out["orig_size"] = [t["orig_size"] for t in targets]
    return images, out


def build_dataset(ann_file: str, image_dir: str, cfg, train: bool, stride: int = 4, seed: int = 0) -> CocoDataset:
    """cfg: DataConfig. Loads and validates the JSON, then wraps it in a CocoDataset."""
    data = load_coco(ann_file, image_dir or None)
    return CocoDataset(
        data,
        cfg.imgsz,
        train,
        stride,
        cfg.scale_min,
        cfg.scale_max,
        cfg.flip_prob,
        cfg.color_jitter,
        cfg.min_instance_pixels,
        cfg.max_mask_instances,
        seed,
    )
