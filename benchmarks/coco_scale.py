"""COCO-scale data in bounded memory: a generated COCO JSON of N images (pointing at a few real synthetic images,
~10 polygon instances each) -> how long `tinyseg train --time 0.5` takes to start training and its peak RSS,
for several N.

    .venv/bin/python benchmarks/coco_scale.py [--sizes 10000,30000,100000]

Writes benchmarks/results/coco_scale.{json,md}. The files are generated under runs/coco_scale (not committed).
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
OBJECTS_PER_IMAGE = 10
REAL_IMAGES = 16  # the records point at these few real files (the JSON is what grows)


def write_coco(path: Path, n: int, images_dir: Path) -> int:
    """A COCO JSON of n image records, each with OBJECTS_PER_IMAGE random polygons; returns the instance count."""
    rng = np.random.default_rng(n)
    files = sorted(p.name for p in images_dir.glob("*.png"))[:REAL_IMAGES]
    images, anns = [], []
    for i in range(n):
        images.append({"id": i + 1, "file_name": files[i % len(files)], "height": 320, "width": 320})
        for _ in range(OBJECTS_PER_IMAGE):
            cx, cy, r = rng.uniform(30, 290), rng.uniform(30, 290), rng.uniform(6, 28)
            t = np.sort(rng.uniform(0, 2 * np.pi, 8))
            poly = np.stack([cx + r * np.cos(t), cy + r * np.sin(t)], 1).round(1).ravel().tolist()
            anns.append(
                {"id": len(anns) + 1, "image_id": i + 1, "category_id": 1, "segmentation": [poly], "iscrowd": 0}
            )
    cats = [{"id": 1, "name": "blob"}]
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return len(anns)


# Runs one command and reports its peak RSS: a fresh parent per measurement, since RUSAGE_CHILDREN keeps the
# largest child a process ever had.
PEAK = (
    "import resource, subprocess, sys; subprocess.run(sys.argv[1:]); "
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
)


def measure(ann: Path, out: Path, workers: int) -> dict:
    """Run `tinyseg train --time 0.5` and read when training started (wall time minus the training clock of
    the last epoch line) and the peak RSS of the process (DataLoader workers are separate processes)."""
    argv = [sys.executable, "-m", "tinyseg", "train", "--train", str(ann), "--time", "0.5", "--out", str(out)]
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-c", PEAK, *argv, "--workers", str(workers)], capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if "done:" not in res.stdout:
        raise SystemExit(res.stderr[-2000:])
    peak = int(res.stdout.strip().splitlines()[-1]) / 1024
    minutes = [float(m) for m in re.findall(r"minutes=([0-9.]+)", res.stdout)]
    return {"wall_s": wall, "train_s": 60 * max(minutes), "startup_s": wall - 60 * max(minutes), "peak_rss_mb": peak}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--sizes", default="10000,30000,100000")
    p.add_argument("--work", default="runs/coco_scale")
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers of the runs (default 0)")
    a = p.parse_args()
    work = Path(a.work)
    images = work / "data"
    if not (images / "train.json").is_file():
        subprocess.run(
            [sys.executable, "-m", "tinyseg", "synth", str(images), "--train", str(REAL_IMAGES), "--val", "1"],
            check=True,
        )
    rows = []
    for n in (int(s) for s in a.sizes.split(",")):
        ann = images / "images" / "train" / f"scale_{n}.json"
        t = time.perf_counter()
        instances = write_coco(ann, n, images / "images" / "train")
        dt = time.perf_counter() - t
        print(f"{n} images, {instances} instances: JSON {ann.stat().st_size / 1e6:.0f} MB in {dt:.0f} s")
        row = {"images": n, "instances": instances, "json_mb": ann.stat().st_size / 1e6}
        row.update(measure(ann, work / f"run_{n}", a.workers), workers=a.workers)
        print(row, flush=True)
        rows.append(row)
    result = {"machine": f"{platform.machine()}, {platform.processor() or 'cpu'}", "rows": rows}
    md = ["| images | instances | JSON | start-up (s) | peak RSS (MB) |", "|---|---|---|---|---|"]
    md += [
        f"| {r['images']} | {r['instances']} | {r['json_mb']:.0f} MB | {r['startup_s']:.1f} | {r['peak_rss_mb']:.0f} |"
        for r in rows
    ]
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "coco_scale.json").write_text(json.dumps(result, indent=1) + "\n")
    (HERE / "results" / "coco_scale.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
