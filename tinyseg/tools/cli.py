"""Command line: `tinyseg synth | show | train | eval | predict`. Run `tinyseg COMMAND -h` for options."""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

from tinyseg.config import Config, apply_overrides, preset
from tinyseg.deploy.loader import is_exported, load_predictor
from tinyseg.errors import ConfigError, DataError, TinysegError, UsageError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}
VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v"}


def cmd_synth(a: argparse.Namespace) -> None:
    from tinyseg.data.synthetic import generate

    t = time.perf_counter()
    tr, va = generate(a.out_dir, a.train, a.val, a.size, a.seed, progress=True, workers=a.workers)
    dt = time.perf_counter() - t
    print(f"wrote {tr} and {va} ({a.train + a.val} images in {dt:.1f} s, {(a.train + a.val) / dt:.0f} images/s)")


def cmd_show(a: argparse.Namespace) -> None:
    from tqdm import tqdm

    from tinyseg.data.coco import load_coco
    from tinyseg.viz import write_rgb

    data = load_coco(a.data, a.images)
    n = min(a.num, len(data.images))
    for i in tqdm(range(n), desc="render", unit="img"):
        write_rgb(Path(a.out) / f"{data.images[i].file.stem}.png", _ground_truth_overlay(data, i, a))
    print(f"wrote {n} overlays to {a.out}/")


def _ground_truth_overlay(data, i: int, a: argparse.Namespace):
    """Image i with its annotations drawn, as stored or (--augment) as training sees it."""
    import numpy as np

    from tinyseg.config import DataConfig
    from tinyseg.data.coco import decode_masks
    from tinyseg.data.dataset import CocoDataset, build_training_samples
    from tinyseg.data.transforms import masks_to_boxes
    from tinyseg.io import read_image
    from tinyseg.viz import draw_instances

    if a.augment:
        training = build_training_samples(DataConfig(imgsz=a.imgsz, max_mask_instances=10**6), mask_stride=1)
        img_t, t = CocoDataset(data, a.imgsz, training, a.seed)[i]
        img, masks, labels, boxes = img_t.permute(1, 2, 0).numpy(), t["masks"].numpy() > 127, t["labels"], t["boxes"]
    else:
        rec = data.images[i]
        img, masks = read_image(rec.file), decode_masks(rec.rles, rec.height, rec.width).astype(bool)
        labels, boxes = np.asarray(rec.labels), masks_to_boxes(masks)
    return draw_instances(img, np.asarray(boxes), np.asarray(labels), masks, data.class_names)


def _build_config(a: argparse.Namespace) -> Config:
    cfg = Config.load(a.config) if a.config else Config()
    if a.model:
        cfg.model = preset(a.model)
    for key, value in (
        ("train", a.train),
        ("val", a.val),
        ("train_images", a.images),
        ("val_images", a.images),
        ("imgsz", a.imgsz),
    ):
        if value is not None:
            setattr(cfg.data, key, value)
    for key, value in (
        ("epochs", a.epochs),
        ("time", a.time),
        ("batch", a.batch),
        ("out", a.out),
        ("device", a.device),
        ("workers", a.workers),
        ("seed", a.seed),
    ):
        if value is not None:
            setattr(cfg.train, key, value)
    apply_overrides(cfg, a.set or [])
    if not a.resume and not cfg.data.train:
        raise ConfigError("no training data: give --train TRAIN.json (or data.train in --config)")
    return cfg


def cmd_train(a: argparse.Namespace) -> None:
    from tinyseg.training.trainer import train

    cfg = None if a.resume else _build_config(a)
    summary = train(cfg or Config(), resume=a.resume)
    m = summary.get("metrics")
    print(f"done: {summary['epochs']} epochs, {summary['steps']} steps, {summary['minutes']:.1f} min")
    if m:
        print(f"val mask AP {m['mask_ap']:.3f}  box AP {m['box_ap']:.3f}")
    print(f"checkpoints: {summary['best']} {summary['last']}; metrics.csv and curves.png in {summary['out']}")


def cmd_eval(a: argparse.Namespace) -> None:
    from tinyseg.data.coco import load_coco
    from tinyseg.data.dataset import CocoDataset
    from tinyseg.evaluation import evaluate, format_table
    from tinyseg.io import write_json

    pred = load_predictor(a.weights, a.backend, a.device, a.threads)
    data = load_coco(a.val, a.images)
    if data.class_names != pred.class_names:
        warnings.warn(
            f"{a.val}: categories {data.class_names} differ from the model's {pred.class_names}", stacklevel=1
        )
    exported = is_exported(a.weights)
    if a.imgsz and a.imgsz != pred.imgsz and exported:
        raise UsageError(f"{a.weights}: exported for {pred.imgsz}x{pred.imgsz}; --imgsz {a.imgsz} needs a new export")
    ds = CocoDataset(data, a.imgsz or pred.imgsz)
    run = pred.run if exported else (lambda x: pred.run(x, a.max_det))  # a graph keeps at most its max_det
    metrics, results = evaluate(run, ds, max_det=a.max_det, conf=a.conf, batch=1 if exported else 8)
    metrics["weights"] = str(a.weights)
    print(format_table(metrics))
    for obj, path in ((metrics, a.json), (results, a.results)):
        if path:
            write_json(obj, path)
            print(f"wrote {path}")


def list_images(source: str) -> list[Path]:
    p = Path(source)
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise DataError(f"{p}: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in this folder")
        return files
    if p.is_file():
        return [p]
    raise DataError(f"{p}: no such file or folder")


def cmd_predict(a: argparse.Namespace) -> None:
    pred = load_predictor(a.weights, a.backend, a.device, a.threads)
    if a.source.isdigit() or Path(a.source).suffix.lower() in VIDEO_SUFFIXES:
        from tinyseg.tools.video import run_video

        run_video(pred, a.source, a.conf, a.show, a.save_video, a.max_frames)
        return
    if a.show or a.save_video:
        raise UsageError("--show and --save-video are for a video file or a camera index")
    from tqdm import tqdm

    files = list_images(a.source)
    results, total, skipped = [], 0, 0
    for image_id, f in enumerate(tqdm(files, desc="predict", unit="img"), 1):
        try:
            total += _predict_file(pred, f, Path(a.out), a.conf, results if a.json else None, image_id)
        except DataError as e:
            print(f"skipped: {e}", file=sys.stderr)
            skipped += 1
    if a.json:
        from tinyseg.io import write_json

        write_json(results, a.json)
    print(
        f"{total} instances in {len(files) - skipped} images; overlays in {a.out}/"
        + (f", results in {a.json}" if a.json else "")
        + (f"; {skipped} unreadable files skipped" if skipped else "")
    )


def _predict_file(pred, file: Path, out: Path, conf: float, results: list | None, image_id: int) -> int:
    """Predict one image file, write its overlay and (results) append its COCO results; -> detections."""
    from tinyseg.io import read_image
    from tinyseg.viz import draw_instances, write_rgb

    img = read_image(file)
    det = pred.predict(img, conf=conf)
    write_rgb(
        out / f"{file.stem}.png", draw_instances(img, det.boxes, det.classes, det.masks, det.class_names, det.scores)
    )
    if results is not None:
        from tinyseg.evaluation import detections_to_coco

        results += detections_to_coco(image_id, det.boxes, det.scores, det.classes, det.masks, pred.cat_ids)
    return len(det)


def cmd_export(a: argparse.Namespace) -> None:
    from tinyseg.deploy.export import run_export

    run_export(a.weights, a.format, a.out, a.half, a.int8, a.calib, a.images, a.calib_num, a.max_det)


def cmd_bench(a: argparse.Namespace) -> None:
    from tinyseg.tools.bench import run_bench

    run_bench(a)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tinyseg", description="Tiny real-time instance segmentation.")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("synth", help="generate the synthetic shapes dataset (COCO JSON + PNGs)")
    s.add_argument("out_dir")
    s.add_argument("--train", type=int, default=1000, help="training images (default 1000)")
    s.add_argument("--val", type=int, default=100, help="validation images (default 100)")
    s.add_argument("--size", type=int, default=320, help="image side in pixels (default 320)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--workers", type=int, default=2, help="processes (default 2)")
    s.set_defaults(func=cmd_synth)

    s = sub.add_parser("show", help="render ground-truth overlays of a COCO dataset to PNGs")
    s.add_argument("--data", required=True, help="COCO instances JSON")
    s.add_argument("--images", help="image folder (default: the JSON's folder)")
    s.add_argument("--out", required=True, help="output folder for the PNGs")
    s.add_argument("--num", type=int, default=16, help="how many images (default 16)")
    s.add_argument("--augment", action="store_true", help="apply the training augmentation first")
    s.add_argument("--imgsz", type=int, default=320, help="network input size for --augment")
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=cmd_show)

    s = sub.add_parser("train", help="train a model")
    s.add_argument("--config", help="YAML config (model/data/train sections); flags below override it")
    s.add_argument("--train", help="training COCO JSON")
    s.add_argument("--val", help="validation COCO JSON")
    s.add_argument("--images", help="image folder for both JSONs (default: each JSON's folder)")
    s.add_argument("--model", help="preset: nano (default) or small")
    s.add_argument("--imgsz", type=int)
    g = s.add_mutually_exclusive_group()
    g.add_argument("--epochs", type=int)
    g.add_argument("--time", type=float, help="wall-clock budget in minutes (the LR schedule is fitted to it)")
    s.add_argument("--batch", type=int)
    s.add_argument("--out", help="run folder (default runs/train)")
    s.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last.pt")
    s.add_argument("--device", help="cpu or cuda")
    s.add_argument("--workers", type=int, help="DataLoader workers (default 1)")
    s.add_argument("--seed", type=int)
    s.add_argument("--set", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. train.lr=0.002")
    s.set_defaults(func=cmd_train)

    s = sub.add_parser("eval", help="COCO mask and box AP of a checkpoint or an exported model")
    s.add_argument("--weights", required=True, help="CKPT.pt, MODEL.onnx or MODEL.xml")
    s.add_argument("--backend", default="auto", choices=["auto", "torch", "onnxruntime", "openvino"])
    s.add_argument("--threads", type=int)
    s.add_argument("--val", required=True, help="COCO JSON with ground truth")
    s.add_argument("--images")
    s.add_argument("--imgsz", type=int)
    s.add_argument("--max-det", type=int, default=100, help="detections per image and COCO maxDets (dense: 500)")
    s.add_argument("--conf", type=float, default=0.02, help="score threshold (default 0.02)")
    s.add_argument("--device", help="cpu|cuda (checkpoints) or CPU|GPU|NPU (OpenVINO)")
    s.add_argument("--json", help="write the metrics here")
    s.add_argument("--results", help="write the COCO results JSON here")
    s.set_defaults(func=cmd_eval)

    s = sub.add_parser("predict", help="predict images, a video or a camera; write overlays")
    s.add_argument("--weights", required=True, help="CKPT.pt, MODEL.onnx or MODEL.xml")
    s.add_argument("--source", required=True, help="an image, a folder of images, a video file or a camera index")
    s.add_argument("--out", default="runs/predict")
    s.add_argument("--conf", type=float, default=0.3)
    s.add_argument("--backend", default="auto", choices=["auto", "torch", "onnxruntime", "openvino"])
    s.add_argument("--device", help="cpu|cuda (checkpoints) or CPU|GPU|NPU (OpenVINO)")
    s.add_argument("--threads", type=int, help="CPU threads for inference")
    s.add_argument("--show", action="store_true", help="open a window (video/camera)")
    s.add_argument("--save-video", metavar="OUT.mp4", help="write the annotated video (video/camera)")
    s.add_argument("--max-frames", type=int, help="stop after this many frames (video/camera)")
    s.add_argument("--json", help="also write COCO results here (images)")
    s.set_defaults(func=cmd_predict)

    s = sub.add_parser("export", help="export a checkpoint to ONNX or OpenVINO (FP32, FP16, INT8)")
    s.add_argument("--weights", required=True)
    s.add_argument("--format", required=True, choices=["onnx", "openvino"])
    s.add_argument("--half", action="store_true", help="OpenVINO: FP16-compressed weights (NCS2)")
    s.add_argument("--int8", action="store_true", help="INT8 post-training quantization (needs --calib)")
    s.add_argument("--calib", metavar="ANN.json|DIR", help="calibration images: a COCO JSON or an image folder")
    s.add_argument("--images", help="image folder for --calib JSON")
    s.add_argument("--calib-num", type=int, default=300)
    s.add_argument("--max-det", type=int, help="K detections in the graph (default: the checkpoint's)")
    s.add_argument("--out", help="output path (default: next to the checkpoint)")
    s.set_defaults(func=cmd_export)

    s = sub.add_parser("bench", help="model-zoo row: accuracy, size, latency and memory per backend")
    s.add_argument("--weights", required=True)
    s.add_argument("--val", help="COCO JSON for mask/box AP (FP32 and INT8)")
    s.add_argument("--images")
    s.add_argument("--imgsz", type=int, default=320)
    s.add_argument("--backends", default="onnxruntime,openvino", help="comma list: torch,onnxruntime,openvino")
    s.add_argument("--threads", default="1,2", help="comma list of thread counts")
    s.add_argument("--runs", type=int, default=50, help="timed runs per setting (after warm-up)")
    s.add_argument(
        "--rounds", type=int, default=3, help="the settings take turns this many times, the runs split among them"
    )
    s.add_argument(
        "--calib", help="COCO JSON or image folder for INT8 calibration, e.g. the training set (default: --val)"
    )
    s.add_argument("--calib-num", type=int, default=300, help="calibration images (default 300, as export)")
    s.add_argument("--max-det", type=int, default=100)
    s.add_argument("--out", default="runs/bench", help="folder for the exported models")
    s.add_argument("--markdown", help="write the table as Markdown here")
    s.add_argument("--json", help="write the results as JSON here")
    s.set_defaults(func=cmd_bench)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except TinysegError as e:
        print(f"tinyseg {args.command}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a path the user gave: say which and why, in one line
        where = f"{e.filename}: " if e.filename else ""
        print(f"tinyseg {args.command}: error: {where}{e.strerror or e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
