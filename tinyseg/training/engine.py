"""One epoch of training (`train_one_epoch`) and validation (`evaluate`): plain functions, as in DETR."""

from __future__ import annotations

import contextlib
import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from tinyseg.data.dataset import CocoDataset
from tinyseg.errors import TrainingError
from tinyseg.evaluation import evaluate as evaluate_runner
from tinyseg.models.detector import graph_runner
from tinyseg.training.distributed import Processes, max_across, sum_across
from tinyseg.training.losses import Criterion


class ModelEMA:
    """Exponential moving average of weights (and BN statistics). The decay ramps up from 0 so the first
    updates are not dominated by the random init: d = decay * (1 - exp(-updates / ramp))."""

    def __init__(self, model: nn.Module, decay: float, ramp: float, updates: int = 0):
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.decay, self.ramp, self.updates = decay, ramp, updates

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        d = self.decay * (1 - math.exp(-self.updates / self.ramp))
        msd = unwrap(model).state_dict()
        for k, v in self.model.state_dict().items():
            if v.dtype.is_floating_point:
                v.mul_(d).add_(msd[k].detach(), alpha=1 - d)
            else:
                v.copy_(msd[k])


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DistributedDataParallel and/or torch.compile wrapper."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


def lr_factor(progress: float, warmup: float, final: float) -> float:
    """Linear warm-up from 0.1 to 1 over the first `warmup` of the run, then cosine down to `final`."""
    if progress < warmup:
        return 0.1 + 0.9 * progress / warmup
    p = min((progress - warmup) / max(1 - warmup, 1e-9), 1.0)
    return final + (1 - final) * 0.5 * (1 + math.cos(math.pi * p))


@dataclass
class Optimization:
    """How one step updates the weights: optimiser, LR schedule, clipping, mixed precision, EMA."""

    optimizer: torch.optim.Optimizer
    ema: ModelEMA
    base_lr: float
    warmup: float
    final_lr: float
    grad_clip: float
    # Autocast dtype (None: fp32): bf16 where the hardware has it (no scaler needed), else fp16 + a GradScaler.
    amp_dtype: torch.dtype | None = None
    scaler: torch.amp.GradScaler | None = None
    accumulate: int = 1  # micro-batches per step

    def set_progress(self, progress: float) -> None:
        for g in self.optimizer.param_groups:
            g["lr"] = self.base_lr * lr_factor(progress, self.warmup, self.final_lr)

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def step(self, model: nn.Module) -> None:
        """Clip the accumulated gradients, update the weights and the EMA, clear the gradients."""
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        nn.utils.clip_grad_norm_(model.parameters(), self.grad_clip)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.ema.update(model)


def train_one_epoch(
    model: nn.Module,
    criterion: Criterion,
    loader: DataLoader,
    opt: Optimization,
    device: str,
    epoch: int,
    progress_fn: Callable[[int], float],
    procs: Processes | None = None,
    show_progress: bool = True,
) -> dict[str, float]:
    """One pass over `loader` (or until progress_fn reaches 1: a time budget can end an epoch early).
    Each optimiser step takes `opt.accumulate` micro-batches (under DDP each process its own); progress_fn(steps
    done this epoch) -> fraction of the whole run done, agreed by all processes; the LR follows it.
    `model` may be the DDP wrapper. Returns mean losses, images, steps, images/s and seconds over all processes."""
    procs = procs or Processes()
    model.train()
    sums: dict[str, float] = {}
    steps, micro, n_images, t0 = 0, 0, 0, time.perf_counter()
    bar = tqdm(
        loader, desc=f"epoch {epoch}", disable=not (show_progress and procs.main), leave=False, dynamic_ncols=True
    )
    batches = iter(bar)
    for _ in range(len(loader) // opt.accumulate):
        p = max_across(progress_fn(steps), procs)
        if p >= 1.0:
            break
        opt.set_progress(p)
        for m in range(opt.accumulate):
            images, targets = next(batches)
            last = m == opt.accumulate - 1
            with model.no_sync() if procs.distributed and not last else contextlib.nullcontext():
                losses, loss = _forward_backward(model, criterion, opt, images, targets, device, epoch)
            for k, v in {**losses, "loss": loss}.items():
                sums[k] = sums.get(k, 0.0) + v.item()
            micro, n_images = micro + 1, n_images + len(images)
        opt.step(model)
        steps += 1
        bar.set_postfix({k: f"{v / micro:.3f}" for k, v in sums.items()}, refresh=False)
    dt = time.perf_counter() - t0
    totals = sum_across({**sums, "micro": micro, "images": n_images}, procs)
    stats = {k: v / max(totals["micro"], 1) for k, v in totals.items() if k not in ("micro", "images")}
    stats.update(images=int(totals["images"]), batches=steps, images_per_s=totals["images"] / max(dt, 1e-9), seconds=dt)
    return stats


def _forward_backward(
    model: nn.Module,
    criterion: Criterion,
    opt: Optimization,
    images: torch.Tensor,
    targets: dict,
    device: str,
    epoch: int,
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """One micro-batch: forward, losses, backward of its share of the step's loss. -> (losses, total loss)."""
    images = images.to(device, non_blocking=True)
    targets = {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in targets.items()}
    images = images.contiguous(memory_format=torch.channels_last)
    device_type = "cuda" if device.startswith("cuda") else "cpu"
    with torch.autocast(device_type=device_type, dtype=opt.amp_dtype, enabled=opt.amp_dtype is not None):
        losses = criterion(model(images, targets), targets)
        loss = criterion.total(losses)
    if not torch.isfinite(loss):
        detail = ", ".join(f"{k}={v.item():.4g}" for k, v in losses.items())
        raise TrainingError(f"non-finite loss in epoch {epoch} ({detail})")
    opt.backward(loss / opt.accumulate)
    return losses, loss


def evaluate(
    model: nn.Module, dataset: CocoDataset, device: str, max_det: int, show_progress: bool = True
) -> tuple[dict, list[dict]]:
    """COCO mask and box AP of a PyTorch model on an eval dataset. Returns (metrics, results)."""
    return evaluate_runner(graph_runner(model, device, max_det), dataset, max_det, show_progress=show_progress)
