"""The training run: `setup` (data, model, optimiser, EMA, resume), `fit` (epochs on a budget, validation,
metrics.csv, curves.png) and `save_run` (best.pt / last.pt).

Checkpoints carry the EMA weights, the resolved config, class names and image size (tinyseg/checkpoint.py);
`last.pt` also carries the training state for an exact resume (weights, EMA, optimiser, epoch, step,
elapsed time, RNG).
"""

from __future__ import annotations

import csv
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from tinyseg.checkpoint import checkpoint_payload, load_checkpoint, save_checkpoint
from tinyseg.config import Config, check_ranges
from tinyseg.data.dataset import CocoDataset, EpochBatchSampler, build_dataset
from tinyseg.data.yolo import has_yolo_split
from tinyseg.errors import ConfigError, DataError, TrainingError
from tinyseg.io import atomic_write, check_writable, write_text
from tinyseg.models.detector import MASK_STRIDE, TinySeg, build_model
from tinyseg.report import write_report
from tinyseg.training.distributed import (
    Processes,
    barrier,
    init_processes,
    launched_processes,
    local_device,
    max_across,
)
from tinyseg.training.engine import ModelEMA, Optimization, evaluate, train_one_epoch
from tinyseg.training.losses import Criterion, build_criterion
from tinyseg.training.targets import TrainingCollate
from tinyseg.viz import plot_curves


@dataclass
class Progress:
    """Where a run stands; saved in last.pt and restored by --resume."""

    epoch: int = 0
    step: int = 0
    elapsed: float = 0.0  # seconds of training so far (what --time budgets)
    best_ap: float = -1.0
    history: list[dict] = field(default_factory=list)


@dataclass
class Run:
    cfg: Config
    out: Path
    model: TinySeg  # the model itself; `trained` is what runs the steps (its DDP wrapper in a distributed run)
    trained: torch.nn.Module
    criterion: Criterion
    opt: Optimization
    loader: DataLoader
    sampler: EpochBatchSampler
    train_ds: CocoDataset
    val_ds: CocoDataset | None
    progress: Progress
    procs: Processes
    device: str  # this process's device (cuda:LOCAL_RANK in a multi-GPU run)
    last_results: list[dict] | None = None  # COCO results of the last evaluation (for the run's report)


def train(cfg: Config, resume: str | None = None, show_progress: bool = True) -> dict:
    """Train per `cfg` (or continue the run in `resume`). Returns a summary with the final metrics and paths.
    Under torchrun every process calls this; they train one model together (see training/distributed.py)."""
    return fit(setup(cfg, resume, show_progress), show_progress)


def setup(cfg: Config, resume: str | None = None, show_progress: bool = True) -> Run:
    """Everything a run needs, built from the config (or from the checkpoint of the run to resume)."""
    ckpt = _resume_checkpoint(resume) if resume else None
    if ckpt is not None:
        cfg = Config.from_dict(ckpt["config"], str(resume))
    check_ranges(cfg, str(resume) if resume else "config")
    tc = cfg.train
    out = check_writable(tc.out, folder=True)
    procs = _check_processes(cfg)
    device = local_device(tc.device, procs)
    torch.manual_seed(tc.seed)
    _set_determinism(tc.deterministic)
    train_ds, val_ds = _datasets(cfg, show_progress and procs.main)
    if procs.main:
        write_text(cfg.to_yaml(), out / "config.yaml")
    model = build_model(cfg.model).to(device).to(memory_format=torch.channels_last)  # faster convs (oneDNN, cuDNN)
    opt = _optimization(model, cfg)
    progress = _restore(ckpt, model, opt) if ckpt is not None else Progress()
    trained = _replicated(model, cfg, procs, device)
    parts = procs.world * tc.accumulate
    sampler = EpochBatchSampler(
        len(train_ds), tc.batch, tc.seed, parts, range(procs.rank * tc.accumulate, (procs.rank + 1) * tc.accumulate)
    )
    loader = DataLoader(
        train_ds,
        batch_sampler=sampler,
        collate_fn=TrainingCollate(model.stride, model.mask_stride, tc.gaussian_alpha),
        num_workers=tc.workers,
        persistent_workers=tc.workers > 0,
        pin_memory=device.startswith("cuda"),
    )
    criterion = build_criterion(tc, model.stride)
    return Run(cfg, out, model, trained, criterion, opt, loader, sampler, train_ds, val_ds, progress, procs, device)


def _check_processes(cfg: Config) -> Processes:
    """Join the other processes (under torchrun) once the settings are known to work with them."""
    tc = cfg.train
    if tc.device.startswith("cuda") and not torch.cuda.is_available():
        raise TrainingError("--device cuda asked for, but no CUDA device is available")
    if tc.sync_bn and not tc.device.startswith("cuda"):
        raise ConfigError("train.sync_bn: SyncBatchNorm runs on CUDA devices only")
    procs = launched_processes()
    if tc.batch % (procs.world * tc.accumulate):
        raise ConfigError(
            f"train.batch {tc.batch} must split evenly over {procs.world} processes x {tc.accumulate} micro-batches"
        )
    return init_processes(tc.device, tc.dist_timeout)


def _datasets(cfg: Config, show_progress: bool) -> tuple[CocoDataset, CocoDataset | None]:
    dc, seed = cfg.data, cfg.train.seed
    train_ds = build_dataset(dc, "train", MASK_STRIDE, train=True, seed=seed)
    has_val = has_yolo_split(dc.data, "val") if dc.data else bool(dc.val)
    val_ds = build_dataset(dc, "val", MASK_STRIDE, train=False) if has_val else None
    if val_ds is not None and val_ds.data.class_names != train_ds.data.class_names:
        raise DataError(
            f"{val_ds.data.path}: categories {val_ds.data.class_names} differ from the training set's "
            f"{train_ds.data.class_names}"
        )
    cfg.model.num_classes = train_ds.data.num_classes
    if not any(r.labels for r in train_ds.data.images):
        warnings.warn(
            f"{train_ds.data.path}: no objects to learn from (every annotation is a crowd or skipped)", stacklevel=3
        )
    train_ds.preload(show_progress)
    return train_ds, val_ds


def _replicated(model: TinySeg, cfg: Config, procs: Processes, device: str) -> torch.nn.Module:
    """What the training steps run: the model, compiled if asked, wrapped in DDP in a distributed run."""
    tc = cfg.train
    trained: torch.nn.Module = model
    if tc.sync_bn and procs.distributed:
        trained = torch.nn.SyncBatchNorm.convert_sync_batchnorm(trained)
    if tc.compile:
        trained = torch.compile(trained)
    if procs.distributed:
        ids = [torch.device(device).index] if device.startswith("cuda") else None
        trained = DistributedDataParallel(trained, device_ids=ids)
    return trained


def fit(run: Run, show_progress: bool = True) -> dict:
    """Train epochs until the epoch count or the time budget is reached; validate, log and save after each.
    Only the main process evaluates and writes; the others wait for it."""
    tc, p, procs = run.cfg.train, run.progress, run.procs
    budget = tc.time * 60.0
    total_steps = tc.epochs * run.sampler.global_batches
    summary: dict = {"out": str(run.out)}
    while (p.elapsed < budget) if budget > 0 else (p.epoch < tc.epochs):
        run.sampler.set_epoch(p.epoch)
        start, elapsed0 = time.perf_counter(), p.elapsed
        progress_fn = _progress_fn(budget, total_steps, elapsed0, p.step, start)
        try:
            stats = train_one_epoch(
                run.trained, run.criterion, run.loader, run.opt, run.device, p.epoch, progress_fn, procs, show_progress
            )
        except TrainingError as e:
            raise TrainingError(f"{e}; stopped. The last good checkpoint is kept: {run.out / 'last.pt'}") from None
        p.elapsed = max_across(elapsed0 + time.perf_counter() - start, procs)  # all processes stop together
        p.step, p.epoch = p.step + stats["batches"], p.epoch + 1
        if procs.main:
            row = _log_epoch(run, stats, show_progress, summary)
            save_run(run, row.get("mask_ap", -1.0))
        barrier(procs)
    if procs.main and run.last_results is not None:
        summary["report"] = str(
            write_report(
                run.out / "report", run.val_ds.data, run.last_results, summary["metrics"], run.out / "curves.png"
            )
        )
    summary.update(epochs=p.epoch, steps=p.step, minutes=p.elapsed / 60, history=p.history)
    summary.update(best=str(run.out / "best.pt"), last=str(run.out / "last.pt"))
    return summary


def _log_epoch(run: Run, stats: dict, show_progress: bool, summary: dict) -> dict:
    """Validate when it is time, append the epoch's row to metrics.csv and curves.png, print it."""
    tc, p = run.cfg.train, run.progress
    finished = p.elapsed >= tc.time * 60 if tc.time > 0 else p.epoch >= tc.epochs
    row = {"epoch": p.epoch, "step": p.step, "minutes": round(p.elapsed / 60, 3)}
    row.update(lr=run.opt.optimizer.param_groups[0]["lr"], **{k: round(v, 5) for k, v in stats.items()})
    if run.val_ds is not None and (finished or p.epoch % tc.val_interval == 0):
        metrics, results = evaluate(run.opt.ema.model, run.val_ds, run.device, run.cfg.model.max_det, show_progress)
        row.update(mask_ap=round(metrics["mask_ap"], 4), box_ap=round(metrics["box_ap"], 4))
        summary["metrics"], run.last_results = metrics, results
    p.history.append(row)
    _write_csv(p.history, run.out / "metrics.csv")
    plot_curves(p.history, run.out / "curves.png")
    if show_progress:
        print(_epoch_line(row), flush=True)
    return row


def _progress_fn(budget: float, total_steps: int, elapsed0: float, step0: int, start: float):
    """batches done this epoch -> fraction of the run done: of the time budget, else of the steps."""

    def progress(batches_done: int) -> float:
        if budget > 0:
            return (elapsed0 + time.perf_counter() - start) / budget
        return (step0 + batches_done) / max(total_steps, 1)

    return progress


def save_run(run: Run, ap: float) -> None:
    """best.pt when `ap` is the best so far (or there is none yet), and always last.pt with the training state."""
    p, data = run.progress, run.train_ds.data
    payload = checkpoint_payload(
        run.opt.ema.model, run.cfg, data.class_names, data.cat_ids, epoch=p.epoch, step=p.step, mask_ap=ap
    )
    if ap > p.best_ap or not (run.out / "best.pt").exists():
        p.best_ap = max(ap, p.best_ap)
        save_checkpoint(payload, run.out / "best.pt")
    payload["train_state"] = {
        "model": run.model.state_dict(),
        "optimizer": run.opt.optimizer.state_dict(),
        "ema_updates": run.opt.ema.updates,
        "epoch": p.epoch,
        "step": p.step,
        "elapsed": p.elapsed,
        "best_ap": p.best_ap,
        "history": p.history,
        "rng": torch.get_rng_state(),
    }
    save_checkpoint(payload, run.out / "last.pt")


def _resume_checkpoint(resume: str) -> dict:
    ckpt = load_checkpoint(Path(resume) / "last.pt" if Path(resume).is_dir() else resume)
    if "train_state" not in ckpt:
        raise TrainingError(f"{resume}: checkpoint has no training state (only last.pt can be resumed)")
    return ckpt


def _restore(ckpt: dict, model: TinySeg, opt: Optimization) -> Progress:
    """Weights, EMA, optimiser and RNG from last.pt: every process restores the same state."""
    state = ckpt["train_state"]
    model.load_state_dict(state["model"])
    opt.ema.model.load_state_dict(ckpt["model"])
    opt.ema.updates = state["ema_updates"]
    opt.optimizer.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["rng"])
    return Progress(state["epoch"], state["step"], state["elapsed"], state["best_ap"], state["history"])


def _set_determinism(on: bool) -> None:
    """Deterministic kernels everywhere (train.deterministic), or PyTorch's fastest."""
    if on:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS's condition for repeatable GEMMs
    torch.use_deterministic_algorithms(on, warn_only=True)


def _optimization(model: TinySeg, cfg: Config) -> Optimization:
    tc = cfg.train
    optimizer = torch.optim.AdamW(param_groups(model, tc.weight_decay), lr=tc.lr, betas=tuple(tc.betas))
    ema = ModelEMA(model, tc.ema_decay, tc.ema_ramp)
    amp_dtype = None
    if tc.amp and amp_supported(tc.device, tc.cpu_bf16):
        cuda_bf16 = tc.device.startswith("cuda") and torch.cuda.is_bf16_supported()
        amp_dtype = torch.bfloat16 if cuda_bf16 or not tc.device.startswith("cuda") else torch.float16
    if tc.device.startswith("cuda") and not tc.deterministic:
        torch.backends.cudnn.benchmark = True  # fixed input size: let cuDNN pick its fastest kernels once
    scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None
    opts = (tc.lr, tc.warmup, tc.final_lr, tc.grad_clip, amp_dtype, scaler, tc.accumulate)
    return Optimization(optimizer, ema, *opts)


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """No weight decay on BatchNorm weights and biases (decaying them only fights the normalisation)."""
    decay, no_decay = [], []
    for p in model.parameters():
        (no_decay if p.ndim <= 1 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def amp_supported(device: str, cpu_bf16: bool = False) -> bool:
    """fp16 autocast on any CUDA GPU; bf16 on the CPU only when asked for and the CPU has native bf16
    (AVX512-BF16 / AMX); elsewhere bf16 would be emulated and slower."""
    if device.startswith("cuda"):
        return True
    if not cpu_bf16:
        return False
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def _epoch_line(row: dict) -> str:
    msg = " ".join(f"{k}={row[k]}" for k in ("epoch", "minutes", "loss", "images_per_s") if k in row)
    if "mask_ap" in row:
        msg += f" mask_ap={row['mask_ap']:.3f} box_ap={row['box_ap']:.3f}"
    return msg


def _write_csv(rows: list[dict], path: Path) -> None:
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    with atomic_write(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)
