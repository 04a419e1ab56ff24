"""The training run: data, model, optimiser, EMA, schedule, validation, checkpoints, metrics.csv, curves.png.

Checkpoints (`best.pt`, `last.pt`) carry the EMA weights, the resolved config, class names and image size,
so one file is enough to predict, evaluate or export; `last.pt` also carries the training state for an
exact resume (weights, EMA, optimiser, epoch, step, elapsed time, RNG).
"""

from __future__ import annotations

import csv
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from tinyseg.config import Config
from tinyseg.data.coco import DatasetError, EpochSampler, build_dataset, collate
from tinyseg.engine import ModelEMA, NonFiniteLossError, evaluate, train_one_epoch
from tinyseg.losses import Criterion
from tinyseg.models.detector import build_model
from tinyseg.predict import CHECKPOINT_FORMAT, load_checkpoint, save_checkpoint
from tinyseg.viz import plot_curves


class TrainingError(RuntimeError):
    pass


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


def train(cfg: Config, resume: str | None = None, show_progress: bool = True) -> dict:
    """Train per `cfg` (or continue the run in `resume`). Returns a summary with the final metrics and paths."""
    state = None
    if resume:
        ckpt = load_checkpoint(Path(resume) / "last.pt" if Path(resume).is_dir() else resume)
        if "train_state" not in ckpt:
            raise TrainingError(f"{resume}: checkpoint has no training state (only last.pt can be resumed)")
        cfg = Config.from_dict(ckpt["config"], str(resume))
        state = ckpt["train_state"]
    tc, dc = cfg.train, cfg.data
    device = tc.device
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise TrainingError("--device cuda asked for, but no CUDA device is available")
    torch.manual_seed(tc.seed)
    out = Path(tc.out)
    out.mkdir(parents=True, exist_ok=True)

    train_ds = build_dataset(dc.train, dc.train_images, dc, train=True, seed=tc.seed)
    val_ds = build_dataset(dc.val, dc.val_images, dc, train=False) if dc.val else None
    if val_ds is not None and val_ds.data.class_names != train_ds.data.class_names:
        raise DatasetError(
            f"{dc.val}: categories {val_ds.data.class_names} differ from the training set's {train_ds.data.class_names}"
        )
    cfg.model.num_classes = train_ds.data.num_classes
    train_ds.preload(show_progress)
    cfg.save(out / "config.yaml")

    model = build_model(cfg.model).to(device)
    if device == "cpu":
        model = model.to(memory_format=torch.channels_last)  # ~15% faster convs on CPU (oneDNN)
    criterion = Criterion(
        model,
        heatmap_weight=tc.heatmap_weight,
        class_weight=tc.class_weight,
        box_weight=tc.box_weight,
        mask_weight=tc.mask_weight,
    )
    optimizer = torch.optim.AdamW(param_groups(model, tc.weight_decay), lr=tc.lr, betas=(0.9, 0.99))
    ema = ModelEMA(model, tc.ema_decay)
    amp = tc.amp and amp_supported(device, tc.cpu_bf16)
    scaler = torch.amp.GradScaler("cuda") if amp and device.startswith("cuda") else None
    epoch, step, elapsed, best_ap, history = 0, 0, 0.0, -1.0, []
    if state is not None:
        model.load_state_dict(state["model"])
        ema.model.load_state_dict(ckpt["model"])
        ema.updates = state["ema_updates"]
        optimizer.load_state_dict(state["optimizer"])
        epoch, step, elapsed, best_ap = state["epoch"], state["step"], state["elapsed"], state["best_ap"]
        history = state["history"]
        torch.set_rng_state(state["rng"])

    batches_per_epoch = max(len(train_ds) // tc.batch, 1)
    total_steps = tc.epochs * batches_per_epoch
    budget = tc.time * 60.0
    clock = {"start": time.perf_counter(), "base": elapsed}

    def elapsed_now() -> float:
        return clock["base"] + time.perf_counter() - clock["start"]

    summary: dict = {"out": str(out)}
    sampler = EpochSampler(len(train_ds), tc.seed)
    loader = DataLoader(
        train_ds,
        batch_size=tc.batch,
        sampler=sampler,
        drop_last=len(train_ds) >= tc.batch,
        collate_fn=collate,
        num_workers=tc.workers,
        persistent_workers=tc.workers > 0,
        pin_memory=device.startswith("cuda"),
    )
    while (budget > 0 and elapsed_now() < budget) or (budget <= 0 and epoch < tc.epochs):
        sampler.set_epoch(epoch)

        def progress_fn(batches_done: int, step0: int = step) -> float:
            return elapsed_now() / budget if budget > 0 else (step0 + batches_done) / max(total_steps, 1)

        clock["start"], clock["base"] = time.perf_counter(), elapsed
        try:
            stats = train_one_epoch(
                model,
                criterion,
                loader,
                optimizer,
                ema,
                device,
                progress_fn,
                tc.lr,
                tc.warmup,
                tc.final_lr,
                tc.grad_clip,
                scaler,
                epoch=epoch,
                show_progress=show_progress,
                amp=amp,
            )
        except NonFiniteLossError as e:
            raise TrainingError(f"{e}; stopped. The last good checkpoint is kept: {out / 'last.pt'}") from None
        elapsed = elapsed_now()
        step += stats["batches"]
        epoch += 1
        finished = (budget > 0 and elapsed >= budget) or (budget <= 0 and epoch >= tc.epochs)
        row = {
            "epoch": epoch,
            "step": step,
            "minutes": round(elapsed / 60, 3),
            "lr": optimizer.param_groups[0]["lr"],
            **{k: round(v, 5) for k, v in stats.items()},
        }
        if val_ds is not None and (finished or epoch % tc.val_interval == 0):
            metrics, _ = evaluate(ema.model, val_ds, device, cfg.model.max_det, show_progress=show_progress)
            row.update(mask_ap=round(metrics["mask_ap"], 4), box_ap=round(metrics["box_ap"], 4))
            summary["metrics"] = metrics
        history.append(row)
        _write_csv(history, out / "metrics.csv")
        plot_curves(history, out / "curves.png")
        ap = row.get("mask_ap", -1.0)
        payload = {
            "format": CHECKPOINT_FORMAT,
            "model": ema.model.state_dict(),
            "config": cfg.to_dict(),
            "class_names": train_ds.data.class_names,
            "cat_ids": train_ds.data.cat_ids,
            "imgsz": dc.imgsz,
            "epoch": epoch,
            "step": step,
            "mask_ap": ap,
        }
        if ap > best_ap or not (out / "best.pt").exists():
            best_ap = max(ap, best_ap)
            save_checkpoint(payload, out / "best.pt")
        payload["train_state"] = {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "ema_updates": ema.updates,
            "epoch": epoch,
            "step": step,
            "elapsed": elapsed,
            "best_ap": best_ap,
            "history": history,
            "rng": torch.get_rng_state(),
        }
        save_checkpoint(payload, out / "last.pt")
        if show_progress:
            msg = " ".join(f"{k}={row[k]}" for k in ("epoch", "minutes", "loss", "images_per_s") if k in row)
            if "mask_ap" in row:
                msg += f" mask_ap={row['mask_ap']:.3f} box_ap={row['box_ap']:.3f}"
            print(msg, flush=True)
    summary.update(
        epochs=epoch,
        steps=step,
        minutes=elapsed / 60,
        best=str(out / "best.pt"),
        last=str(out / "last.pt"),
        history=history,
    )
    return summary


def _write_csv(rows: list[dict], path: Path) -> None:
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)
    tmp.replace(path)
