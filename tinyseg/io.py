"""Files in and out: reading any image as RGB, and writing any output atomically.

numpy + Pillow only: the torch-free edge runtime reads images through here too.
"""

from __future__ import annotations

import json
import os
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from tinyseg.errors import DataError, UsageError

HIGH_BIT_MODES = ("I;16", "I;16B", "I;16L", "I", "F")
# The files a folder of images is taken to hold (predict, YOLO-seg splits, calibration folders).
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}


def image_files(folder: Path, recursive: bool = False) -> list[Path]:
    """The image files of a folder (regular files with an image suffix; a FIFO named x.png is not one), sorted."""
    found = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(f for f in found if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file())


def read_image(path: str | Path) -> np.ndarray:
    """Any image file -> [H, W, 3] uint8 RGB. Grayscale, RGBA, palette and 16-bit images are converted.
    Only regular files are opened (a FIFO or device would block or never end); images over Pillow's
    decompression-bomb limit (2 x Image.MAX_IMAGE_PIXELS) are refused."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise DataError(f"{path}: not a regular file")
        with Image.open(path) as im:
            im.load()
            if im.mode in HIGH_BIT_MODES:
                return _high_bit_to_rgb(np.asarray(im, dtype=np.float32))
            return np.ascontiguousarray(np.asarray(im.convert("RGB")))
    except DataError:
        raise
    except FileNotFoundError:
        raise DataError(f"{path}: image file not found") from None
    except Image.DecompressionBombError:
        raise DataError(f"{path}: image too large (over {2 * Image.MAX_IMAGE_PIXELS} pixels)") from None
    except MemoryError:
        raise DataError(f"{path}: image too large to decode in memory") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as e:
        raise DataError(f"{path}: not a readable image ({e})") from None


def _high_bit_to_rgb(a: np.ndarray) -> np.ndarray:
    """16-bit or float gray [H, W] -> RGB uint8: 16-bit data scaled by 257, anything else by its maximum."""
    hi = float(a.max()) if a.size else 1.0
    a = a / (257.0 if 255 < hi <= 65535 else max(hi / 255.0, 1.0))
    a = np.clip(a, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(np.repeat(a[:, :, None], 3, 2))


@contextmanager
def atomic_write(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path to write `path` through; on success it replaces `path` in one step, on any error
    it is removed. The temp file is created exclusively (O_EXCL) with a random name in the target folder, so
    a symlink planted there cannot redirect the write, and a crash never leaves a half-written output."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.stem}-", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; outputs get the permissions any new file gets
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text(text: str, path: str | Path) -> None:
    with atomic_write(path) as tmp:
        tmp.write_text(text)


def write_json(obj: Any, path: str | Path) -> None:
    write_text(json.dumps(obj, indent=1) + "\n", path)


def check_writable(path: str | Path, folder: bool = False) -> Path:
    """Fail early, before any work, if `path` (a file, or a `folder`) cannot be written: it is the wrong kind of
    thing, or its nearest existing folder is not writable. Creates nothing."""
    path = Path(path)
    if path.exists() and path.is_dir() != folder:
        raise UsageError(f"{path}: exists and is {'not ' if folder else ''}a folder")
    parent = path if folder else path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise UsageError(f"{path}: cannot write there ({parent} is not a folder)")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f"{path}: cannot write there ({parent} is not writable)")
    return path
