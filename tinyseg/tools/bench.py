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

from tinyseg.deploy.runtime import model_file_size
from tinyseg.io import check_writable, write_json, write_text


def worker(model: str, backend: str, threads: int, runs: int, image: str) -> dict:
    """Time predict() (whole pipeline) and run() on the letterboxed image (the graph alone: what is compared
    with other models' graphs) in this process; returns the times (ms) and peak RSS."""
    from tinyseg.data.transforms import letterbox_input
    from tinyseg.deploy.loader import load_predictor
    from tinyseg.io import read_image

    img = read_image(image)
    pred = load_predictor(model, backend, None, threads)
    x = letterbox_input(img, pred.imgsz)[1]
    fns = {"times": lambda: pred.predict(img, conf=0.3), "graph_times": lambda: pred.run(x)}
    stats = {name: [] for name in fns}
    # Both warmed up, then timed in turns: timed one after the other, the first one read slower than in a loop
    # of its own.
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
    cmd = [sys.executable, "-m", "tinyseg.tools.bench", str(model), backend, str(threads), str(runs), image]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode:
        raise RuntimeError(f"benchmark worker failed for {model} ({backend}, {threads} threads):\n{res.stderr[-800:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def run_bench(a) -> dict:
    """`tinyseg bench`: export FP32 and INT8, measure their AP on --val, time every backend x precision x
    threads setting; print the Markdown table and write it (--markdown) and the results (--json)."""
    from tinyseg.deploy.predict import Segmenter

    check_writable(a.out, folder=True)
    for path in (a.markdown, a.json):
        if path:
            check_writable(path)
    seg = Segmenter.load(a.weights)
    if a.imgsz != seg.imgsz:
        print(f"note: the checkpoint was trained at {seg.imgsz}; benchmarking at {a.imgsz}", file=sys.stderr)
        seg.imgsz = a.imgsz
    backends = [b.strip() for b in a.backends.split(",") if b.strip()]
    out = Path(a.out)
    calib = _calibration(a, seg)
    data, image = _timing_image(a, out, calib)
    row = _zoo_row(a, seg)
    models = _export_all(seg, out, calib, a.max_det, [b for b in backends if b in ("openvino", "litert")])
    row["fp32_mb"], row["int8_mb"] = (model_file_size(models[("onnxruntime", p)]) / 1e6 for p in ("fp32", "int8"))
    if data is not None:
        row.update(_accuracy(models, data, a.imgsz, a.max_det))
    threads = [int(t) for t in str(a.threads).split(",")]
    latency, rounds = _timing(a, backends, threads, models, image)
    calibration = f"{_shown(a.calib or a.val or 'generated images')} ({len(calib)} images)"
    result = {"zoo": row, "latency": latency, "image": _shown(image), "runs": a.runs, "rounds": rounds}
    result["calib"] = calibration
    md = to_markdown(result)
    print(md)
    if a.markdown:
        write_text(md + "\n", a.markdown)
    if a.json:
        write_json(result, a.json)
    return result


def _shown(path: str) -> str:
    """A path as results files show it: relative to the working folder when inside it (no machine paths in
    committed results)."""
    p = Path(path)
    try:
        return str(p.resolve().relative_to(Path.cwd().resolve())) if p.exists() else path
    except ValueError:
        return path


def _calibration(a, seg) -> np.ndarray:
    """INT8 calibration images: --calib (the training images: calibrating on the images the AP is measured on
    flatters INT8), else --val, else generated ones."""
    from tinyseg.deploy.export.parity import verify_batch
    from tinyseg.deploy.export.quantize import calibration_images

    if a.calib or a.val:
        return calibration_images(a.calib or a.val, None if a.calib else a.images, a.imgsz, a.calib_num)
    return verify_batch(a.imgsz, min(a.calib_num, 32))


def _timing_image(a, out: Path, calib: np.ndarray):
    """-> (the --val dataset or None, the image file latency is measured on)."""
    if a.val:
        from tinyseg.data.coco import load_coco

        data = load_coco(a.val, a.images)
        return data, str(data.images[0].file)
    from tinyseg.viz import write_rgb

    image = out / "bench_image.png"
    write_rgb(image, calib[0].transpose(1, 2, 0))
    return None, str(image)


def _zoo_row(a, seg) -> dict:
    from tinyseg.models.detector import detect_flops

    m = seg.model
    return {
        "model": Path(a.weights).stem,
        "imgsz": a.imgsz,
        "params_m": sum(p.numel() for p in m.parameters()) / 1e6,
        "gflops": detect_flops(m, a.imgsz, a.max_det) / 1e9,
    }


def _export_all(seg, out: Path, calib: np.ndarray, max_det: int, extra: list[str]) -> dict[tuple[str, str], Path]:
    """ONNX FP32 / INT8 always; OpenVINO and LiteRT when their backends are benchmarked (LiteRT INT8: the split
    pair, a full-integer network and the float decode tail: what an NPU runs)."""
    from tinyseg.deploy.export.onnx import export_onnx
    from tinyseg.deploy.export.openvino import export_openvino
    from tinyseg.deploy.export.quantize import quantize_onnx, quantize_openvino

    print("exporting ...", file=sys.stderr)
    fp32 = export_onnx(seg, out / "model_fp32.onnx", max_det)
    models = {
        ("onnxruntime", "fp32"): fp32,
        ("onnxruntime", "int8"): quantize_onnx(fp32, out / "model_int8.onnx", calib),
    }
    if "openvino" in extra:
        models[("openvino", "fp32")] = export_openvino(fp32, out / "model_fp32.xml")
        models[("openvino", "int8")] = quantize_openvino(fp32, out / "model_int8.xml", calib)
    if "litert" in extra:
        from tinyseg.deploy.export.tflite import export_tflite

        models[("litert", "fp32")] = export_tflite(seg, out / "model_fp32.tflite", max_det)
        models[("litert", "int8")] = export_tflite(seg, out / "model_int8.tflite", max_det, calib, split=True)
    return models


def _accuracy(models: dict, data, imgsz: int, max_det: int) -> dict:
    """Mask / box AP of the ONNX FP32 and INT8 and the OpenVINO INT8 models (OpenVINO FP32: the same graph)."""
    from tinyseg.data.dataset import CocoDataset
    from tinyseg.deploy.runtime import EdgeSegmenter
    from tinyseg.evaluation import evaluate

    ds, row = CocoDataset(data, imgsz), {}
    for key, label in (
        (("onnxruntime", "fp32"), "fp32"),
        (("onnxruntime", "int8"), "int8"),
        (("openvino", "int8"), "ov_int8"),
        (("litert", "fp32"), "tflite_fp32"),
        (("litert", "int8"), "tflite_int8"),
    ):
        if key in models:
            print(f"evaluating {models[key].name} ...", file=sys.stderr)
            met, _ = evaluate(EdgeSegmenter(models[key], key[0]).run, ds, max_det=max_det, batch=1, show_progress=False)
            row[f"mask_ap_{label}"], row[f"box_ap_{label}"] = met["mask_ap"], met["box_ap"]
    return row


def _timing(a, backends: list[str], threads: list[int], models: dict, image: str) -> tuple[list[dict], int]:
    """The settings take turns, `rounds` times, each a fresh process: a machine that slows down for a while
    (a shared VM does) then slows every setting alike instead of whichever happened to run then."""
    settings = [
        (backend, prec, t, a.weights if backend == "torch" else models[(backend, prec)])
        for backend in backends
        for prec in ("fp32", "int8")
        if (backend, prec) in models or (backend == "torch" and prec == "fp32")
        for t in threads
    ]
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
    return latency, rounds


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
    if "mask_ap_tflite_int8" in z:
        lines += [
            "",
            f"LiteRT: FP32 mask AP {z['mask_ap_tflite_fp32']:.3f} (box {z['box_ap_tflite_fp32']:.3f}); full-integer "
            f"INT8 (split: int8 network, float decode tail) mask AP {z['mask_ap_tflite_int8']:.3f} "
            f"(box {z['box_ap_tflite_int8']:.3f}).",
        ]
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
