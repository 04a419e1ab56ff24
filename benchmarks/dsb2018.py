"""Real-data benchmark: train `nano` from scratch on DSB2018 nuclei for a fixed CPU budget at 320, evaluate
with maxDets=500, and record mask AP / box AP, training images/s, parameters and GFLOPs.

    .venv/bin/python benchmarks/dsb2018.py [--data ../shared/data/dsb2018] [--minutes 30]

Writes benchmarks/results/dsb2018_nano.json and .md (committed). The data is not part of the repo or the
tests: it lives in the shared folder next to the checkout (see its README for why maxDets must be 500).
Reference (same protocol, from the issue): Ultralytics YOLO11n-seg from scratch, 30 CPU minutes, 320,
500 detections: 0.318 mask AP / 0.325 box AP.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import torch

from tinyseg.config import Config, apply_overrides, preset
from tinyseg.evaluation import format_table
from tinyseg.io import write_json, write_text
from tinyseg.models.detector import build_model, detect_flops
from tinyseg.training.trainer import train

HERE = Path(__file__).resolve().parent


def model_cost(cfg: Config) -> tuple[int, float]:
    m = build_model(cfg.model).eval()
    return sum(p.numel() for p in m.parameters()), detect_flops(m, cfg.data.imgsz, cfg.model.max_det) / 1e9


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(HERE.parent.parent / "shared" / "data" / "dsb2018"))
    p.add_argument("--minutes", type=float, default=30.0)
    p.add_argument("--model", default="nano")
    p.add_argument("--out", default="runs/bench_dsb2018")
    p.add_argument("--set", nargs="*", default=[], help="extra config overrides")
    a = p.parse_args()
    data = Path(a.data)
    if not (data / "train.json").is_file():
        print(f"{data}: DSB2018 not found (expected train.json and val.json there)", file=sys.stderr)
        return 2
    cfg = Config()
    cfg.model = preset(a.model)
    cfg.model.max_det = 500  # dense: up to 375 nuclei per image
    cfg.data.train, cfg.data.val, cfg.data.imgsz = str(data / "train.json"), str(data / "val.json"), 320
    cfg.train.time, cfg.train.out, cfg.train.val_interval = a.minutes, a.out, 10
    apply_overrides(cfg, a.set)
    t0 = time.perf_counter()
    summary = train(cfg)
    wall = (time.perf_counter() - t0) / 60
    cfg.model.num_classes = 1
    params, gflops = model_cost(cfg)
    m = summary["metrics"]
    hist = summary["history"]
    ips = sum(r["images"] for r in hist) / max(sum(r["seconds"] for r in hist), 1e-9)
    result = {
        "model": a.model,
        "imgsz": 320,
        "train_minutes": a.minutes,
        "wall_minutes": round(wall, 2),
        "epochs": summary["epochs"],
        "steps": summary["steps"],
        "train_images_per_s": round(ips, 2),
        "params": params,
        "gflops": round(gflops, 3),
        "max_dets": 500,
        "mask_ap": round(m["mask_ap"], 4),
        "box_ap": round(m["box_ap"], 4),
        "mask_ap50": round(m["mask_ap50"], 4),
        "box_ap50": round(m["box_ap50"], 4),
        "mask_ap75": round(m["mask_ap75"], 4),
        "box_ap75": round(m["box_ap75"], 4),
        "mAP_mean_of_mask_and_box": round((m["mask_ap"] + m["box_ap"]) / 2, 4),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
        "overrides": a.set,
        "reference_yolo11n_seg": {"mask_ap": 0.318, "box_ap": 0.325},
    }
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    write_json(result, out / f"dsb2018_{a.model}.json")
    md = [
        f"# DSB2018, tinyseg `{a.model}`, {a.minutes:g} CPU minutes at 320, maxDets=500",
        "",
        "| model | mask AP | box AP | mAP (mean) | train img/s | params | GFLOPs |",
        "|---|---|---|---|---|---|---|",
        f"| tinyseg {a.model} | {result['mask_ap']:.3f} | {result['box_ap']:.3f} | "
        f"{result['mAP_mean_of_mask_and_box']:.3f} | {ips:.1f} | {params / 1e6:.2f} M | {gflops:.2f} |",
        "| YOLO11n-seg (reference, from the issue) | 0.318 | 0.325 | 0.322 | ~4 | 2.9 M | 2.5 |",
        "",
        "```",
        format_table(m),
        "```",
        "",
        f"Machine: {result['machine']}.",
    ]
    write_text("\n".join(md) + "\n", out / f"dsb2018_{a.model}.md")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
