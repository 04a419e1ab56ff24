"""Shared fixtures: a small synthetic dataset (generated once per session) and a COCO-JSON writer."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tinyseg.data.synthetic import generate

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def synth(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    generate(out, train=24, val=8, size=128, seed=3, progress=False)
    return out


def write_coco(
    folder: Path,
    images: list[dict],
    annotations: list[dict],
    categories: list[dict] | None = None,
    name: str = "ann.json",
) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    cats = categories if categories is not None else [{"id": 1, "name": "thing"}]
    path = folder / name
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": cats}))
    return path


def grid_rectangles(n: int, cols: int, step_x: int, step_y: int, w: int, h: int, offset: int) -> list[dict]:
    """n rectangle polygon annotations (image 1, category 1) laid out on a grid: a dense image of known objects."""
    anns = []
    for k in range(n):
        y, x = divmod(k, cols)
        x0, y0 = x * step_x + offset, y * step_y + offset
        anns.append(
            {
                "id": k + 1,
                "image_id": 1,
                "category_id": 1,
                "iscrowd": 0,
                "segmentation": [[x0, y0, x0 + w, y0, x0 + w, y0 + h, x0, y0 + h]],
            }
        )
    return anns


def write_png(path: Path, h: int = 32, w: int = 32, mode: str = "RGB") -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    if mode == "I;16":
        Image.fromarray(rng.integers(0, 65535, (h, w), dtype=np.uint16)).save(path)
    elif mode == "L":
        Image.fromarray(rng.integers(0, 255, (h, w), dtype=np.uint8)).save(path)
    elif mode == "RGBA":
        Image.fromarray(rng.integers(0, 255, (h, w, 4), dtype=np.uint8), "RGBA").save(path)
    elif mode == "P":
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).convert("P").save(path)
    else:
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path)


@pytest.fixture(scope="session")
def tiny_run(synth, tmp_path_factory) -> Path:
    """A real 2-epoch training run of nano at 128 px on the synthetic set (a few seconds)."""
    from tinyseg.config import Config, preset
    from tinyseg.training.trainer import train

    out = tmp_path_factory.mktemp("run")
    cfg = Config()
    cfg.model = preset("nano")
    cfg.data.train, cfg.data.val, cfg.data.imgsz = str(synth / "train.json"), str(synth / "val.json"), 128
    cfg.train.epochs, cfg.train.batch, cfg.train.workers, cfg.train.out = 2, 8, 0, str(out)
    cfg.train.val_interval = 1
    train(cfg, show_progress=False)
    return out


@pytest.fixture(scope="session")
def spread_ckpt(tiny_run, tmp_path_factory) -> Path:
    """The tiny run's checkpoint with its heatmap logits spread out and objectness lifted. After a few steps
    every score sits near the 0.01 prior, and which of equal scores makes the top-K is arbitrary; spread scores
    make the export parity checks about the graph, not about tie-breaking. The lift keeps the best scores
    (objectness x class probability, at least 1 / classes) above the parity threshold however the few training
    steps rounded (bf16 or fp32)."""
    import torch

    from tinyseg.checkpoint import load_checkpoint, save_checkpoint

    ck = load_checkpoint(tiny_run / "best.pt")
    g = torch.Generator().manual_seed(0)
    w, b = ck["model"]["heatmap.out.weight"], ck["model"]["heatmap.out.bias"]
    ck["model"]["heatmap.out.weight"] = torch.randn(w.shape, generator=g) * 0.5
    ck["model"]["heatmap.out.bias"] = torch.zeros_like(b).index_fill_(0, torch.tensor([0]), 2.0)
    path = tmp_path_factory.mktemp("ckpt") / "spread.pt"
    save_checkpoint(ck, path)
    return path


def square_batch(n_objects: int, size: int = 64, num_classes: int = 2):
    """A training batch through TrainingCollate: n_objects 6x6 squares (class alternating) in image 0 and none
    in image 1, as the dataset would sample them (masks at stride 2, no crowd)."""
    from tinyseg.training.targets import TrainingCollate

    batch = []
    for n in (n_objects, 0):
        masks = np.zeros((n, size // 2, size // 2), np.uint8)
        boxes = np.zeros((n, 4), np.float32)
        for k in range(n):
            y, x = divmod(k, size // 8)
            y, x = (y * 8) % size, x * 8
            masks[k, y // 2 : (y + 6) // 2, x // 2 : (x + 6) // 2] = 255
            boxes[k] = (x, y, x + 6, y + 6)
        sample = {
            "labels": torch.from_numpy(np.arange(n) % num_classes),
            "boxes": torch.from_numpy(boxes),
            "mask_index": torch.arange(n),
            "masks": torch.from_numpy(masks),
            "crowd": torch.zeros(size // 2, size // 2, dtype=torch.uint8),
            "image_id": 0,
            "orig_size": (size, size),
            "matrix": torch.eye(2, 3),
        }
        batch.append((torch.zeros(3, size, size, dtype=torch.uint8), sample))
    return TrainingCollate(4, 2)(batch)
