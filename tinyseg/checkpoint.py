"""Checkpoints: one file carries the EMA weights, the resolved config, class names, category ids and image
size, so it alone is enough to predict, evaluate or export; a run's `last.pt` also carries the training state
for an exact resume. Training writes them and deploy reads them, both through here.

Loading never runs pickled code (`torch.load(weights_only=True)`).
"""

from __future__ import annotations

from pathlib import Path

import torch

from tinyseg.config import Config
from tinyseg.errors import CheckpointError, ConfigError
from tinyseg.io import atomic_write
from tinyseg.models.detector import TinySeg, build_model

CHECKPOINT_FORMAT = "tinyseg/2"


def checkpoint_payload(model: TinySeg, cfg: Config, class_names: list[str], cat_ids: list[int], **extra) -> dict:
    """What a checkpoint holds (weights of `model`, typically the EMA model) plus `extra` entries."""
    return {
        "format": CHECKPOINT_FORMAT,
        "model": model.state_dict(),
        "config": cfg.to_dict(),
        "class_names": list(class_names),
        "cat_ids": list(cat_ids),
        "imgsz": cfg.data.imgsz,
        **extra,
    }


def save_checkpoint(obj: dict, path: str | Path) -> None:
    """Written atomically: a crash never leaves a broken checkpoint."""
    with atomic_write(path) as tmp:
        torch.save(obj, tmp)


def load_checkpoint(path: str | Path) -> dict:
    """Load with weights_only=True (never runs pickled code) and check the format."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a corrupt or foreign file; its advice does not apply
        raise CheckpointError(f"{path}: not a readable tinyseg checkpoint ({type(e).__name__})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        found = ckpt.get("format") if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(
            f"{path}: checkpoint format {str(found)[:40]!r}, expected {CHECKPOINT_FORMAT!r} "
            "(made by another tinyseg version?)"
        )
    names = ckpt.get("class_names")
    if not (isinstance(ckpt.get("model"), dict) and isinstance(ckpt.get("config"), dict)):
        raise CheckpointError(f"{path}: checkpoint without weights or config")
    if not (isinstance(names, list) and names and all(isinstance(n, str) for n in names)):
        raise CheckpointError(f"{path}: checkpoint class_names is not a list of names")
    return ckpt


def model_from_checkpoint(ckpt: dict, path: str | Path = "checkpoint") -> tuple[TinySeg, Config]:
    """The model (eval mode) and config a loaded checkpoint describes."""
    try:
        cfg = Config.from_dict(ckpt["config"], str(path))
        model = build_model(cfg.model)
    except (ConfigError, KeyError) as e:
        raise CheckpointError(f"{path}: config in checkpoint does not fit this tinyseg version ({e})") from None
    if cfg.model.num_classes != len(ckpt["class_names"]):
        raise CheckpointError(f"{path}: {len(ckpt['class_names'])} class names for {cfg.model.num_classes} classes")
    try:
        model.load_state_dict(ckpt["model"])
    except (RuntimeError, TypeError, ValueError, AttributeError) as e:
        raise CheckpointError(f"{path}: weights do not fit the model ({str(e)[:300]})") from None
    return model.eval(), cfg


def category_ids(ckpt: dict, path: str | Path = "checkpoint") -> list[int]:
    """The dataset's category id of each label (1..C for checkpoints that predate storing them)."""
    ids = ckpt.get("cat_ids", list(range(1, len(ckpt["class_names"]) + 1)))
    if not (isinstance(ids, list) and len(ids) == len(ckpt["class_names"]) and all(type(c) is int for c in ids)):
        raise CheckpointError(f"{path}: checkpoint cat_ids is not one integer per class")
    return ids
