"""The `tinyseg` command line's arguments: one function per command; cli.COMMANDS runs them."""

from __future__ import annotations

import argparse
import math

BACKENDS = ["auto", "torch", "onnxruntime", "openvino", "litert"]
OUTSIDE_HELP = "read images a file_name places outside the image folder ('../x.png', absolute paths)"


def count(lo: int = 1, hi: int = 10**6):
    """An argparse type: an integer in lo..hi (argparse turns the ValueError into a one-line usage error)."""

    def parse(text: str) -> int:
        v = int(text)
        if not lo <= v <= hi:
            raise ValueError
        return v

    parse.__name__ = f"integer in {lo}..{hi}"
    return parse


def fraction(text: str) -> float:
    """An argparse type: a number in [0, 1]."""
    v = float(text)
    if not 0 <= v <= 1:
        raise ValueError
    return v


fraction.__name__ = "number in [0, 1]"


def minutes(text: str) -> float:
    """An argparse type: a finite number of minutes > 0."""
    v = float(text)
    if not (v > 0 and math.isfinite(v)):
        raise ValueError
    return v


minutes.__name__ = "number of minutes > 0"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tinyseg", description="Tiny real-time instance segmentation.")
    sub = p.add_subparsers(dest="command", required=True)
    for add in (_synth, _show, _convert, _train, _eval, _predict, _export, _bench):
        add(sub)
    return p


def _synth(sub) -> None:
    s = sub.add_parser("synth", help="generate a synthetic dataset (COCO JSON + PNGs)")
    s.add_argument("out_dir")
    s.add_argument(
        "--style",
        choices=["shapes", "photo"],
        default="shapes",
        help="shapes: the demo's six shapes (default); photo: photo-like scenes with left/right classes",
    )
    s.add_argument("--train", type=count(0), default=1000, help="training images (default 1000)")
    s.add_argument("--val", type=count(0), default=100, help="validation images (default 100)")
    s.add_argument("--size", type=count(32, 4096), default=320, help="image side in pixels (default 320)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--workers", type=count(1, 64), default=2, help="processes (default 2)")


def _show(sub) -> None:
    s = sub.add_parser("show", help="render ground-truth overlays of a COCO dataset to PNGs")
    s.add_argument("--data", required=True, help="COCO instances JSON")
    s.add_argument("--images", help="image folder (default: the JSON's folder)")
    s.add_argument("--out", required=True, help="output folder for the PNGs")
    s.add_argument("--num", type=count(1), default=16, help="how many images (default 16)")
    s.add_argument("--augment", action="store_true", help="apply the training augmentation first")
    s.add_argument("--allow-outside-images", action="store_true", help=OUTSIDE_HELP)
    s.add_argument("--imgsz", type=count(32, 4096), default=320, help="network input size for --augment")
    s.add_argument("--seed", type=int, default=0)


def _convert(sub) -> None:
    s = sub.add_parser("convert", help="convert a dataset: COCO JSON <-> YOLO-seg (data.yaml + images/ + labels/)")
    src = s.add_mutually_exclusive_group(required=True)
    src.add_argument("--coco", metavar="ANN.json", help="a COCO instances JSON to convert")
    src.add_argument("--yolo", metavar="data.yaml", help="a YOLO-seg data.yaml to convert")
    s.add_argument("--to-yolo", metavar="DIR", help="write a YOLO-seg dataset here (with --coco)")
    s.add_argument("--to-coco", metavar="OUT.json", help="write a COCO JSON here, images beside it (with --yolo)")
    s.add_argument("--split", help="split name (default: the JSON's name, e.g. train; with --yolo: train)")
    s.add_argument("--images", help="image folder of --coco (default: the JSON's folder)")
    s.add_argument("--allow-outside-images", action="store_true", help=OUTSIDE_HELP)


def _train(sub) -> None:
    s = sub.add_parser("train", help="train a model")
    s.add_argument("--config", help="YAML config (model/data/train sections); flags below override it")
    s.add_argument("--train", help="training COCO JSON")
    s.add_argument("--val", help="validation COCO JSON")
    s.add_argument("--data", metavar="data.yaml", help="a YOLO-seg dataset instead of --train/--val (its splits)")
    s.add_argument("--images", help="image folder for both JSONs (default: each JSON's folder)")
    s.add_argument("--model", help="preset: nano (default), small, or medium (for a GPU, at --imgsz 640)")
    s.add_argument("--imgsz", type=count(32, 4096), help="network input size, a multiple of 32 (default 320)")
    g = s.add_mutually_exclusive_group()
    g.add_argument("--epochs", type=count(1))
    g.add_argument("--time", type=minutes, help="wall-clock budget in minutes (the LR schedule is fitted to it)")
    s.add_argument("--batch", type=count(1, 4096))
    s.add_argument("--out", help="run folder (default runs/train)")
    s.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last.pt")
    s.add_argument("--device", help="cpu or cuda")
    s.add_argument("--workers", type=count(0, 64), help="DataLoader workers (default 1)")
    s.add_argument("--seed", type=int)
    s.add_argument("--allow-outside-images", action="store_true", help=OUTSIDE_HELP)
    s.add_argument("--set", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. train.lr=0.002")


def _eval(sub) -> None:
    s = sub.add_parser("eval", help="COCO mask and box AP of a checkpoint or an exported model")
    s.add_argument("--weights", required=True, help="CKPT.pt, MODEL.onnx, MODEL.xml or MODEL.tflite")
    s.add_argument("--backend", default="auto", choices=BACKENDS)
    s.add_argument("--threads", type=count(1, 256))
    s.add_argument("--delegate", metavar="LIB.so", help="LiteRT delegate library for .tflite (e.g. an NPU's)")
    s.add_argument("--val", required=True, help="COCO JSON with ground truth, or a YOLO-seg data.yaml")
    s.add_argument("--split", default="val", help="the data.yaml split to evaluate (default val)")
    s.add_argument("--images")
    s.add_argument("--allow-outside-images", action="store_true", help=OUTSIDE_HELP)
    s.add_argument("--imgsz", type=count(32, 4096))
    s.add_argument(
        "--max-det", type=count(1, 10000), default=100, help="detections per image and COCO maxDets (dense: 500)"
    )
    s.add_argument("--conf", type=fraction, default=0.02, help="score threshold (default 0.02)")
    s.add_argument("--device", help="cpu|cuda (checkpoints) or CPU|GPU|NPU (OpenVINO)")
    s.add_argument("--json", help="write the metrics here")
    s.add_argument(
        "--evaluator",
        default="auto",
        choices=["auto", "faster", "pycocotools"],
        help="faster-coco-eval (auto: when installed; adds boundary AP) or pycocotools, the reference",
    )
    s.add_argument("--results", help="write the COCO results JSON here")
    s.add_argument("--report", metavar="DIR", help="write an HTML report (DIR/index.html): curves, errors, galleries")


def _predict(sub) -> None:
    s = sub.add_parser("predict", help="predict images, a video or a camera; write overlays")
    s.add_argument("--weights", required=True, help="CKPT.pt, MODEL.onnx, MODEL.xml or MODEL.tflite")
    s.add_argument("--source", required=True, help="an image, a folder of images, a video file or a camera index")
    s.add_argument("--out", default="runs/predict")
    s.add_argument("--conf", type=fraction, default=0.3, help="score threshold (default 0.3)")
    s.add_argument("--backend", default="auto", choices=BACKENDS)
    s.add_argument("--device", help="cpu|cuda (checkpoints) or CPU|GPU|NPU (OpenVINO)")
    s.add_argument("--threads", type=count(1, 256), help="CPU threads for inference")
    s.add_argument("--delegate", metavar="LIB.so", help="LiteRT delegate library for .tflite (e.g. an NPU's)")
    s.add_argument("--show", action="store_true", help="open a window (video/camera)")
    s.add_argument("--save-video", metavar="OUT.mp4", help="write the annotated video (video/camera)")
    s.add_argument("--max-frames", type=count(1, 10**9), help="stop after this many frames (video/camera)")
    s.add_argument("--json", help="also write COCO results here (images), with the dataset's category ids")
    s.add_argument("--format", choices=["rle", "polygons"], default="rle", help="masks in --json (default rle)")
    s.add_argument("--save-txt", action="store_true", help="also write YOLO-seg labels to OUT/labels/NAME.txt")


def _export(sub) -> None:
    s = sub.add_parser("export", help="export a checkpoint to ONNX, OpenVINO or LiteRT/TFLite (FP32, FP16, INT8)")
    s.add_argument("--weights", required=True)
    s.add_argument("--format", required=True, choices=["onnx", "openvino", "tflite"])
    s.add_argument("--half", action="store_true", help="OpenVINO: FP16-compressed weights (NCS2)")
    s.add_argument("--int8", action="store_true", help="INT8 post-training quantization (needs --calib)")
    s.add_argument("--calib", metavar="ANN.json|DIR", help="calibration images: a COCO JSON or an image folder")
    s.add_argument("--images", help="image folder for --calib JSON")
    s.add_argument("--calib-num", type=count(1, 100000), default=300)
    s.add_argument("--max-det", type=count(1, 10000), help="K detections in the graph (default: the checkpoint's)")
    s.add_argument(
        "--split",
        action="store_true",
        help="tflite: the network (NPU ops only) and the decode tail as two graphs, OUT and OUT.tail.tflite",
    )
    s.add_argument("--out", help="output path (default: next to the checkpoint)")


def _bench(sub) -> None:
    s = sub.add_parser("bench", help="model-zoo row: accuracy, size, latency and memory per backend")
    s.add_argument("--weights", required=True)
    s.add_argument("--val", help="COCO JSON for mask/box AP (FP32 and INT8)")
    s.add_argument("--images")
    s.add_argument("--imgsz", type=count(32, 4096), default=320)
    s.add_argument(
        "--backends", default="onnxruntime,openvino", help="comma list: torch,onnxruntime,openvino,litert (tflite)"
    )
    s.add_argument("--threads", default="1,2", help="comma list of thread counts")
    s.add_argument("--runs", type=count(1), default=50, help="timed runs per setting (after warm-up)")
    s.add_argument(
        "--rounds",
        type=count(1, 1000),
        default=3,
        help="the settings take turns this many times, the runs split among them",
    )
    s.add_argument(
        "--calib", help="COCO JSON or image folder for INT8 calibration, e.g. the training set (default: --val)"
    )
    s.add_argument(
        "--calib-num", type=count(1, 100000), default=300, help="calibration images (default 300, as export)"
    )
    s.add_argument("--max-det", type=count(1, 10000), default=100)
    s.add_argument("--out", default="runs/bench", help="folder for the exported models")
    s.add_argument("--markdown", help="write the table as Markdown here")
    s.add_argument("--json", help="write the results as JSON here")
