"""Masks as the formats people exchange them in, numpy only (the torch-free runtime writes them too):
- one polygon per mask, traced along the pixel edges into loops joined by zero-width bridges (each walked there
  and back), so its even-odd fill (pycocotools', OpenCV's) is exactly the mask, holes and separate parts included:
  YOLO-seg lines and COCO polygons hold one polygon per object;
- COCO's compressed RLE string (pycocotools' format), written without pycocotools.
"""

from __future__ import annotations

import numpy as np


def mask_polygon(mask: np.ndarray) -> list[float]:
    """[H, W] mask -> one polygon [x1, y1, x2, y2, ...] in pixel-corner coordinates whose even-odd fill is the
    mask, holes and separate parts included; [] for an empty mask."""
    loops = _edge_loops(mask)
    if not loops:
        return []
    walk = list(loops[0])
    for loop in loops[1:]:
        # Join at the closest pair of vertices: out along the bridge, round the loop, back the same way.
        d = ((np.asarray(walk)[:, None, :] - loop[None, :, :]) ** 2).sum(-1)
        i, j = np.unravel_index(int(d.argmin()), d.shape)
        ring = np.concatenate([loop[j:], loop[: j + 1]])
        walk = walk[: i + 1] + [tuple(p) for p in ring] + walk[i:]
    return [float(v) for p in walk for v in p]


def _edge_loops(mask: np.ndarray) -> list[np.ndarray]:
    """The pixel-edge boundary of a mask as closed loops of corner points [N, 2] (x, y), straight runs merged."""
    m = np.pad(mask.astype(bool), 1)
    nxt: dict[tuple[int, int], list[tuple[int, int]]] = {}
    # Each boundary side of a foreground pixel, directed clockwise around the pixel (y down); -1 undoes the pad.
    for dy, dx, a, b in (
        (-1, 0, (0, 0), (1, 0)),
        (0, 1, (1, 0), (1, 1)),
        (1, 0, (1, 1), (0, 1)),
        (0, -1, (0, 1), (0, 0)),
    ):
        ys, xs = np.nonzero(m & ~np.roll(m, (-dy, -dx), (0, 1)))
        for y, x in zip(ys.tolist(), xs.tolist()):
            start, end = (x - 1 + a[0], y - 1 + a[1]), (x - 1 + b[0], y - 1 + b[1])
            nxt.setdefault(start, []).append(end)
    loops = []
    while nxt:
        start = min(nxt)
        loop, p = [start], start
        while True:
            q = nxt[p].pop()
            if not nxt[p]:
                del nxt[p]
            if q == start:
                break
            loop.append(q)
            p = q
        loops.append(_straighten(np.asarray(loop, np.float64)))
    return loops


def _straighten(loop: np.ndarray) -> np.ndarray:
    """Drop the vertices where the direction does not change."""
    d_in = loop - np.roll(loop, 1, 0)
    d_out = np.roll(loop, -1, 0) - loop
    turn = (d_in[:, 0] * d_out[:, 1] - d_in[:, 1] * d_out[:, 0]) != 0
    return loop[turn] if turn.any() else loop


def encode_rle(mask: np.ndarray) -> dict:
    """[H, W] mask -> COCO compressed RLE {"size": [H, W], "counts": str}, as pycocotools' encode writes it:
    run lengths over the column-major pixels (starting with a run of zeros), each after the second stored as
    the difference to the one two before, 5 bits a character from '0' with a continuation bit."""
    h, w = mask.shape
    flat = mask.astype(bool).ravel(order="F")
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    edges = np.concatenate([[0], change, [flat.size]])
    runs = np.diff(edges).tolist()
    if flat.size and flat[0]:
        runs = [0, *runs]
    chars = []
    for i, x in enumerate(runs):
        if i > 2:
            x -= runs[i - 2]
        more = True
        while more:
            c = x & 0x1F
            x >>= 5
            more = x != -1 if c & 0x10 else x != 0
            chars.append(chr((c | 0x20 if more else c) + 48))
    return {"size": [int(h), int(w)], "counts": "".join(chars)}
