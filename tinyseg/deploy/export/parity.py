"""The check every export runs on itself: the exported model and PyTorch on the same images, detection by
detection."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tinyseg.deploy.predict import Segmenter

# An FP32 export must reproduce PyTorch's detections to these tolerances (float reordering only).
BOX_TOLERANCE_PX = 1.0
MASK_IOU_MIN = 0.99
SCORE_TOLERANCE = 1e-5
# FP16 and INT8 move scores by more; the pairing of detections then allows this much.
SCORE_TOLERANCE_REDUCED = 2e-3
# Their rounding also moves a peak to the neighbouring cell where two cells' objectness nearly tie: that
# detection's box and score change by more than the tolerances. Up to this fraction of detections may move.
MOVED_MAX_REDUCED = 0.05
# Detections below this score are not compared: near-zero scores tie and swap places freely.
PARITY_CONF = 0.1
VERIFY_SEED = 12345  # the generated scenes an export is verified on when no calibration images are given


def tolerances(reduced: bool) -> dict:
    """check_parity's tolerances for an FP32 export (the defaults) or an FP16 / INT8 one (reduced)."""
    return {"score_tol": SCORE_TOLERANCE_REDUCED, "moved_max": MOVED_MAX_REDUCED} if reduced else {}


@dataclass
class Parity:
    images: int
    detections: int
    max_box_diff: float  # pixels, over detections scoring >= conf in PyTorch
    min_mask_iou: float  # over the detections that did not move
    ok: bool
    moved: int = 0  # detections whose box differs by more than the tolerance (or without a counterpart)

    def __str__(self) -> str:
        moved = f", {self.moved} moved" if self.moved else ""
        return (
            f"{'OK' if self.ok else 'MISMATCH'}: {self.images} images, {self.detections} detections{moved}, "
            f"max box difference {self.max_box_diff:.3f} px, min mask IoU {self.min_mask_iou:.4f}"
        )


def check_parity(
    seg: Segmenter,
    model_path: Path,
    images: np.ndarray,
    conf: float = PARITY_CONF,
    box_tol: float = BOX_TOLERANCE_PX,
    iou_tol: float = MASK_IOU_MIN,
    device: str = "CPU",
    score_tol: float = SCORE_TOLERANCE,
    moved_max: float = 0.0,
) -> Parity:
    """Run the exported model and PyTorch on the same letterboxed images and compare every PyTorch detection
    scoring >= conf with its counterpart (same class, score within score_tol; nearest box, since near-equal
    scores may swap places in top-K): boxes within box_tol px, mask IoU (at 0.5) >= iou_tol. A detection
    without a counterpart counts as box difference inf. Up to moved_max of the detections may miss the box
    tolerance (reduced precision). Detections tied with the K-th score are skipped: which of equal scores makes
    the top-K cut is arbitrary."""
    from tinyseg.deploy.runtime import EdgeSegmenter

    edge = EdgeSegmenter(model_path, device=device)
    ref = seg.run(images, edge.meta["max_det"])
    max_diff, min_iou, n, moved = 0.0, 1.0, 0, 0
    for i in range(len(images)):
        out = {k: v[0] for k, v in edge.run(images[i : i + 1]).items()}
        cut = ref["scores"][i, -1] + score_tol
        for k in np.flatnonzero((ref["scores"][i] >= conf) & (ref["scores"][i] > cut)):
            n += 1
            diff, iou = _match(out, {key: v[i, k] for key, v in ref.items()}, score_tol)
            max_diff = max(max_diff, diff)
            if diff > box_tol:
                moved += 1
            else:
                min_iou = min(min_iou, iou)
    ok = moved <= moved_max * n and min_iou >= iou_tol
    return Parity(len(images), n, max_diff, min_iou, ok, moved)


def _match(out: dict, det: dict, score_tol: float) -> tuple[float, float]:
    """One reference detection against one image's exported outputs -> (box difference px, mask IoU)."""
    cand = np.flatnonzero((out["classes"] == det["classes"]) & (np.abs(out["scores"] - det["scores"]) <= score_tol))
    if not len(cand):
        return float("inf"), 1.0
    diffs = np.abs(out["boxes"][cand] - det["boxes"]).max(1)
    j = cand[int(diffs.argmin())]
    a, b = det["masks"] > 0.5, out["masks"][j] > 0.5
    union = (a | b).sum()
    return float(diffs.min()), float((a & b).sum() / union) if union else 1.0


def verify_batch(imgsz: int, n: int) -> np.ndarray:
    """Images to verify an export on when no calibration data was given: synthetic scenes of the kind the demo
    trains on (deterministic), letterboxed to the model's size."""
    from tinyseg.data.synthetic import render_image

    out = []
    for i in range(n):
        img, _ = render_image(imgsz, np.random.default_rng([VERIFY_SEED, i]))
        out.append(img[:, :, ::-1].transpose(2, 0, 1))
    return np.ascontiguousarray(np.stack(out))
