"""COCO segmentations: polygons, RLE and uncompressed RLE validated and turned into compressed RLE, and RLEs
decoded into bounding-box crops. pycocotools never sees an unchecked number: its C code crashes or runs out of
memory on some."""

from __future__ import annotations

import numpy as np
import pycocotools.mask as mask_util

from tinyseg.data.transforms import MaskCrop

# Polygons may reach this many image sizes beyond the image (annotation tools overshoot a little; a coordinate
# of 1e9 crashes pycocotools), and have at most this many values.
POLYGON_MARGIN = 1.0
MAX_POLYGON_VALUES = 200_000
DECODE_BYTES = 1 << 28  # full-size masks decoded at once before each is cut to its box


def to_rle(seg, h: int, w: int) -> dict:
    """A COCO `segmentation` (polygons, RLE or uncompressed RLE) -> compressed RLE. Raises ValueError with the
    reason. pycocotools never sees an unchecked number: its C code crashes or runs out of memory on some."""
    if isinstance(seg, list):
        return mask_util.merge(mask_util.frPyObjects(_checked_polygons(seg, h, w), h, w))
    if isinstance(seg, dict) and "counts" in seg and "size" in seg:
        size = seg["size"]
        if not (isinstance(size, list | tuple) and len(size) == 2 and [as_int(v) for v in size] == [h, w]):
            raise ValueError(f"RLE size {str(size)[:40]} does not match image size {[h, w]}")
        counts = seg["counts"]
        if isinstance(counts, list):  # uncompressed RLE
            return mask_util.frPyObjects({"size": [h, w], "counts": _checked_counts(counts, h * w)}, h, w)
        if isinstance(counts, str | bytes):
            counts = counts.encode("ascii", "replace") if isinstance(counts, str) else counts
            check_compressed_counts(counts, h * w)
            return {"size": [h, w], "counts": counts}
        raise ValueError("RLE counts are neither a list nor a string")
    raise ValueError("segmentation is neither polygons nor RLE")


def as_int(v) -> int | None:
    """An integer given as an int (not a bool, not a float), else None."""
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def _checked_polygons(seg: list, h: int, w: int) -> list[list[float]]:
    """Rings of finite numbers within POLYGON_MARGIN image sizes of the image, >= 3 points, an even count;
    rings that are too short are dropped (as pycocotools' users expect), anything else is an error."""
    rings = []
    for ring in seg:
        if not isinstance(ring, list) or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in ring):
            raise ValueError("polygon with a value that is not a number")
        if len(ring) >= 6 and len(ring) % 2 == 0:
            rings.append(ring)
    if not rings:
        raise ValueError("polygon with fewer than 3 points")
    if sum(len(r) for r in rings) > MAX_POLYGON_VALUES:
        raise ValueError(f"polygon with more than {MAX_POLYGON_VALUES // 2} points")
    xy = np.concatenate([np.asarray(r, np.float64) for r in rings])
    if not np.isfinite(xy).all():
        raise ValueError("polygon with a coordinate that is not finite")
    lo, hi = -POLYGON_MARGIN * max(h, w), (1 + POLYGON_MARGIN) * max(h, w)
    if xy.min() < lo or xy.max() > hi:
        raise ValueError("polygon far outside the image")
    return rings


def _checked_counts(counts: list, area: int) -> list[int]:
    if not all(as_int(c) is not None and c >= 0 for c in counts):
        raise ValueError("RLE counts must be non-negative integers")
    if sum(counts) != area:
        raise ValueError(f"RLE counts sum to {sum(counts)}, not to the image's {area} pixels")
    return counts


def check_compressed_counts(counts: bytes, area: int) -> None:
    """Decode a COCO compressed RLE string (pycocotools' rleFrString: 5 bits a character from '0', a
    continuation bit, sign extension, counts after the second stored as differences to the one two before) and
    check that it is well formed: characters in range, the last one complete, counts non-negative and summing
    to the image's area. Raises ValueError."""
    c = np.frombuffer(counts, np.uint8).astype(np.int64) - 48
    if not len(c):
        raise ValueError("RLE counts string is empty")
    if c.min() < 0 or c.max() > 63:
        raise ValueError("RLE counts string has characters outside its alphabet")
    more = (c & 0x20) != 0
    if more[-1]:
        raise ValueError("RLE counts string ends in the middle of a number")
    ends = np.flatnonzero(~more)
    starts = np.concatenate([[0], ends[:-1] + 1])
    k = np.arange(len(c)) - np.repeat(starts, ends - starts + 1)
    if k.max() > 12:
        raise ValueError("RLE counts string has a number that is too long")
    value = np.zeros(len(ends), np.int64)
    np.add.at(value, np.repeat(np.arange(len(ends)), ends - starts + 1), (c & 0x1F) << (5 * k))
    negative = (c[ends] & 0x10) != 0
    value[negative] -= np.int64(1) << (5 * (k[ends][negative] + 1))
    runs = value.copy()
    runs[3::2] = np.cumsum(value[1::2])[1:]  # counts[m] += counts[m - 2] for m > 2
    runs[4::2] = np.cumsum(value[2::2])[1:]
    if runs.min() < 0 or runs.sum() != area:
        raise ValueError("RLE counts string does not describe the image's pixels")


def decode_masks(rles: list[dict], h: int, w: int) -> np.ndarray:
    """Compressed RLEs -> [N, H, W] uint8 masks."""
    if not rles:
        return np.zeros((0, h, w), np.uint8)
    return np.ascontiguousarray(mask_util.decode(rles).transpose(2, 0, 1))


def rles_to_crops(rles: list[dict]) -> list[MaskCrop]:
    """Decode RLEs a chunk at a time (at most DECODE_BYTES of full masks) and keep each mask's bounding-box crop."""
    out = []
    h, w = rles[0]["size"] if rles else (1, 1)
    chunk = max(1, min(32, DECODE_BYTES // (h * w)))
    for i in range(0, len(rles), chunk):
        part = rles[i : i + chunk]
        dec = mask_util.decode(part)  # [H, W, n], Fortran order: slicing one mask's box is cheap
        for k, (x, y, bw, bh) in enumerate(mask_util.toBbox(part).astype(int)):
            out.append(MaskCrop(int(x), int(y), np.ascontiguousarray(dec[y : y + bh, x : x + bw, k])))
    return out
