"""The Dataset behind training and evaluation: letterboxed (eval) or randomly augmented (train) images with
their instances (labels, tight boxes, soft masks at the mask stride), a seeded epoch sampler, and the
collate of images. Training targets are built from these samples by training code (training/targets.py)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler
from tqdm import tqdm

from tinyseg.config import DataConfig
from tinyseg.data import transforms as T
from tinyseg.data.coco import CocoData, load_coco, read_record_image
from tinyseg.data.flips import flip_map, flip_pairs
from tinyseg.data.rle import rles_to_crops
from tinyseg.errors import DataError

# Decoded images are kept in memory up to this many bytes: on a 2-core laptop decoding PNGs every epoch would
# cost as much as the forward pass.
IMAGE_CACHE_BYTES = 4 << 30


@dataclass
class TrainingSamples:
    """How training samples are made: random scale (relative to the letterboxed size), placement, horizontal
    flip and colour jitter; which instances count; the stride of their mask targets."""

    scale_min: float
    scale_max: float
    flip_prob: float
    color_jitter: float
    # Instances whose visible part after augmentation is smaller than this many pixels are dropped.
    min_pixels: int
    # At most this many instances per image get a mask target (sampled): dense images would otherwise dominate.
    max_mask_instances: int
    mask_stride: int
    # label -> label after a horizontal flip (sided classes swap; data/flips.py); empty: no class changes side.
    flip_map: tuple[int, ...] = ()
    copy_paste: float = 0.0  # probability of pasting objects from another image
    blur_prob: float = 0.0  # probability of a Gaussian blur
    noise: float = 0.0  # standard deviation of Gaussian pixel noise, in 0..255 grey levels
    # Instances cut by the crop or covered by pasted objects to less than this fraction of their area become
    # ignore regions (data.min_visible).
    min_visible: float = 0.0
    color_jitter_mode: str = "mid_grey"  # data.color_jitter_mode
    jitter_keeps_grey: bool = False  # data.jitter_keeps_grey


def build_training_samples(cfg: DataConfig, mask_stride: int, class_names: Sequence[str] = ()) -> TrainingSamples:
    swaps = cfg.flip_prob > 0 and (cfg.flip_pairs or cfg.auto_flip_pairs)
    pairs = flip_pairs(list(class_names), cfg.flip_pairs) if swaps else []
    return TrainingSamples(
        cfg.scale_min,
        cfg.scale_max,
        cfg.flip_prob,
        cfg.color_jitter,
        cfg.min_instance_pixels,
        cfg.max_mask_instances,
        mask_stride,
        flip_map(len(class_names), pairs) if pairs else (),
        cfg.copy_paste,
        cfg.blur_prob,
        cfg.noise,
        cfg.min_visible,
        cfg.color_jitter_mode,
        cfg.jitter_keeps_grey,
    )


class CocoDataset(Dataset):
    """Sample i -> (image uint8 [3, S, S], sample dict: image_id, orig_size and the 2x3 input matrix).
    Evaluation (`training=None`): the image letterboxed. Training: randomly augmented, and the sample also
    holds its instances: labels [N], boxes [N, 4] (tight, input pixels), masks [M, S/m, S/m] (uint8 0..255
    area fractions at mask stride m) of the instances mask_index [M], crowd [S/m, S/m] (ignore regions).
    The augmentation of sample i in epoch e depends only on (seed, e, i): exact resume, any number of workers."""

    def __init__(
        self,
        data: CocoData,
        imgsz: int,
        training: TrainingSamples | None = None,
        seed: int = 0,
        cache_bytes: int = IMAGE_CACHE_BYTES,
    ):
        self.data, self.imgsz, self.training, self.seed, self.epoch = data, imgsz, training, seed, 0
        need = sum(r.height * r.width * 3 for r in data.images)
        self.cache: list | None = [None] * len(data.images) if 0 < need <= cache_bytes else None

    def preload(self, progress: bool = True) -> None:
        """Decode every image now (in the main process, so DataLoader workers inherit the cache)."""
        if self.cache is None:
            return
        for i in tqdm(range(len(self)), desc=f"load {self.data.path.name}", disable=not progress, leave=False):
            self._load(i)

    def __len__(self) -> int:
        return len(self.data.images)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _load(self, i: int) -> tuple[np.ndarray, list[T.MaskCrop], list[T.MaskCrop]]:
        """(image, object crops, crowd crops) of image i, from the cache when it is there."""
        if self.cache is not None and self.cache[i] is not None:
            return self.cache[i]
        rec = self.data.images[i]
        item = (read_record_image(rec), rles_to_crops(rec.rles), rles_to_crops(rec.crowd_rles))
        if self.cache is not None:
            self.cache[i] = item
        return item

    def __getitem__(self, index: int | tuple[int, int]):
        """index: i, or (epoch, i) from an EpochBatchSampler (persistent workers never see set_epoch)."""
        epoch, i = index if isinstance(index, tuple) else (self.epoch, index)
        rec = self.data.images[i]
        img, obj_crops, crowd_crops = self._load(i)
        S, t = self.imgsz, self.training
        if t is None:
            m = T.Letterbox.fit(rec.height, rec.width, S).matrix()
            sample = {"image_id": rec.id, "orig_size": (rec.height, rec.width), "matrix": torch.from_numpy(m)}
            return _chw_view(T.warp_image(img, m, S)), sample
        rng = np.random.default_rng([self.seed, epoch, i])
        out, crops, labels, full, m = self._augmented(i, rng)
        out = T.color_jitter(out, rng, t.color_jitter, t.color_jitter_mode, t.jitter_keeps_grey)
        if t.copy_paste and rng.random() < t.copy_paste:
            out, crops, labels, full = self._paste(out, crops, labels, full, rng)
        out = T.blur_and_noise(out, rng, t.blur_prob, t.noise)
        boxes, areas = T.crop_boxes(crops)
        visible_enough = areas >= t.min_visible * full
        keep = np.flatnonzero((areas >= t.min_pixels) & visible_enough)
        sel = np.arange(len(keep))
        if len(sel) > t.max_mask_instances:
            sel = np.sort(rng.choice(len(sel), t.max_mask_instances, replace=False))
        ignored = [c for c, a, v in zip(crops, areas, visible_enough) if a and not v]
        crowd = T.downsample_crops(T.warp_crops(crowd_crops, m, S) + ignored, S, t.mask_stride).max(0, initial=0)
        labels = labels[keep]
        sample = {
            "labels": torch.from_numpy(labels),
            "boxes": torch.from_numpy(boxes[keep]),
            "mask_index": torch.from_numpy(sel),
            "masks": torch.from_numpy(T.downsample_crops([crops[keep[k]] for k in sel], S, t.mask_stride)),
            "crowd": torch.from_numpy(crowd),
            "image_id": rec.id,
            "orig_size": (rec.height, rec.width),
            "matrix": torch.from_numpy(m),
        }
        return _chw_view(out), sample

    def _augmented(self, i: int, rng: np.random.Generator):
        """Image i randomly placed, scaled and flipped -> (pixels [S, S, 3], object crops, labels [N], areas [N]
        the objects would have uncut, matrix); a flip also swaps the labels of sided classes."""
        rec, t, S = self.data.images[i], self.training, self.imgsz
        img, obj_crops, _ = self._load(i)
        m = T.random_affine(rec.height, rec.width, S, rng, t.scale_min, t.scale_max, t.flip_prob)
        labels = np.asarray(rec.labels, np.int64)
        if t.flip_map and m[0, 0] < 0:
            labels = np.asarray(t.flip_map, np.int64)[labels]
        full = np.array([c.mask.sum() for c in obj_crops], np.float64) * abs(np.linalg.det(m[:, :2]))
        return T.warp_image(img, m, S), T.warp_crops(obj_crops, m, S), labels, full, m

    def _paste(self, out: np.ndarray, crops: list, labels: np.ndarray, full: np.ndarray, rng: np.random.Generator):
        """Copy-paste (Ghiasi et al., CVPR 2021): about half of the objects of another training image, augmented
        on its own, pasted on top; what they cover is taken out of the masks underneath."""
        other, o_crops, o_labels, o_full, _ = self._augmented(int(rng.integers(len(self))), rng)
        chosen = [k for k in range(len(o_crops)) if o_crops[k].mask.any() and rng.random() < 0.5]
        if not chosen:
            return out, crops, labels, full
        pasted = [o_crops[k] for k in chosen]
        cover = T.paste(pasted, self.imgsz).max(0).astype(bool)
        out = np.where(cover[:, :, None], other, out)
        crops = [T.occlude(c, cover) for c in crops] + pasted
        return out, crops, np.concatenate([labels, o_labels[chosen]]), np.concatenate([full, o_full[chosen]])


def _chw_view(hwc: np.ndarray) -> torch.Tensor:
    """A [3, S, S] view of HWC pixels, not a copy: stack_images() makes the one copy, channels-last."""
    return torch.from_numpy(hwc).permute(2, 0, 1)


def stack_images(batch: list) -> torch.Tensor:
    """[(image [3, S, S] view of HWC, ...)] -> [B, 3, S, S] in channels-last memory (a view of [B, S, S, 3]):
    one contiguous copy, in the layout the CPU convolutions want."""
    return torch.stack([b[0].permute(1, 2, 0) for b in batch]).permute(0, 3, 1, 2)


def collate_images(batch: list) -> tuple[torch.Tensor, dict]:
    """Evaluation batches: images and what maps predictions back to each original image."""
    meta = {k: [b[1][k] for b in batch] for k in ("image_id", "orig_size", "matrix")}
    return stack_images(batch), meta


class EpochBatchSampler(Sampler):
    """Micro-batches of (epoch, index) pairs for one process. Each epoch shuffles with a generator seeded by
    (seed, epoch) and cuts the order into global batches of `batch`; each global batch is split into `parts`
    equal micro-batches, and this process takes the parts `mine`, in order. The augmentation of every sample is
    fixed by (seed, epoch, index), even with persistent DataLoader workers, so a resumed run sees exactly the
    batches the uninterrupted one would have; and 2 processes x 1 part see the same micro-batches as 1 process
    x 2 accumulated parts. A dataset smaller than one batch gives one (smaller) batch per epoch."""

    def __init__(self, n: int, batch: int, seed: int = 0, parts: int = 1, mine: range = range(1)):
        if n < parts:
            raise DataError(f"{n} training images cannot be split into {parts} parts (processes x micro-batches)")
        self.n, self.batch, self.seed, self.parts, self.mine, self.epoch = n, batch, seed, parts, mine, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    @property
    def global_batches(self) -> int:
        return max(self.n // self.batch, 1)

    def __len__(self) -> int:
        return self.global_batches * len(self.mine)

    def __iter__(self):
        order = np.random.default_rng([self.seed, self.epoch]).permutation(self.n)
        for j in range(self.global_batches):
            pieces = np.array_split(order[j * self.batch : (j + 1) * self.batch], self.parts)
            for p in self.mine:
                yield [(self.epoch, int(i)) for i in pieces[p]]


def build_dataset(cfg: DataConfig, split: str, mask_stride: int, train: bool, seed: int = 0) -> CocoDataset:
    """Load and validate split `split` ("train" or "val": the COCO JSON data.<split>, or that split of the YOLO
    data.yaml data.data), then wrap it in a CocoDataset (training samples when `train`)."""
    if cfg.data:
        from tinyseg.data.yolo import read_yolo

        data = read_yolo(cfg.data, split)
    else:
        images = getattr(cfg, f"{split}_images")
        data = load_coco(getattr(cfg, split), images or None, allow_outside=cfg.allow_outside_images)
    training = build_training_samples(cfg, mask_stride, data.class_names) if train else None
    return CocoDataset(data, cfg.imgsz, training, seed, IMAGE_CACHE_BYTES if cfg.cache_images else 0)
