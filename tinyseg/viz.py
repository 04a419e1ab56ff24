"""Pictures: instance overlays (masks, boxes, class, score) and training curves."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from tinyseg.io import atomic_write


def palette(i: int) -> tuple[int, int, int]:
    """A distinct, stable RGB colour per index (golden-ratio hue steps)."""
    hue = int((i * 0.618033988749895 % 1.0) * 180)
    bgr = cv2.cvtColor(np.uint8([[[hue, 220, 255]]]), cv2.COLOR_HSV2RGB)[0, 0]
    return int(bgr[0]), int(bgr[1]), int(bgr[2])


def draw_instances(
    image: np.ndarray,
    boxes: np.ndarray,
    classes: np.ndarray,
    masks: np.ndarray | None,
    class_names: list[str],
    scores: np.ndarray | None = None,
    alpha: float = 0.45,
) -> np.ndarray:
    """RGB uint8 [H, W, 3] + instances -> a new RGB image with tinted masks, outlines, boxes and labels.
    Colours follow the instance (so touching objects of one class stay apart); the label names the class."""
    out = image.copy()
    h, w = out.shape[:2]
    thick = max(1, round(max(h, w) / 400))
    font = max(0.35, max(h, w) / 900)
    for i in range(len(boxes)):
        color = palette(i)
        if masks is not None:
            m = masks[i].astype(bool)
            out[m] = (out[m] * (1 - alpha) + np.array(color) * alpha).astype(np.uint8)
            contours, _ = cv2.findContours(m.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
            cv2.drawContours(out, contours, -1, color, thick)
    for i in range(len(boxes)):
        color = palette(i)
        x1, y1, x2, y2 = (int(round(float(v))) for v in boxes[i])
        cv2.rectangle(out, (x1, y1), (x2, y2), color, thick)
        label = class_names[int(classes[i])] if int(classes[i]) < len(class_names) else str(int(classes[i]))
        if scores is not None:
            label += f" {float(scores[i]):.2f}"
        (tw, th), _ = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, font, 1)
        ty = y1 - 2 if y1 - th - 4 >= 0 else y1 + th + 2
        cv2.rectangle(out, (x1, ty - th - 2), (x1 + tw + 2, ty + 2), color, -1)
        cv2.putText(out, label, (x1 + 1, ty), cv2.FONT_HERSHEY_SIMPLEX, font, (0, 0, 0), 1, cv2.LINE_AA)
    return out


def write_rgb(path: str | Path, image: np.ndarray) -> None:
    """Write an RGB image atomically."""
    with atomic_write(path) as tmp:
        if not cv2.imwrite(str(tmp), cv2.cvtColor(image, cv2.COLOR_RGB2BGR)):
            raise OSError(f"{path}: could not write image")


def plot_curves(history: list[dict], path: str | Path) -> None:
    """Loss components per epoch (left) and validation mask/box AP (right) -> PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    ep = [r["epoch"] for r in history]
    for k in ("loss", "heatmap", "class", "box", "mask_bce", "mask_dice"):
        if any(k in r for r in history):
            a1.plot(ep, [r.get(k, np.nan) for r in history], label=k, marker="." if len(ep) < 30 else None)
    a1.set(xlabel="epoch", ylabel="training loss", title="losses", yscale="log")
    a1.legend()
    for k, label in (("mask_ap", "mask AP"), ("box_ap", "box AP")):
        pts = [(r["epoch"], r[k]) for r in history if k in r]
        if pts:
            a2.plot(*zip(*pts), marker="o", label=label)
    a2.set(xlabel="epoch", ylabel="AP (COCO, IoU .50:.95)", title="validation", ylim=(0, 1))
    a2.grid(alpha=0.3)
    if a2.get_lines():
        a2.legend()
    fig.tight_layout()
    with atomic_write(path) as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)
