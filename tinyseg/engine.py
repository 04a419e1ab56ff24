"""`train_one_epoch()` and `evaluate()`: plain functions, as in DETR."""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from tinyseg.data.coco import CocoDataset, collate
from tinyseg.data.transforms import Letterbox
from tinyseg.evaluation import coco_evaluate, detections_to_coco, ground_truth
from tinyseg.losses import Criterion
from tinyseg.predict import torch_runner
from tinyseg.results import to_detections


class NonFiniteLossError(RuntimeError):
    pass


class ModelEMA:
    """Exponential moving average of weights (and BN statistics). The decay ramps up from 0 so the first
    updates are not dominated by the random init: d = decay * (1 - exp(-updates / tau))."""

    def __init__(self, model: nn.Module, decay: float = 0.998, tau: float = 200.0, updates: int = 0):
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.decay, self.tau, self.updates = decay, tau, updates

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        d = self.decay * (1 - math.exp(-self.updates / self.tau))
        msd = model.state_dict()
        for k, v in self.model.state_dict().items():
            if v.dtype.is_floating_point:
                v.mul_(d).add_(msd[k].detach(), alpha=1 - d)
            else:
                v.copy_(msd[k])


def lr_factor(progress: float, warmup: float, final: float) -> float:
    """Linear warm-up from 0.1 to 1 over the first `warmup` of the run, then cosine down to `final`."""
    if progress < warmup:
        return 0.1 + 0.9 * progress / warmup
    p = min((progress - warmup) / max(1 - warmup, 1e-9), 1.0)
    return final + (1 - final) * 0.5 * (1 + math.cos(math.pi * p))


def train_one_epoch(
    model: nn.Module,
    criterion: Criterion,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    ema: ModelEMA | None,
    device: str,
    progress_fn: Callable[[int], float],
    base_lr: float,
    warmup: float,
    final_lr: float,
    grad_clip: float = 10.0,
    scaler=None,
    amp: bool = False,
    epoch: int = 0,
    show_progress: bool = True,
) -> dict[str, float]:
    """One pass over `loader` (or until progress_fn reaches 1: a time budget can end an epoch early).
    progress_fn(batches done this epoch) -> fraction of the whole run done; the LR follows it.
    Returns mean losses and images/s."""
    model.train()
    sums: dict[str, float] = {}
    n_batches, n_images, t0 = 0, 0, time.perf_counter()
    use_scaler = scaler is not None
    # Mixed precision: fp16 + GradScaler on CUDA; bf16 (no scaler needed) on CPUs with native bf16 kernels.
    amp_device = "cuda" if device.startswith("cuda") else "cpu"
    amp_dtype = torch.float16 if amp_device == "cuda" else torch.bfloat16
    bar = tqdm(loader, desc=f"epoch {epoch}", disable=not show_progress, leave=False, dynamic_ncols=True)
    for images, targets in bar:
        p = progress_fn(n_batches)
        if p >= 1.0:
            break
        for g in optimizer.param_groups:
            g["lr"] = base_lr * lr_factor(p, warmup, final_lr)
        images = images.to(device, non_blocking=True)
        targets = {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in targets.items()}
        if device == "cpu":
            images = images.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device_type=amp_device, dtype=amp_dtype, enabled=amp):
            outputs = model(images)
            losses = criterion(outputs, targets)
            loss = criterion.total(losses)
        if not torch.isfinite(loss):
            detail = ", ".join(f"{k}={v.item():.4g}" for k, v in losses.items())
            raise NonFiniteLossError(f"non-finite loss in epoch {epoch} ({detail})")
        optimizer.zero_grad(set_to_none=True)
        if use_scaler:
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            optimizer.step()
        if ema is not None:
            ema.update(model)
        for k, v in losses.items():
            sums[k] = sums.get(k, 0.0) + v.item()
        sums["loss"] = sums.get("loss", 0.0) + loss.item()
        n_batches += 1
        n_images += len(images)
        bar.set_postfix({k: f"{v / n_batches:.3f}" for k, v in sums.items()}, refresh=False)
    dt = time.perf_counter() - t0
    stats = {k: v / max(n_batches, 1) for k, v in sums.items()}
    stats.update(images=n_images, batches=n_batches, images_per_s=n_images / max(dt, 1e-9), seconds=dt)
    return stats


def predict_dataset(
    run: Callable[[np.ndarray], dict[str, np.ndarray]],
    dataset: CocoDataset,
    batch: int = 8,
    conf: float = 0.02,
    show_progress: bool = True,
) -> list[dict]:
    """Run a graph-like callable (torch_runner() or EdgeSegmenter.run) over an eval dataset -> COCO results
    (masks RLE-encoded at the original resolution)."""
    loader = DataLoader(dataset, batch_size=batch, shuffle=False, collate_fn=collate, num_workers=0)
    results: list[dict] = []
    cat_ids = dataset.data.cat_ids
    for images, targets in tqdm(loader, desc="eval", disable=not show_progress, leave=False):
        out = run(np.ascontiguousarray(images.numpy()))  # graphs take planar NCHW
        for i, (image_id, (h, w)) in enumerate(zip(targets["image_id"], targets["orig_size"])):
            m = targets["matrix"][i]
            lb = Letterbox(float(m[0, 0]), float(m[0, 2]), float(m[1, 2]))
            d = to_detections(
                out["boxes"][i],
                out["scores"][i],
                out["classes"][i],
                out["masks"][i],
                lb,
                h,
                w,
                dataset.imgsz,
                conf,
                dataset.data.class_names,
            )
            results += detections_to_coco(image_id, d.boxes, d.scores, d.classes, d.masks, cat_ids)
    return results


def evaluate(
    model: nn.Module | Callable,
    dataset: CocoDataset,
    device: str = "cpu",
    max_det: int = 100,
    conf: float = 0.02,
    show_progress: bool = True,
    batch: int = 8,
) -> tuple[dict, list[dict]]:
    """COCO mask and box AP on an eval dataset of a PyTorch model or a graph-like callable.
    Returns (metrics, results)."""
    run = torch_runner(model, device, max_det) if isinstance(model, nn.Module) else model
    results = predict_dataset(run, dataset, batch, conf, show_progress)
    gt = ground_truth(dataset.data)
    metrics = coco_evaluate(gt, results, max_det, [r.id for r in dataset.data.images], dataset.data.class_names)
    return metrics, results
