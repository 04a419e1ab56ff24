"""`tinyseg bench`: the model-zoo row edge users read (NXP eIQ model zoo columns) plus latency and memory.

Accuracy: mask/box AP of the FP32 and INT8 exports on --val, with the same evaluator as `tinyseg eval`.
Latency: whole-pipeline `predict()` on one image (letterbox in, graph, boxes and masks back at the original
size), median and p90 over warm runs; each backend x precision x thread count runs in its own process, so
thread settings cannot leak and the process's peak resident memory is that setting's peak memory.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def _file_size(path: Path) -> int:
    return path.stat().st_size + (path.with_suffix(".bin").stat().st_size if path.suffix == ".xml" else 0)


def worker(model: str, backend: str, threads: int, runs: int, image: str) -> dict:
    """Time predict() (whole pipeline) and run() on the letterboxed image (the graph alone: what is compared
    with other models' graphs) in this process; returns the times (ms) and peak RSS."""
    from tinyseg.cli import load_predictor
    from tinyseg.data.io import read_image
    from tinyseg.data.transforms import letterbox_input

    img = read_image(image)
    pred = load_predictor(model, backend, None, threads)
    x = letterbox_input(img, pred.imgsz)[1]
    fns = {"times": lambda: pred.predict(img, conf=0.3), "graph_times": lambda: pred.run(x)}
    stats = {name: [] for name in fns}
    # Both warmed up, then timed in turns. Timed one after the other (the pipeline first, 12 warm-up runs),
    # ONNX Runtime's whole pipeline measured 11.3 ms in a bench run, against 9.7-10.1 ms in a loop of its own
    # (graph 8.5 + letterbox 0.4 + masks to the original size 1.0).
    for _ in range(max(10, runs // 5)):
        for fn in fns.values():
            fn()
    for _ in range(runs):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            stats[name].append((time.perf_counter() - t) * 1000)
    return {**stats, "peak_mb": peak_rss_mb()}


def peak_rss_mb() -> float:
    """This process's resident-memory high-water mark. VmHWM, not ru_maxrss: on Linux ru_maxrss survives
    exec, so a worker started from a big parent would report the parent's peak."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _measure(model: Path | str, backend: str, threads: int, runs: int, image: str) -> dict:
    cmd = [sys.executable, "-m", "tinyseg.bench", str(model), backend, str(threads), str(runs), image]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode:
        raise RuntimeError(f"benchmark worker failed for {model} ({backend}, {threads} threads):\n{res.stderr[-800:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def run_bench(a) -> dict:
    from tinyseg.data.coco import CocoDataset, load_coco
    from tinyseg.engine import evaluate
    from tinyseg.export import calibration_images, export_onnx, export_openvino, quantize_onnx, quantize_openvino
    from tinyseg.models.detector import detect_flops
    from tinyseg.predict import Segmenter
    from tinyseg.runtime import EdgeSegmenter

    seg = Segmenter.load(a.weights)
    if a.imgsz != seg.imgsz:
        print(f"note: the checkpoint was trained at {seg.imgsz}; benchmarking at {a.imgsz}", file=sys.stderr)
        seg.imgsz = a.imgsz
    backends = [b.strip() for b in a.backends.split(",") if b.strip()]
    threads = [int(t) for t in str(a.threads).split(",")]
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    m = seg.model
    row: dict = {
        "model": Path(a.weights).stem,
        "imgsz": a.imgsz,
        "params_m": sum(p.numel() for p in m.parameters()) / 1e6,
        "gflops": detect_flops(m, a.imgsz, a.max_det) / 1e9,
    }

    # INT8 calibration images: --calib (the training images: calibrating on the images the AP is measured on
    # flatters INT8), else --val, else generated ones.
    if a.calib or a.val:
        calib = calibration_images(a.calib or a.val, None if a.calib else a.images, a.imgsz, a.calib_num)
    else:
        from tinyseg.export import _verify_batch

        calib = _verify_batch(seg, min(a.calib_num, 32))
    if a.val:
        data = load_coco(a.val, a.images)
        image = str(data.images[0].file)
    else:
        import cv2

        image = str(out / "bench_image.png")
        cv2.imwrite(image, calib[0].transpose(1, 2, 0)[:, :, ::-1])
        data = None
    models: dict[tuple[str, str], Path] = {}
    print("exporting ...", file=sys.stderr)
    models[("onnxruntime", "fp32")] = export_onnx(seg, out / "model_fp32.onnx", a.max_det)
    models[("onnxruntime", "int8")] = quantize_onnx(models[("onnxruntime", "fp32")], out / "model_int8.onnx", calib)
    if "openvino" in backends:
        fp32 = models[("onnxruntime", "fp32")]
        models[("openvino", "fp32")] = export_openvino(fp32, out / "model_fp32.xml")
        models[("openvino", "int8")] = quantize_openvino(fp32, out / "model_int8.xml", calib)
    row["fp32_mb"] = _file_size(models[("onnxruntime", "fp32")]) / 1e6
    row["int8_mb"] = _file_size(models[("onnxruntime", "int8")]) / 1e6

    if data is not None:
        ds = CocoDataset(data, a.imgsz, train=False)
        for key, label in (
            (("onnxruntime", "fp32"), "fp32"),
            (("onnxruntime", "int8"), "int8"),
            (("openvino", "int8"), "ov_int8"),
        ):
            if key not in models:
                continue
            print(f"evaluating {models[key].name} ...", file=sys.stderr)
            edge = EdgeSegmenter(models[key], key[0])
            met, _ = evaluate(edge.run, ds, max_det=a.max_det, batch=1, show_progress=False)
            row[f"mask_ap_{label}"], row[f"box_ap_{label}"] = met["mask_ap"], met["box_ap"]

    settings = [
        (backend, prec, t, a.weights if backend == "torch" else models[(backend, prec)])
        for backend in backends
        for prec in ("fp32", "int8")
        if (backend, prec) in models or (backend == "torch" and prec == "fp32")
        for t in threads
    ]
    # The settings take turns, `rounds` times, each a fresh process: a machine that slows down for a while
    # (a shared VM does) then slows every setting alike instead of whichever happened to run then.
    rounds = max(1, min(a.rounds, a.runs))
    samples: dict[int, list[dict]] = {i: [] for i in range(len(settings))}
    for r in range(rounds):
        for i, (backend, prec, t, model) in enumerate(settings):
            print(f"timing {backend} {prec} {t} thread(s), round {r + 1}/{rounds} ...", file=sys.stderr)
            samples[i].append(_measure(model, backend, t, a.runs // rounds, image))
    latency = []
    for i, (backend, prec, t, _) in enumerate(settings):
        stats = {}
        for name in ("", "graph_"):
            times = [x for s in samples[i] for x in s[f"{name}times"]]
            stats[f"{name}median_ms"] = float(np.median(times))
            stats[f"{name}p90_ms"] = float(np.percentile(times, 90))
        peak = max(s["peak_mb"] for s in samples[i])
        latency.append({"backend": backend, "precision": prec, "threads": t, **stats, "peak_mb": peak})
    calibration = f"{a.calib or a.val or 'generated images'} ({len(calib)} images)"
    result = {"zoo": row, "latency": latency, "image": image, "runs": a.runs, "rounds": rounds, "calib": calibration}
    md = to_markdown(result)
    print(md)
    if a.markdown:
        Path(a.markdown).parent.mkdir(parents=True, exist_ok=True)
        Path(a.markdown).write_text(md + "\n")
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(result, indent=1) + "\n")
    return result


def to_markdown(result: dict) -> str:
    z = result["zoo"]

    def ap(k):
        return f"{z[k]:.3f}" if k in z else "-"

    lines = [
        "| model | input | mask AP FP32 | box AP FP32 | mask AP INT8 | box AP INT8 | GFLOPs | params "
        "| FP32 size | INT8 size |",
        "|---|---|---|---|---|---|---|---|---|---|",
        f"| {z['model']} | {z['imgsz']}x{z['imgsz']} | {ap('mask_ap_fp32')} | {ap('box_ap_fp32')} | "
        f"{ap('mask_ap_int8')} | {ap('box_ap_int8')} | {z['gflops']:.2f} | {z['params_m']:.2f} M | "
        f"{z['fp32_mb']:.2f} MB | {z['int8_mb']:.2f} MB |",
        "",
        "| backend | precision | threads | latency median (ms) | latency p90 (ms) | graph median (ms) "
        "| graph p90 (ms) | peak memory (MB) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in result["latency"]:
        lines.append(
            f"| {r['backend']} | {r['precision']} | {r['threads']} | {r['median_ms']:.2f} | "
            f"{r['p90_ms']:.2f} | {r['graph_median_ms']:.2f} | {r['graph_p90_ms']:.2f} | {r['peak_mb']:.0f} |"
        )
    if "calib" in result:
        lines += ["", f"INT8 calibrated on {result['calib']}."]
    if "mask_ap_ov_int8" in z:
        lines += ["", f"OpenVINO INT8 (NNCF): mask AP {z['mask_ap_ov_int8']:.3f}, box AP {z['box_ap_ov_int8']:.3f}."]
    graph = {(r["backend"], r["precision"], r["threads"]): r["graph_median_ms"] for r in result["latency"]}
    speedups = [
        f"{b} {t} thread(s) {ms / graph[(b, 'int8', t)]:.2f}x"
        for (b, p, t), ms in graph.items()
        if p == "fp32" and (b, "int8", t) in graph
    ]
    if speedups:
        lines += ["", "INT8 speed-up of the graph (FP32 median / INT8 median): " + ", ".join(speedups) + "."]
    lines += [
        "",
        f"Latency: whole pipeline (letterbox, graph, masks back at the original size, conf 0.3) and the graph "
        f"alone (decode included) on {result['image']}, {result['runs']} warm runs each, in "
        f"{result.get('rounds', 1)} round(s) of one process per row, the rows taking turns.",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    print(json.dumps(worker(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5])))
