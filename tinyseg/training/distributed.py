"""Training on several processes with PyTorch's own engine: torchrun starts the processes and describes them
in the environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT); each joins one process group
(gloo on CPUs, NCCL on GPUs) and trains a DistributedDataParallel replica. A plain `tinyseg train` is rank 0 of
1 and never touches torch.distributed."""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Processes:
    """Which process this is among the ones training together."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """The one process that evaluates, writes checkpoints, metrics and plots, and prints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1


def launched_processes() -> Processes:
    """What torchrun says about this process, without joining anything (rank 0 of 1 outside torchrun)."""
    env = os.environ
    return Processes(int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)), int(env.get("LOCAL_RANK", 0)))


def init_processes(device: str, timeout_minutes: float) -> Processes:
    """Join the process group torchrun describes. Every collective gives up after `timeout_minutes`, so a rank
    that died or hangs ends the job instead of blocking the others for ever."""
    procs = launched_processes()
    if procs.distributed and not dist.is_initialized():
        backend = "nccl" if device.startswith("cuda") else "gloo"
        dist.init_process_group(backend, timeout=datetime.timedelta(minutes=timeout_minutes))
    return procs


def local_device(device: str, procs: Processes) -> str:
    """One GPU per process on a multi-GPU node: cuda -> cuda:LOCAL_RANK."""
    return f"cuda:{procs.local_rank}" if device == "cuda" and procs.distributed else device


def max_across(value: float, procs: Processes) -> float:
    """The largest `value` over all processes (what they agree on, e.g. how far a time budget has run)."""
    if not procs.distributed:
        return value
    t = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t.item())


def sum_across(values: dict[str, float], procs: Processes) -> dict[str, float]:
    if not procs.distributed:
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64)
    dist.all_reduce(t)
    return dict(zip(keys, t.tolist()))


def barrier(procs: Processes) -> None:
    if procs.distributed:
        dist.barrier()


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
