"""What full-integer INT8 costs a TFLite model, and what the calibration's activation ranges change: mask AP of the
PyTorch model, its TFLite FP32 split pair, and its INT8 split pair calibrated with the quantizer's default (a moving
average of each image's extremes) and with the full range (the union over the images, tinyseg's choice).

    .venv/bin/python benchmarks/tflite_int8.py [--weights A.pt,B.pt] [--data runs/mask_designs/synth]

Measured on two models trained the demo's way (12 CPU minutes, the two seeds of benchmarks/mask_designs.py), on
the demo validation set (100 images) and on 400 more generated images (seed 7), since one 100-image set moves by
a few tenths of a point under any small change of the model. Calibration: 300 training images, as `tinyseg export`.
Results: benchmarks/results/tflite_int8.{json,md}; exports and evaluations go to runs/tflite_int8.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from common import read_json, tinyseg

HERE = Path(__file__).resolve().parent
SEEDS = "runs/mask_designs/synth_prototypes_s0/best.pt,runs/mask_designs/synth_prototypes_s1/best.pt"
VARIANTS = ("fp32", "moving_average", "full")


def export(weights: str, calib_json: Path, out: Path, variant: str) -> Path:
    from tinyseg.deploy.export.quantize import calibration_images
    from tinyseg.deploy.export.tflite import export_tflite
    from tinyseg.deploy.predict import Segmenter

    path = out / f"{variant}.tflite"
    if not path.is_file():
        seg = Segmenter.load(weights)
        calib = None if variant == "fp32" else calibration_images(str(calib_json), None, seg.imgsz, 300)
        export_tflite(seg, path, None, calib, split=True, ranges=variant)
    return path


def mask_ap(weights: Path | str, val: Path, json_path: Path) -> float:
    if not json_path.is_file():
        tinyseg("eval", "--weights", str(weights), "--val", str(val), "--json", str(json_path))
    return read_json(json_path)["mask_ap"]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", default=SEEDS, help="comma-separated checkpoints")
    p.add_argument("--data", default="runs/mask_designs/synth", help="the demo set: train.json (calibration), val.json")
    p.add_argument("--work", default="runs/tflite_int8")
    a = p.parse_args()
    work, data = Path(a.work), Path(a.data)
    extra = work / "val400"
    if not (extra / "val.json").is_file():
        tinyseg("synth", str(extra), "--train", "1", "--val", "400", "--seed", "7")
    vals = {"demo val (100)": data / "val.json", "generated val (400)": extra / "val.json"}
    rows = []
    for n, weights in enumerate(a.weights.split(",")):
        out = work / f"model{n}"
        out.mkdir(parents=True, exist_ok=True)
        for val_name, val in vals.items():
            tag = val.parent.name
            row = {"weights": weights, "val": val_name, "pytorch": mask_ap(weights, val, out / f"pytorch_{tag}.json")}
            for v in VARIANTS:
                row[v] = mask_ap(export(weights, data / "train.json", out, v), val, out / f"{v}_{tag}.json")
            rows.append(row)
            print(row, flush=True)
    (HERE / "results" / "tflite_int8.json").write_text(json.dumps(rows, indent=1) + "\n")
    (HERE / "results" / "tflite_int8.md").write_text(to_markdown(rows))
    return 0


def to_markdown(rows: list[dict]) -> str:
    lines = [
        "# TFLite INT8 (split pair) against FP32: mask AP",
        "",
        "| model | val set | PyTorch | TFLite FP32 | INT8, moving-average ranges | INT8, full ranges (default) |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        d = {v: f"{r[v]:.3f} ({100 * (r[v] - r['fp32']):+.1f})" for v in VARIANTS[1:]}
        model = Path(r["weights"]).parent.name
        cells = [model, r["val"], f"{r['pytorch']:.3f}", f"{r['fp32']:.3f}", d["moving_average"], d["full"]]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "In brackets: the change against TFLite FP32, in mask AP points. The peak finder keeps one cell per",
        "plateau of the int8 heatmap (models/postprocess.find_peaks); before it did, full ranges lost 1.2 and",
        "1.3 points on the first model (benchmarks/README.md).",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
