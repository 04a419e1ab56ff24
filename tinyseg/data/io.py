"""Reading images, and the errors a dataset can raise. numpy + Pillow only (the edge runtime uses it too)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError


class DatasetError(ValueError):
    """A dataset file is missing or malformed; the message names the file and the problem."""


class DatasetWarning(UserWarning):
    """Something in a dataset was skipped; the message says what."""


def read_image(path: str | Path) -> np.ndarray:
    """Any image file -> [H, W, 3] uint8 RGB. Grayscale, RGBA, palette and 16-bit images are converted."""
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
                a = np.asarray(im, dtype=np.float32)
                hi = float(a.max()) if a.size else 1.0
                a = a / (257.0 if hi > 255 and hi <= 65535 else max(hi / 255.0, 1.0))
                a = np.clip(a, 0, 255).astype(np.uint8)
                return np.ascontiguousarray(np.repeat(a[:, :, None], 3, 2))
            return np.ascontiguousarray(np.asarray(im.convert("RGB")))
    except FileNotFoundError:
        raise DatasetError(f"{path}: image file not found") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DatasetError(f"{path}: not a readable image ({e})") from None
