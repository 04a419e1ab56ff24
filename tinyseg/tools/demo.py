"""The main job (`make demo`): generate the synthetic dataset, look at it, train `nano` on a CPU time budget,
evaluate it, draw its predictions, and say where everything is. Fits 15 minutes in all on a 2-core laptop."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from tinyseg.io import write_text
from tinyseg.tools.cli import main as cli


def run(out: Path, minutes: float, train_images: int, seed: int) -> int:
    t0 = time.perf_counter()
    data, weights = out / "data", out / "train" / "best.pt"
    rc = _dataset(data, train_images, seed)
    _step(f"2/5 ground-truth overlays -> {out / 'ground_truth'}")
    cli(["show", "--data", str(data / "val.json"), "--out", str(out / "ground_truth"), "--num", "12"])
    _step(f"3/5 training nano for {minutes:g} CPU minutes -> {out / 'train'}")
    train = ["train", "--train", str(data / "train.json"), "--val", str(data / "val.json"), "--model", "nano"]
    train += ["--time", str(minutes), "--out", str(out / "train"), "--seed", str(seed), "--set", "train.val_interval=4"]
    rc = rc or cli(train)
    if not rc:
        _step("4/5 evaluating (COCO mask and box AP on the 100 val images)")
        rc = cli(
            ["eval", "--weights", str(weights), "--val", str(data / "val.json"), "--json", str(out / "metrics.json")]
        )
    if not rc:
        _step(f"5/5 predicting the val images -> {out / 'predictions'}")
        source = str(data / "images" / "val")
        rc = cli(["predict", "--weights", str(weights), "--source", source, "--out", str(out / "predictions")])
    if not rc:
        _summary(out, weights, (time.perf_counter() - t0) / 60)
    return rc


def _dataset(data: Path, train_images: int, seed: int) -> int:
    """Generate the synthetic dataset unless the same one is already there."""
    meta = {"train": train_images, "val": 100, "size": 320, "seed": seed}
    stamp = data / "params.json"
    if stamp.is_file() and json.loads(stamp.read_text()) == meta and (data / "val.json").is_file():
        _step(f"1/5 synthetic dataset already in {data}")
        return 0
    _step(f"1/5 generating the synthetic dataset ({train_images} + 100 images) in {data}")
    if cli(["synth", str(data), "--train", str(train_images), "--val", "100", "--seed", str(seed)]):
        return 1
    write_text(json.dumps(meta), stamp)
    return 0


def _summary(out: Path, weights: Path, minutes: float) -> None:
    m = json.loads((out / "metrics.json").read_text())
    print(f"""
tinyseg demo finished in {minutes:.1f} min: mask AP {m["mask_ap"]:.3f}, box AP {m["box_ap"]:.3f} (synthetic val)
  model        {weights}
  curves       {out / "train" / "curves.png"}   (metrics.csv beside it)
  report       {out / "train" / "report" / "index.html"}   (open it in a browser)
  metrics      {out / "metrics.json"}
  predictions  {out / "predictions"}/*.png
  ground truth {out / "ground_truth"}/*.png
Try:  .venv/bin/tinyseg predict --weights {weights} --source YOUR_IMAGE.png --out runs/mine""")


def _step(msg: str) -> None:
    print(f"\n== {msg}", flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tinyseg.tools.demo", description=__doc__)
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--minutes", type=float, default=12.0, help="training budget (default 12)")
    p.add_argument("--train-images", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    return run(Path(a.out), a.minutes, a.train_images, a.seed)


if __name__ == "__main__":
    sys.exit(main())
