"""PyTorch inference: checkpoints and the `Segmenter` API (mapping back to the image is in results.py).

seg = Segmenter.load("runs/demo/best.pt")
det = seg.predict("image.png")          # or an RGB uint8 array
det.boxes, det.scores, det.classes, det.masks
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from tinyseg.config import Config, ConfigError
from tinyseg.data.coco import read_image
from tinyseg.models.detector import TinySeg, build_model
from tinyseg.results import Detections, predict_image

CHECKPOINT_FORMAT = "tinyseg/2"


class CheckpointError(ValueError):
    """A checkpoint file is missing, corrupt or from another version."""


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
        raise CheckpointError(
            f"{path}: checkpoint format {found!r}, expected {CHECKPOINT_FORMAT!r} (made by another tinyseg version?)"
        )
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


def torch_runner(model: TinySeg, device: str = "cpu", max_det: int = 100):
    """A PyTorch model as a graph-like callable: letterboxed uint8 [B, 3, S, S] numpy -> dict of numpy outputs,
    the same contract as an exported graph (see export.py), so one evaluator serves every backend."""

    @torch.no_grad()
    def run(images: np.ndarray) -> dict[str, np.ndarray]:
        model.eval()
        det = model.detect(torch.from_numpy(images).to(device), max_det)
        return {k: v.float().cpu().numpy() if v.is_floating_point() else v.cpu().numpy() for k, v in det.items()}

    return run


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

    def run(self, images: np.ndarray, max_det: int | None = None) -> dict[str, np.ndarray]:
        """Letterboxed uint8 numpy [B, 3, S, S] -> {boxes, scores, classes, masks} numpy (graph contract)."""
        return torch_runner(self.model, self.device, max_det or self.cfg.model.max_det)(images)

    def predict(self, image: str | Path | np.ndarray, conf: float = 0.3, max_det: int | None = None) -> Detections:
        img = read_image(image) if isinstance(image, str | Path) else image
        return predict_image(lambda x: self.run(x, max_det), img, self.imgsz, conf, self.class_names)
