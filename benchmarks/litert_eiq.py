"""LiteRT (TFLite) beside ONNX Runtime and OpenVINO, and the row NXP's eIQ model zoo would print for us.

    .venv/bin/python benchmarks/litert_eiq.py [--weights runs/demo/train/best.pt] [--data runs/demo/data]

Runs `tinyseg bench` with the onnxruntime, openvino and litert backends at 1 and 2 threads (LiteRT: XNNPACK on
the CPU; INT8 = the split pair, a full-integer network and its float decode tail), evaluates the single-graph
INT8 export too (int8 network, float tail), and writes benchmarks/results/litert_eiq.{json,md}: the eIQ columns
(model, mAP FP32, mAP INT8, input size, OPS, params, FP32 size, INT8 size) with YOLACT-Edge's published row beside
ours, plus latency here. Needs the machine to itself (latency).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

from common import tinyseg

HERE = Path(__file__).resolve().parent
# NXP eIQ model zoo, instance segmentation (from the issue): YOLACT-Edge MobileNetV2, COCO, 550x550.
YOLACT_EDGE = {"model": "YOLACT-Edge MobileNetV2 (eIQ, COCO)", "map_fp32": "0.21", "map_int8": "-", "input": "550x550",
               "ops": "17 GOPS", "params": "9 M", "fp32": "32 MB", "int8": "8.5 MB",
               "latency": "~200 ms i.MX 8M Plus NPU; 2.2 s 4x Cortex-A53"}  # fmt: skip
# The same YOLACT-Edge row's CPU figure gives an effective rate for a Cortex-A53 quad core running TFLite:
# 17 GOPS in 2.2 s. Our estimate for that board scales it by our graph's operations (a first-order estimate:
# it assumes both graphs reach the same fraction of the CPU's peak).
A53_GOPS_PER_S = 17 / 2.2


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", default="runs/demo/train/best.pt")
    p.add_argument("--data", default="runs/demo/data", help="folder with train.json (calibration) and val.json")
    p.add_argument("--work", default="runs/litert_eiq")
    p.add_argument("--runs", default="50")
    a = p.parse_args()
    work, data = Path(a.work), Path(a.data)
    work.mkdir(parents=True, exist_ok=True)
    bench = work / "bench.json"
    tinyseg("bench", "--weights", a.weights, "--val", str(data / "val.json"), "--calib", str(data / "train.json"),
            "--backends", "onnxruntime,openvino,litert", "--threads", "1,2", "--runs", a.runs, "--out", str(work),
            "--json", str(bench), "--markdown", str(work / "bench.md"))  # fmt: skip
    single = work / "model_int8_single.tflite"
    tinyseg("export", "--weights", a.weights, "--format", "tflite", "--int8", "--calib", str(data / "train.json"),
            "--out", str(single))  # fmt: skip
    tinyseg("eval", "--weights", str(single), "--val", str(data / "val.json"), "--json", str(work / "single.json"))
    result = json.loads(bench.read_text())
    result["single_int8"] = json.loads((work / "single.json").read_text())
    result["single_int8_mb"] = single.stat().st_size / 1e6
    result["machine"] = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    out = HERE / "results"
    (out / "litert_eiq.json").write_text(json.dumps(result, indent=1) + "\n")
    md = to_markdown(result, work)
    (out / "litert_eiq.md").write_text(md + "\n")
    print(md)
    return 0


def to_markdown(r: dict, work: Path) -> str:
    z = r["zoo"]
    ms = {(x["backend"], x["precision"], x["threads"]): x["graph_median_ms"] for x in r["latency"]}
    tfl_fp32 = (work / "model_fp32.tflite").stat().st_size / 1e6
    tfl_int8 = sum(f.stat().st_size for f in work.glob("model_int8*.tflite") if "single" not in f.name) / 1e6

    def mean_map(prefix: str) -> str:
        return f"{(z[f'mask_ap_{prefix}'] + z[f'box_ap_{prefix}']) / 2:.3f}"

    gops = z["gflops"]
    ours = {"model": f"tinyseg nano ({z['model']}, synthetic val)", "map_fp32": mean_map("tflite_fp32"),
            "map_int8": mean_map("tflite_int8"), "input": f"{z['imgsz']}x{z['imgsz']}", "ops": f"{gops:.2f} GOPS",
            "params": f"{z['params_m']:.2f} M", "fp32": f"{tfl_fp32:.2f} MB", "int8": f"{tfl_int8:.2f} MB",
            "latency": f"{ms[('litert', 'int8', 2)]:.1f} ms here (XNNPACK, 2 threads); "
                       f"~{gops / A53_GOPS_PER_S * 1000:.0f} ms est. 4x Cortex-A53"}  # fmt: skip
    cols = ("model", "map_fp32", "map_int8", "input", "ops", "params", "fp32", "int8", "latency")
    lines = [
        f"# LiteRT export, eIQ model-zoo columns ({r['machine']})",
        "",
        "| model | mAP FP32 | mAP INT8 | input size | OPS | params | FP32 size | INT8 size | latency |",
        "|---|---|---|---|---|---|---|---|---|",
        *("| " + " | ".join(row[c] for c in cols) + " |" for row in (YOLACT_EDGE, ours)),
        "",
        "mAP = mean of mask AP and box AP (the eIQ column); ours on the synthetic val set, YOLACT-Edge's on COCO:",
        "the rows compare size, operations and format, not accuracy.",
        "",
        "| LiteRT model | mask AP | box AP | file |",
        "|---|---|---|---|",
        f"| FP32 (one graph) | {z['mask_ap_tflite_fp32']:.3f} | {z['box_ap_tflite_fp32']:.3f} | {tfl_fp32:.2f} MB |",
        f"| INT8 split (full-integer network + float tail) | {z['mask_ap_tflite_int8']:.3f} | "
        f"{z['box_ap_tflite_int8']:.3f} | {tfl_int8:.2f} MB |",
        f"| INT8 one graph (int8 network, float decode tail) | {r['single_int8']['mask_ap']:.3f} | "
        f"{r['single_int8']['box_ap']:.3f} | {r['single_int8_mb']:.2f} MB |",
        f"| ONNX FP32 (reference) | {z['mask_ap_fp32']:.3f} | {z['box_ap_fp32']:.3f} | {z['fp32_mb']:.2f} MB |",
        "",
        "Graph latency here, median ms (decode included):",
        "",
        "| backend | FP32 1 thread | FP32 2 threads | INT8 1 thread | INT8 2 threads |",
        "|---|---|---|---|---|",
    ]
    for b in ("onnxruntime", "openvino", "litert"):
        cells = " | ".join(f"{ms[(b, p, t)]:.2f}" if (b, p, t) in ms else "-" for p in ("fp32", "int8") for t in (1, 2))
        lines.append(f"| {b} | {cells} |")
    lines += ["", f"Cortex-A53 estimate: our {gops:.2f} GOPS at YOLACT-Edge's measured {A53_GOPS_PER_S:.1f} GOPS/s."]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
