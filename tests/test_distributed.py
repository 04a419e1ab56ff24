"""Training on several processes with torchrun on this CPU (gloo): the same steps as one process, exact resume,
a failing rank ends the job, and two "nodes" meeting over a c10d rendezvous on 127.0.0.1."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import torch

from tinyseg.checkpoint import load_checkpoint

# Exact arithmetic for the comparisons (no bf16 autocast, deterministic kernels), one thread per process (2
# processes on 2 cores).
COMMON = ["--imgsz", "128", "--batch", "8", "--workers", "0", "--seed", "0"]
COMMON += ["--set", "train.cpu_bf16=false", "train.deterministic=true"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _torchrun(*args: str, nproc: int = 2) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), *args]


def _train(synth: Path, out: Path, epochs: int) -> list[str]:
    return ["-m", "tinyseg", "train", "--train", str(synth / "train.json"), "--epochs", str(epochs), "--out", str(out)]


def _run(argv: list[str], timeout: int = 240) -> subprocess.CompletedProcess:
    res = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=ENV)
    assert res.returncode == 0, res.stderr[-3000:]
    return res


def _params(path: Path) -> dict[str, torch.Tensor]:
    """The trained (not EMA) parameters of a run's last.pt; BatchNorm running statistics left out: each
    replica keeps its own, by design."""
    state = load_checkpoint(path)["train_state"]["model"]
    return {k: v for k, v in state.items() if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))}


def test_two_processes_step_like_one_that_accumulates(synth, tmp_path):
    """Global batch 8 on 2 processes (4 each) gives the weights of 1 process taking the same 2 micro-batches of 4
    per step (BatchNorm normalises each micro-batch, as each replica does): to float rounding, after 6 steps."""
    _run(_torchrun(*_train(synth, tmp_path / "ddp", 2), *COMMON))
    _run([sys.executable, *_train(synth, tmp_path / "one", 2), *COMMON, "train.accumulate=2"])
    a, b = _params(tmp_path / "ddp" / "last.pt"), _params(tmp_path / "one" / "last.pt")
    assert a.keys() == b.keys()
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    print(f"largest parameter difference DDP vs accumulation: {worst:.2e}")
    assert worst < 1e-4, worst
    one = sorted(p.name for p in (tmp_path / "one").iterdir())
    assert sorted(p.name for p in (tmp_path / "ddp").iterdir()) == one  # the same run folder
    assert load_checkpoint(tmp_path / "ddp" / "last.pt")["train_state"]["step"] == 6


def test_distributed_resume_equals_an_uninterrupted_run(synth, tmp_path):
    _run(_torchrun(*_train(synth, tmp_path / "a", 5), *COMMON))
    proc = subprocess.Popen(
        _torchrun(*_train(synth, tmp_path / "b", 5), *COMMON),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=ENV,
        start_new_session=True,
    )
    last, deadline = tmp_path / "b" / "last.pt", time.time() + 120
    while time.time() < deadline and not (last.exists() and load_checkpoint(last)["train_state"]["epoch"] >= 2):
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    epoch = load_checkpoint(last)["train_state"]["epoch"]
    assert 2 <= epoch < 5  # killed part-way
    _run(_torchrun("-m", "tinyseg", "train", "--resume", str(tmp_path / "b")))
    a, b = _params(tmp_path / "a" / "last.pt"), _params(last)
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-6


def test_a_failing_rank_ends_the_whole_job(synth, tmp_path):
    """One unreadable image, read lazily by whichever rank draws it: that rank says which it is and why, and
    torchrun ends the others; no one hangs."""
    import json

    d = json.loads((synth / "train.json").read_text())
    bad = synth / d["images"][5]["file_name"]
    broken = tmp_path / "images"
    broken.mkdir()
    for im in d["images"]:
        src = synth / im["file_name"]
        data = src.read_bytes()
        (broken / Path(im["file_name"]).name).write_bytes(data[: len(data) // 3] if src == bad else data)
        im["file_name"] = Path(im["file_name"]).name
    (broken / "train.json").write_text(json.dumps(d))
    argv = [
        "-m",
        "tinyseg",
        "train",
        "--train",
        str(broken / "train.json"),
        "--epochs",
        "3",
        "--out",
        str(tmp_path / "r"),
    ]
    t = time.time()
    res = subprocess.run(
        _torchrun(*argv, *COMMON, "data.cache_images=false"), capture_output=True, text=True, timeout=120, env=ENV
    )
    assert res.returncode != 0 and time.time() - t < 90
    assert "(rank " in res.stderr and f"{bad.name}: not a readable image" in res.stderr, res.stderr[-2000:]


def test_two_nodes_on_localhost(synth, tmp_path):
    """`torchrun --nnodes 2 --node_rank R --rdzv-backend c10d --rdzv-endpoint 127.0.0.1:PORT --nproc_per_node 1`
    twice on this machine: the two "nodes" meet and train to completion."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "nodes"
    procs = []
    for rank in (0, 1):
        rdzv = ["--nnodes", "2", "--node_rank", str(rank), "--rdzv-backend", "c10d"]
        rdzv += ["--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "tinyseg-test"]
        argv = [sys.executable, "-m", "torch.distributed.run", *rdzv, "--nproc_per_node", "1"]
        argv += [*_train(synth, out, 2), *COMMON]
        procs.append(subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV))
    outputs = [p.communicate(timeout=240) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs[0][1][-2000:] + outputs[1][1][-2000:]
    assert load_checkpoint(out / "last.pt")["train_state"]["step"] == 6
