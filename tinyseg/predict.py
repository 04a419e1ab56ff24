"""PyTorch inference: checkpoints, the `Segmenter` API, and mapping detections back to the original image.

    seg = Segmenter.load("runs/demo/best.pt")
    det = seg.predict("image.png")          # or an RGB uint8 array
    det.boxes, det.scores, det.classes, det.masks
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from tinyseg.config import Config, ConfigError
from tinyseg.data.coco import read_image
from tinyseg.data.transforms import Letterbox, warp_image
from tinyseg.models.detector import TinySeg, build_model
from tinyseg.models.postprocess import postprocess

CHECKPOINT_FORMAT = "tinyseg/1"


class CheckpointError(ValueError):
    """A checkpoint file is missing, corrupt or from another version."""


@dataclass
class Detections:
    """One image's detections in original-image pixels."""

    boxes: np.ndarray  # [N, 4] float32 xyxy
    scores: np.ndarray  # [N] float32
    classes: np.ndarray  # [N] int64, 0-based labels
    masks: np.ndarray  # [N, H, W] bool
    class_names: list[str]

    def __len__(self) -> int:
        return len(self.scores)


def save_checkpoint(obj: dict, path: str | Path) -> None:
    """Atomic write: temp file + rename, so a crash never leaves a broken checkpoint."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str | Path) -> dict:
    """Load with weights_only=True (never runs pickled code) and check the format."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a corrupt or foreign file
        raise CheckpointError(f"{path}: not a readable tinyseg checkpoint ({type(e).__name__}: {e})"[:400]) from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        found = ckpt.get("format") if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(f"{path}: checkpoint format {found!r}, expected {CHECKPOINT_FORMAT!r} "
                              "(made by another tinyseg version?)")
    return ckpt


def model_from_checkpoint(ckpt: dict, path: str | Path = "checkpoint") -> tuple[TinySeg, Config]:
    try:
        cfg = Config.from_dict(ckpt["config"], str(path))
    except (ConfigError, KeyError) as e:
        raise CheckpointError(f"{path}: config in checkpoint does not fit this tinyseg version ({e})") from None
    model = build_model(cfg.model)
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        raise CheckpointError(f"{path}: weights do not fit the model ({str(e)[:300]})") from None
    return model.eval(), cfg


def masks_to_original(masks: torch.Tensor, boxes: torch.Tensor, lb: Letterbox, height: int, width: int,
                      size: int, chunk: int = 16) -> np.ndarray:
    """Mask probabilities [N, h, w] on the letterboxed input grid -> [N, H, W] bool at the original size,
    bilinearly resampled (one grid_sample, no intermediate resize) and cut exactly to each box (original px)."""
    n = len(masks)
    out = np.zeros((n, height, width), bool)
    if n == 0:
        return out
    xs = ((torch.arange(width, dtype=torch.float32) + 0.5) * lb.scale + lb.pad_x) / size * 2 - 1
    ys = ((torch.arange(height, dtype=torch.float32) + 0.5) * lb.scale + lb.pad_y) / size * 2 - 1
    grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), -1)[None]  # [1, H, W, 2]
    px = torch.arange(width, dtype=torch.float32) + 0.5
    py = torch.arange(height, dtype=torch.float32) + 0.5
    for i in range(0, n, chunk):
        m = masks[i : i + chunk].float().cpu()
        b = boxes[i : i + chunk].float().cpu()
        up = F.grid_sample(m[:, None], grid.expand(len(m), -1, -1, -1), mode="bilinear", align_corners=False)[:, 0]
        inx = (px[None] >= b[:, 0:1]) & (px[None] <= b[:, 2:3])
        iny = (py[None] >= b[:, 1:2]) & (py[None] <= b[:, 3:4])
        out[i : i + chunk] = ((up > 0.5) & iny[:, :, None] & inx[:, None, :]).numpy()
    return out


def detections_from_output(det: dict[str, torch.Tensor], i: int, lb: Letterbox, height: int, width: int,
                           size: int, conf: float, class_names: list[str]) -> Detections:
    """Image i of a batched postprocess() output -> Detections at the original size, scores >= conf."""
    keep = det["scores"][i] >= conf
    boxes = det["boxes"][i][keep].cpu().numpy()
    boxes = lb.boxes_to_original(boxes)
    boxes[:, 0::2] = boxes[:, 0::2].clip(0, width)
    boxes[:, 1::2] = boxes[:, 1::2].clip(0, height)
    masks = masks_to_original(det["masks"][i][keep], torch.from_numpy(boxes), lb, height, width, size)
    return Detections(boxes, det["scores"][i][keep].cpu().numpy(), det["classes"][i][keep].cpu().numpy(), masks,
                      class_names)


class Segmenter:
    """PyTorch predictor. `Segmenter.load(ckpt).predict(image)` -> Detections."""

    def __init__(self, model: TinySeg, cfg: Config, class_names: list[str], device: str = "cpu"):
        self.model = model.to(device).eval()
        self.cfg, self.class_names, self.device = cfg, class_names, device
        self.imgsz = cfg.data.imgsz

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu") -> Segmenter:
        ckpt = load_checkpoint(path)
        model, cfg = model_from_checkpoint(ckpt, path)
        return cls(model, cfg, list(ckpt["class_names"]), device)

    @torch.no_grad()
    def infer(self, images: torch.Tensor, max_det: int | None = None) -> dict[str, torch.Tensor]:
        """Letterboxed uint8 batch [B, 3, S, S] -> postprocess() output in network-input coordinates."""
        out = self.model(images.to(self.device))
        return postprocess(out, self.model.mask, self.model.stride, max_det or self.cfg.model.max_det)

    def predict(self, image: str | Path | np.ndarray, conf: float = 0.3, max_det: int | None = None) -> Detections:
        img = read_image(image) if isinstance(image, str | Path) else image
        if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
            raise ValueError(f"expected an RGB uint8 image [H, W, 3], got {img.dtype} {img.shape}")
        h, w = img.shape[:2]
        lb = Letterbox.fit(h, w, self.imgsz)
        x = torch.from_numpy(warp_image(img, lb.matrix(), self.imgsz)).permute(2, 0, 1)[None]
        det = self.infer(x, max_det)
        return detections_from_output(det, 0, lb, h, w, self.imgsz, conf, self.class_names)
