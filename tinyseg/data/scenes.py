"""Placing objects in a generated scene, shared by the shapes and the photo styles.

An object is only placed where every earlier object keeps at least MIN_VISIBLE_FRACTION of its area visible:
a heavily hidden object is an unfair ground truth (no one could segment it from what is left). Annotations are
the visible parts: each new object carves its mask out of the ones under it.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import numpy as np

MIN_VISIBLE_FRACTION = 0.4
MIN_VISIBLE_PIXELS = 16
PLACEMENT_TRIES = 4


def place_objects(
    count: int,
    num_classes: int,
    sample_mask: Callable[[int], np.ndarray],
    paint: Callable[[np.ndarray, int], None],
    rng: np.random.Generator,
) -> list[dict]:
    """Place up to `count` objects of random classes; `sample_mask(class)` proposes a bool mask, `paint(mask,
    class)` draws the accepted one. Returns dicts with `category`, the visible `mask` and its original `area`."""
    placed: list[dict] = []
    for _ in range(count):
        cls_id = int(rng.integers(num_classes))
        new = _first_fit(placed, partial(sample_mask, cls_id))
        if new is None:
            continue
        paint(new, cls_id)
        for p in placed:
            p["mask"] &= ~new
        placed.append({"category": cls_id, "mask": new, "area": int(new.sum())})
    return [p for p in placed if p["mask"].sum() >= MIN_VISIBLE_PIXELS]


def _first_fit(placed: list[dict], propose: Callable[[], np.ndarray]) -> np.ndarray | None:
    """The first of a few proposals that is big enough and hides no earlier object too much, or None."""
    for _ in range(PLACEMENT_TRIES):
        new = propose()
        if new.sum() >= MIN_VISIBLE_PIXELS and all(
            (p["mask"] & ~new).sum() >= MIN_VISIBLE_FRACTION * p["area"] for p in placed
        ):
            return new
    return None
