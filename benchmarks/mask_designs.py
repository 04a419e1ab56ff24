"""The three mask designs on one detector, side by side: YOLACT prototypes, CondInst dynamic convolutions and
CenterMask local shape x global saliency, all `nano` at 320.

    .venv/bin/python benchmarks/mask_designs.py [--minutes 12] [--dsb-minutes 30] [--seeds 0,1] [--dsb-seeds 0,1]
        [--designs prototypes,condinst,centermask] [--stage all]

Stages (each skips what an earlier call finished, so an interrupted run picks up where it stopped):
  rates   training images/s of each design on each dataset (one process, 2 threads: what a CPU minute means);
  train   each design x seed on the synthetic demo set (1000 + 100 images) and on DSB2018 (maxDets 500), for
          the number of epochs its measured rate fills in the budget: a budget in steps, so a run's result does
          not depend on what else the machine did meanwhile (only its wall time does);
  bench   ONNX Runtime and OpenVINO FP32 / INT8 latency at 1 and 2 threads, INT8 AP drop and file sizes of
          each design's seed-0 synthetic model (`tinyseg bench`): needs the machine to itself;
  table   benchmarks/results/mask_designs.{json,md}: this work folder's runs over the committed ones, so
          sessions can add seeds or designs (a rerun replaces its row).
Runs go to runs/mask_designs; the DSB2018 data is read from ../shared/data/dsb2018.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import sys
from pathlib import Path

from common import read_json, tinyseg, train_or_resume

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "mask_designs.json"
DESIGNS = ("prototypes", "condinst", "centermask")
SYNTH_TRAIN, SYNTH_VAL = 1000, 100
DECISION = [
    "Default: `prototypes`. Synthetic: CondInst 0.557 / 0.569 mask AP, prototypes 0.567 / 0.542 (its two seeds 2.5",
    "points apart), CenterMask 0.419 / 0.444. DSB2018: CondInst 0.502 / 0.501, prototypes 0.493 / 0.497, CenterMask",
    "0.490 / 0.483 (box AP 0.501 / 0.498, 0.470 / 0.478, 0.476 / 0.469). Prototypes and CondInst are level on the",
    "synthetic set; on dense nuclei CondInst leads by 0.7 mask AP and 2.5 box AP, more than its seeds' spread (0.1)",
    "but small; CenterMask trails on both. Speed decides: prototypes' graph is 4.2x faster than CondInst's (ONNX",
    "Runtime FP32, 1 thread: 5.2 vs 21.9 ms; OpenVINO INT8: 4.1 vs 20.0 ms), because each of K CondInst masks runs a",
    "3-layer MLP over the whole stride-2 grid; CenterMask is the slowest to decode (its bilinear paste gathers 4",
    "values per cell per mask). With the paper's ReLU, 2 of 5 CondInst runs never learned masks (mask BCE flat at",
    "0.67, every hidden unit shut); with leaky units (models/masks.DynamicConvMasks.LEAK) all runs here did. INT8",
    "moves none of the designs by more than 0.002 AP. Both others stay supported (`--set model.mask_head=`).",
]


def measure_rates(work: Path, synth: Path, dsb: dict | None, designs: tuple[str, ...]) -> dict:
    """Training images/s per dataset and design, one process, batch 8: the last of 3 epochs over 96 synthetic
    images, the second of 2 epochs over DSB2018's training set (its images are denser and slower to train on).
    The committed table's rates are reused, so later seeds get the same budgets as its rows."""
    path = work / "rates.json"
    rates = read_json(path) or _nested(committed().get("rates", {}))
    subset = work / "rate_data"
    if not (subset / "train.json").is_file():
        tinyseg("synth", str(subset), "--train", "96", "--val", "1")
    sets = {"synth": (str(subset / "train.json"), "3", "100")}
    if dsb:
        sets["dsb2018"] = (dsb["train"], "2", "500")
    for dataset, (train, epochs, max_det) in sets.items():
        for design in designs:
            if design in rates.setdefault(dataset, {}):
                continue
            out = work / f"rate_{dataset}_{design}"
            tinyseg("train", "--train", train, "--epochs", epochs, "--batch", "8", "--out", str(out),
                    "--set", f"model.mask_head={design}", f"model.max_det={max_det}")  # fmt: skip
            rows = list(csv.DictReader(open(out / "metrics.csv")))
            rates[dataset][design] = float(rows[-1]["images_per_s"])
            path.write_text(json.dumps(rates, indent=1))
            print(f"rate {dataset} {design}: {rates[dataset][design]:.1f} images/s", flush=True)
    return rates


def train_run(work: Path, dataset: str, files: dict, design: str, seed: int, epochs: int, max_det: int) -> dict:
    out = work / f"{dataset}_{design}_s{seed}"
    done = read_json(out / "result.json")
    if done:
        return done
    train_or_resume(out, "--train", files["train"], "--val", files["val"], "--epochs", str(epochs), "--seed",
                    str(seed), "--set", f"model.mask_head={design}", f"model.max_det={max_det}",
                    "train.val_interval=1000")  # fmt: skip
    tinyseg("eval", "--weights", str(out / "best.pt"), "--val", files["val"], "--max-det", str(max_det),
            "--json", str(out / "metrics.json"))  # fmt: skip
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    result = {
        "dataset": dataset,
        "design": design,
        "seed": seed,
        "epochs": epochs,
        "train_minutes_wall": round(float(rows[-1]["minutes"]), 2),
        "metrics": read_json(out / "metrics.json"),
    }
    (out / "result.json").write_text(json.dumps(result, indent=1))
    m = result["metrics"]
    print(f"{dataset} {design} seed {seed}: mask AP {m['mask_ap']:.3f} box AP {m['box_ap']:.3f}", flush=True)
    return result


def bench_design(work: Path, synth: Path, design: str) -> dict:
    path = work / f"bench_{design}.json"
    if not path.is_file():
        weights = work / f"synth_{design}_s0" / "best.pt"
        tinyseg("bench", "--weights", str(weights), "--val", str(synth / "val.json"), "--calib",
                str(synth / "train.json"), "--backends", "onnxruntime,openvino", "--threads", "1,2",
                "--out", str(work / f"export_{design}"), "--json", str(path))  # fmt: skip
    return read_json(path)


def model_cost(design: str) -> tuple[int, float]:
    from tinyseg.config import preset
    from tinyseg.models.detector import build_model, detect_flops

    cfg = preset("nano")
    cfg.mask_head, cfg.num_classes = design, 6
    m = build_model(cfg).eval()
    return sum(p.numel() for p in m.parameters()), detect_flops(m, 320, 100) / 1e9


def committed() -> dict:
    """The results file as committed: later runs add to it (a session cannot hold all runs)."""
    return read_json(RESULTS) or {}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=12.0, help="synthetic budget per run (CPU minutes)")
    p.add_argument("--dsb-minutes", type=float, default=30.0, help="DSB2018 budget per run (0: skip)")
    p.add_argument("--dsb-seeds", default="0,1", help="seeds of the DSB2018 runs ('' for none)")
    p.add_argument("--seeds", default="0,1", help="seeds of the synthetic runs ('' for none)")
    p.add_argument("--designs", default=",".join(DESIGNS), help="designs to train or bench")
    p.add_argument("--data", default=str(HERE.parent.parent / "shared" / "data" / "dsb2018"))
    p.add_argument("--stage", default="all", choices=["all", "rates", "train", "bench", "table"])
    p.add_argument("--work", default="runs/mask_designs")
    a = p.parse_args()
    work, synth = Path(a.work), Path(a.work) / "synth"
    designs = tuple(d for d in a.designs.split(",") if d)
    dsb = {"train": str(Path(a.data) / "train.json"), "val": str(Path(a.data) / "val.json")} if a.dsb_minutes else None
    work.mkdir(parents=True, exist_ok=True)
    if not (synth / "val.json").is_file():
        tinyseg("synth", str(synth), "--train", str(SYNTH_TRAIN), "--val", str(SYNTH_VAL))
    rates = read_json(work / "rates.json") or {}
    if a.stage in ("all", "rates", "train"):
        rates = measure_rates(work, synth, dsb, designs)
    if a.stage in ("all", "train"):
        run_trainings(a, work, synth, dsb, designs, rates)
    if a.stage in ("all", "bench"):
        for design in designs:
            bench_design(work, synth, design)
    if a.stage in ("all", "table"):
        write_table(a, work, rates)
    return 0


def _seeds(text: str) -> list[int]:
    return [int(s) for s in text.split(",") if s.strip()]


def run_trainings(a, work: Path, synth: Path, dsb: dict | None, designs: tuple, rates: dict) -> None:
    synth_files = {"train": str(synth / "train.json"), "val": str(synth / "val.json")}
    for seed in _seeds(a.seeds):
        for design in designs:
            epochs = max(1, round(a.minutes * 60 * rates["synth"][design] / SYNTH_TRAIN))
            train_run(work, "synth", synth_files, design, seed, epochs, 100)
    if not dsb:
        return
    dsb_images = len(json.loads(Path(dsb["train"]).read_text())["images"])
    for seed in _seeds(a.dsb_seeds):
        for design in designs:
            epochs = max(1, round(a.dsb_minutes * 60 * rates["dsb2018"][design] / dsb_images))
            train_run(work, "dsb2018", dsb, design, seed, epochs, 500)


def write_table(a, work: Path, rates: dict) -> None:
    """Results of this work folder over the committed ones (a rerun of a dataset x design x seed replaces it)."""
    from tinyseg.io import write_json, write_text

    old = committed()
    key = lambda r: (r["dataset"], r["design"], r["seed"])  # noqa: E731
    runs = {key(r): r for r in old.get("runs", [])}
    runs.update({key(r): r for r in (read_json(f) for f in sorted(work.glob("*_s*/result.json")))})
    runs = list(runs.values())
    rates = {**_nested(old.get("rates", {})), **rates}
    benches = {d: read_json(work / f"bench_{d}.json") or old.get("bench", {}).get(d) for d in DESIGNS}
    costs = {d: model_cost(d) for d in DESIGNS}
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    write_json({"rates": rates, "runs": runs, "bench": benches, "machine": machine,
                "cost": {d: {"params": c[0], "gflops": c[1]} for d, c in costs.items()}}, RESULTS)  # fmt: skip
    md = [f"# Mask designs, `nano` at 320 ({machine})", "", *_accuracy_table(runs, rates, costs, a)]
    md += ["", *_latency_table(benches), "", *DECISION]
    write_text("\n".join(md) + "\n", HERE / "results" / "mask_designs.md")
    print("\n".join(md))


def _nested(rates: dict) -> dict:
    """Rates per dataset; the first results file held the synthetic ones alone."""
    return rates if "synth" in rates else {"synth": rates}


def _accuracy_table(runs: list[dict], rates: dict, costs: dict, a) -> list[str]:
    keys = ("mask_ap", "mask_ap50", "mask_ap75", "mask_ap_small", "mask_ap_medium", "mask_ap_large")
    keys += ("boundary_ap", "box_ap")
    head = "| set | design | seed | epochs | " + " | ".join(keys) + " | train img/s | params | GFLOPs |"
    rows = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in sorted(runs, key=lambda r: (r["dataset"], DESIGNS.index(r["design"]), r["seed"])):
        m, (params, gflops) = r["metrics"], costs[r["design"]]
        vals = " | ".join(f"{m[k]:.3f}" if isinstance(m.get(k), float) else "-" for k in keys)
        rows.append(f"| {r['dataset']} | {r['design']} | {r['seed']} | {r['epochs']} | {vals} | "
                    f"{rates[r['dataset']][r['design']]:.1f} | {params / 1e6:.2f} M | {gflops:.2f} |")  # fmt: skip
    budget = f"Budgets: synthetic {a.minutes:g} CPU min, DSB2018 {a.dsb_minutes:g} CPU min (maxDets 500), as epochs"
    return [budget + " from each design's training rate measured on that dataset (train img/s).", "", *rows]


def _latency_table(benches: dict) -> list[str]:
    """One row per design: AP of the exports (INT8 drop against FP32), file sizes, graph median latency (ms)."""
    settings = [(b, p, t) for b in ("onnxruntime", "openvino") for p in ("fp32", "int8") for t in (1, 2)]
    head = "| design | mask AP FP32 | INT8 ORT (drop) | INT8 OpenVINO (drop) | FP32 MB | INT8 MB | "
    head += " | ".join(f"{'ORT' if b == 'onnxruntime' else 'OV'} {p.upper()} {t}t ms" for b, p, t in settings) + " |"
    rows = [head, "|" + "---|" * (head.count("|") - 1)]
    for design, bench in benches.items():
        if not bench:
            continue
        z = bench["zoo"]
        ms = {(r["backend"], r["precision"], r["threads"]): r["graph_median_ms"] for r in bench["latency"]}
        fp32 = z["mask_ap_fp32"]
        drops = [f"{z[k]:.3f} ({z[k] - fp32:+.3f})" for k in ("mask_ap_int8", "mask_ap_ov_int8")]
        cells = " | ".join(f"{ms[k]:.2f}" if k in ms else "-" for k in settings)
        sizes = f"{z['fp32_mb']:.2f} | {z['int8_mb']:.2f}"
        rows.append(f"| {design} | {fp32:.3f} | {' | '.join(drops)} | {sizes} | {cells} |")
    return ["Exports of each design's seed-0 synthetic model (`tinyseg bench`, graph alone, decode included):", "",
            *rows]  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
