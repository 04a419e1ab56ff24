"""Command line: `tinyseg synth | show | train | eval | predict | export | bench`.

`tinyseg COMMAND -h` lists the options (tools/args.py)."""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path

from tinyseg.config import Config, apply_overrides, check_ranges, preset
from tinyseg.deploy.loader import is_exported, load_predictor
from tinyseg.errors import ConfigError, TinysegError, UsageError
from tinyseg.io import check_writable
from tinyseg.tools.args import build_parser

VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v"}


def cmd_synth(a: argparse.Namespace) -> None:
    from tinyseg.data.synthetic import generate

    check_writable(a.out_dir, folder=True)
    t = time.perf_counter()
    tr, va = generate(a.out_dir, a.train, a.val, a.size, a.seed, progress=True, workers=a.workers, style=a.style)
    dt = time.perf_counter() - t
    print(f"wrote {tr} and {va} ({a.train + a.val} images in {dt:.1f} s, {(a.train + a.val) / dt:.0f} images/s)")


def cmd_show(a: argparse.Namespace) -> None:
    from tqdm import tqdm

    from tinyseg.data.coco import load_coco
    from tinyseg.tools.predict import ImageOutputs
    from tinyseg.viz import write_rgb

    data = load_coco(a.data, a.images, allow_outside=a.allow_outside_images)
    n = min(a.num, len(data.images))
    outputs = ImageOutputs([r.file for r in data.images[:n]], check_writable(a.out, folder=True))
    for i in tqdm(range(n), desc="render", unit="img"):
        write_rgb(outputs.overlay(i), _ground_truth_overlay(data, i, a))
    print(f"wrote {n} overlays to {a.out}/")


def _ground_truth_overlay(data, i: int, a: argparse.Namespace):
    """Image i with its annotations drawn, as stored or (--augment) as training sees it."""
    import numpy as np

    from tinyseg.config import DataConfig
    from tinyseg.data.coco import read_record_image
    from tinyseg.data.dataset import CocoDataset, build_training_samples
    from tinyseg.data.rle import decode_masks
    from tinyseg.data.transforms import masks_to_boxes
    from tinyseg.viz import draw_instances

    if a.augment:
        dc = DataConfig(imgsz=a.imgsz, max_mask_instances=10**6)
        training = build_training_samples(dc, 1, data.class_names)
        img_t, t = CocoDataset(data, a.imgsz, training, a.seed)[i]
        img, masks, labels, boxes = img_t.permute(1, 2, 0).numpy(), t["masks"].numpy() > 127, t["labels"], t["boxes"]
    else:
        rec = data.images[i]
        img, masks = read_record_image(rec), decode_masks(rec.rles, rec.height, rec.width).astype(bool)
        labels, boxes = np.asarray(rec.labels), masks_to_boxes(masks)
    return draw_instances(img, np.asarray(boxes), np.asarray(labels), masks, data.class_names)


# `tinyseg train` flags -> the config keys they set (after --config, before --set).
TRAIN_FLAGS = {
    "train": ("data", "train"),
    "val": ("data", "val"),
    "data": ("data", "data"),
    "images": ("data", "train_images"),
    "imgsz": ("data", "imgsz"),
    "epochs": ("train", "epochs"),
    "time": ("train", "time"),
    "batch": ("train", "batch"),
    "out": ("train", "out"),
    "device": ("train", "device"),
    "workers": ("train", "workers"),
    "seed": ("train", "seed"),
}
# A resumed run continues exactly as it was configured: these flags cannot change it.
RESUME_CONFLICTS = ("config", "model", "set", *TRAIN_FLAGS, "allow_outside_images")


def _build_config(a: argparse.Namespace) -> Config:
    cfg = Config.load(a.config) if a.config else Config()
    if a.model:
        cfg.model = preset(a.model)
    if a.images is not None:
        cfg.data.val_images = a.images  # --images serves both JSONs
    for flag, (section, key) in TRAIN_FLAGS.items():
        if getattr(a, flag) is not None:
            setattr(getattr(cfg, section), key, getattr(a, flag))
    if a.allow_outside_images:
        cfg.data.allow_outside_images = True
    apply_overrides(cfg, a.set or [])
    if not (cfg.data.train or cfg.data.data):
        raise ConfigError("no training data: give --train TRAIN.json or --data data.yaml (or data.train in --config)")
    if cfg.data.train and cfg.data.data:
        raise UsageError("give either --train/--val (COCO JSON) or --data (YOLO-seg data.yaml), not both")
    check_ranges(cfg, "train options")
    check_writable(cfg.train.out, folder=True)
    return cfg


def cmd_train(a: argparse.Namespace) -> None:
    from tinyseg.training.trainer import train

    if a.resume:
        given = [f"--{f.replace('_', '-')}" for f in RESUME_CONFLICTS if getattr(a, f) not in (None, False)]
        if given:
            raise UsageError(f"--resume continues {a.resume} as it was configured; drop {' '.join(given)}")
    from tinyseg.training.distributed import shutdown

    try:
        summary = train(Config() if a.resume else _build_config(a), resume=a.resume)
    finally:
        shutdown()
    if "RANK" in os.environ and os.environ["RANK"] != "0":
        return  # the main process reports
    m = summary.get("metrics")
    print(f"done: {summary['epochs']} epochs, {summary['steps']} steps, {summary['minutes']:.1f} min")
    if m:
        print(f"val mask AP {m['mask_ap']:.3f}  box AP {m['box_ap']:.3f}")
    print(f"checkpoints: {summary['best']} {summary['last']}; metrics.csv and curves.png in {summary['out']}")
    if "report" in summary:
        print(f"report: {summary['report']}")


def cmd_eval(a: argparse.Namespace) -> None:
    from tinyseg.data.dataset import CocoDataset
    from tinyseg.evaluation import evaluate, format_table
    from tinyseg.io import write_json

    for path in (a.json, a.results):
        if path:
            check_writable(path)
    if a.report:
        check_writable(a.report, folder=True)
    pred = load_predictor(a.weights, a.backend, a.device, a.threads, a.delegate)
    data = _eval_data(a)
    if data.class_names != pred.class_names:
        warnings.warn(
            f"{a.val}: categories {data.class_names} differ from the model's {pred.class_names}", stacklevel=1
        )
    exported = is_exported(a.weights)
    if a.imgsz and a.imgsz != pred.imgsz and exported:
        raise UsageError(f"{a.weights}: exported for {pred.imgsz}x{pred.imgsz}; --imgsz {a.imgsz} needs a new export")
    ds = CocoDataset(data, a.imgsz or pred.imgsz)
    run = pred.run if exported else (lambda x: pred.run(x, a.max_det))  # a graph keeps at most its max_det
    metrics, results = evaluate(run, ds, a.max_det, a.conf, 1 if exported else 8, evaluator=a.evaluator)
    metrics["weights"] = str(a.weights)
    print(format_table(metrics))
    for obj, path in ((metrics, a.json), (results, a.results)):
        if path:
            write_json(obj, path)
            print(f"wrote {path}")
    if a.report:
        from tinyseg.report import write_report

        print(f"wrote {write_report(a.report, data, results, metrics)}")


def _eval_data(a: argparse.Namespace):
    """--val as a COCO JSON, or a split of a YOLO-seg data.yaml."""
    from tinyseg.data.coco import load_coco

    if Path(a.val).suffix.lower() in (".yaml", ".yml"):
        from tinyseg.data.yolo import read_yolo

        return read_yolo(a.val, a.split)
    return load_coco(a.val, a.images, allow_outside=a.allow_outside_images)


def cmd_convert(a: argparse.Namespace) -> None:
    from tinyseg.data import yolo
    from tinyseg.data.coco import load_coco

    if a.coco:
        if not a.to_yolo:
            raise UsageError("--coco converts to YOLO-seg: give --to-yolo DIR")
        data = load_coco(a.coco, a.images, allow_outside=a.allow_outside_images)
        out = yolo.write_yolo(data, check_writable(a.to_yolo, folder=True), a.split or Path(a.coco).stem)
    else:
        if not a.to_coco:
            raise UsageError("--yolo converts to COCO: give --to-coco OUT.json")
        data = yolo.read_yolo(a.yolo, a.split or "train")
        out = yolo.write_coco(data, check_writable(a.to_coco), a.split or "train")
    n = sum(len(r.labels) for r in data.images)
    print(f"wrote {out}: {len(data.images)} images, {n} objects, classes {', '.join(data.class_names)}")


def cmd_predict(a: argparse.Namespace) -> None:
    if a.source.isdigit() or Path(a.source).suffix.lower() in VIDEO_SUFFIXES:
        if a.save_video:
            check_writable(a.save_video)
        from tinyseg.tools.video import run_video

        pred = load_predictor(a.weights, a.backend, a.device, a.threads, a.delegate)
        run_video(pred, a.source, a.conf, a.show, a.save_video, a.max_frames)
        return
    if a.show or a.save_video:
        raise UsageError("--show and --save-video are for a video file or a camera index")
    from tinyseg.tools.predict import ImageOutputs, list_images, predict_images

    files = list_images(a.source)
    outputs = ImageOutputs(
        files, check_writable(a.out, folder=True), a.json and check_writable(a.json), a.format, a.save_txt
    )
    pred = load_predictor(a.weights, a.backend, a.device, a.threads, a.delegate)
    total, skipped = predict_images(pred, files, outputs, a.conf)
    print(
        f"{total} instances in {len(files) - skipped} images; overlays in {a.out}/"
        + (f", results in {a.json}" if a.json else "")
        + (f", YOLO-seg labels in {outputs.labels}/" if a.save_txt else "")
        + (f"; {skipped} unreadable files skipped" if skipped else "")
    )


def cmd_export(a: argparse.Namespace) -> None:
    from tinyseg.deploy.export import run_export

    run_export(a.weights, a.format, a.out, a.half, a.int8, a.calib, a.images, a.calib_num, a.max_det, a.split)


def cmd_bench(a: argparse.Namespace) -> None:
    from tinyseg.tools.bench import run_bench

    run_bench(a)


COMMANDS = {
    "synth": cmd_synth,
    "show": cmd_show,
    "convert": cmd_convert,
    "train": cmd_train,
    "eval": cmd_eval,
    "predict": cmd_predict,
    "export": cmd_export,
    "bench": cmd_bench,
}


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # argparse has printed the usage error (or --help)
        return int(e.code or 0)
    # Under torchrun every process runs this: say which one failed.
    who = f"tinyseg {args.command}" + (f" (rank {os.environ['RANK']})" if "RANK" in os.environ else "")
    try:
        COMMANDS[args.command](args)
    except TinysegError as e:
        print(f"{who}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a path the user gave: say which and why, in one line
        where = f"{e.filename}: " if e.filename else ""
        print(f"{who}: error: {where}{e.strerror or e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
