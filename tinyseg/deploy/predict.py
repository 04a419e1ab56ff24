"""PyTorch inference: the `Segmenter` API (the mapping back to the image is in deploy/results.py).

seg = Segmenter.load("runs/demo/best.pt")
det = seg.predict("image.png")          # or an RGB uint8 array
det.boxes, det.scores, det.classes, det.masks
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tinyseg.checkpoint import category_ids, load_checkpoint, model_from_checkpoint
from tinyseg.config import Config
from tinyseg.deploy.results import Detections, predict_image
from tinyseg.io import read_image
from tinyseg.models.detector import TinySeg, graph_runner


class Segmenter:
    """PyTorch predictor. `Segmenter.load(ckpt).predict(image)` -> Detections."""

    def __init__(
        self, model: TinySeg, cfg: Config, class_names: list[str], device: str = "cpu", cat_ids: list[int] | None = None
    ):
        self.model = model.to(device).eval()
        self.cfg, self.class_names, self.device = cfg, class_names, device
        self.cat_ids = cat_ids or list(range(1, len(class_names) + 1))  # the dataset's category id of each label
        self.imgsz = cfg.data.imgsz

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu") -> Segmenter:
        ckpt = load_checkpoint(path)
        model, cfg = model_from_checkpoint(ckpt, path)
        return cls(model, cfg, list(ckpt["class_names"]), device, category_ids(ckpt, path))

    def run(self, images: np.ndarray, max_det: int | None = None) -> dict[str, np.ndarray]:
        """Letterboxed uint8 numpy [B, 3, S, S] -> {boxes, scores, classes, masks} numpy (graph contract)."""
        return graph_runner(self.model, self.device, max_det or self.cfg.model.max_det)(images)

    def predict(self, image: str | Path | np.ndarray, conf: float = 0.3, max_det: int | None = None) -> Detections:
        img = read_image(image) if isinstance(image, str | Path) else image
        return predict_image(lambda x: self.run(x, max_det), img, self.imgsz, conf, self.class_names)
