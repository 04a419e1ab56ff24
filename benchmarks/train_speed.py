"""Training throughput: images/s of `nano` and `small` at 320 and 640, in 1 process (all cores) and in 2
processes under torchrun (one thread each), on the synthetic set; and on CUDA with --device cuda where a GPU is.

    .venv/bin/python benchmarks/train_speed.py [--models nano,small] [--sizes 320,640] [--procs 1,2]

Each setting trains 3 epochs of 96 images (global batch 8) and reports the images/s of the last epoch (the first
pays for start-up). Writes benchmarks/results/train_speed.{json,md}; the data goes to runs/train_speed.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def images_per_s(data: Path, out: Path, model: str, size: int, procs: int, device: str) -> float:
    train = ["-m", "tinyseg", "train", "--train", str(data / "train.json"), "--model", model, "--imgsz", str(size)]
    train += ["--epochs", "3", "--batch", "8", "--out", str(out), "--device", device, "--workers", "1"]
    env = dict(os.environ)
    if procs > 1:
        argv = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(procs), *train]
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 2) // procs))
    else:
        argv = [sys.executable, *train]
    res = subprocess.run(argv, capture_output=True, text=True, env=env)
    if res.returncode:
        raise SystemExit(res.stderr[-2000:])
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    return float(rows[-1]["images_per_s"])


def _num(v: float | None) -> str:
    return f"{v:.1f}" if v else "-"


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--models", default="nano,small")
    p.add_argument("--sizes", default="320,640")
    p.add_argument("--procs", default="1,2")
    p.add_argument("--device", default="cpu")
    p.add_argument("--work", default="runs/train_speed")
    a = p.parse_args()
    work = Path(a.work)
    data = work / "data"
    if not (data / "train.json").is_file():
        subprocess.run([sys.executable, "-m", "tinyseg", "synth", str(data), "--train", "96", "--val", "1"], check=True)
    rows = []
    for model in a.models.split(","):
        for size in (int(s) for s in a.sizes.split(",")):
            for procs in (int(n) for n in a.procs.split(",")):
                ips = images_per_s(data, work / f"{model}_{size}_{procs}", model, size, procs, a.device)
                rows.append(
                    {"model": model, "imgsz": size, "processes": procs, "device": a.device, "images_per_s": ips}
                )
                print(rows[-1], flush=True)
    md = [
        # On one machine both settings share the same cores: the ratio shows what DDP's one thread per process
        # gains or costs there, not how it scales across machines.
        "| model | input | device | 1 process (img/s) | 2 processes (img/s) | 2 / 1 |",
        "|---|---|---|---|---|---|",
    ]
    for model in a.models.split(","):
        for size in (int(s) for s in a.sizes.split(",")):
            by = {r["processes"]: r["images_per_s"] for r in rows if r["model"] == model and r["imgsz"] == size}
            one, two = by.get(1), by.get(2)
            ratio = f"{two / one:.2f}x" if one and two else "-"
            md.append(f"| {model} | {size} | {a.device} | {_num(one)} | {_num(two)} | {ratio} |")
    (HERE / "results").mkdir(exist_ok=True)
    machine = f"{platform.machine()}, {os.cpu_count()} cores"
    (HERE / "results" / f"train_speed_{a.device}.json").write_text(
        json.dumps({"machine": machine, "rows": rows}, indent=1) + "\n"
    )
    (HERE / "results" / f"train_speed_{a.device}.md").write_text("\n".join(md) + f"\n\nMachine: {machine}.\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
