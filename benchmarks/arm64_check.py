"""The ARM path, checked here by emulation: the exported graphs run through `tinyseg predict` on an aarch64 Python
with the aarch64 wheels a Raspberry Pi or an i.MX board installs (ai-edge-litert, onnxruntime, OpenCV; no torch),
under qemu-user emulating a Cortex-A53 (i.MX 8M Plus, Raspberry Pi 3), and their detections are compared with
the same graphs run natively (x86-64). A correctness check of the real graphs and the real ARM kernels (XNNPACK's
and onnxruntime's NEON code paths), not a timing: emulation is tens of times slower than the board.

    .venv/bin/python benchmarks/arm64_check.py --weights CK.pt --val V.json --calib T.json [--images 12]

Set-up, once (root; Debian or Ubuntu). QEMU 8 or newer: 7.2 (Debian 12's) crashes inside the LiteRT and
onnxruntime libraries. Debian 13 / Ubuntu 24.04 have it as `qemu-user`; its binary is static, so the .deb of a
newer release unpacked anywhere (`dpkg-deb -x`) works too.

    apt-get install debootstrap qemu-user
    .venv/bin/python benchmarks/arm64_check.py --setup          # an arm64 Debian 12 tree with Python 3.11 + wheels

Results: benchmarks/results/arm64_check.{json,md} (--results NAME for another model). Work files go to --work.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
from common import tinyseg

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
# What `pip install "tinyseg[edge,litert]"` brings on the board, as aarch64 wheels for its Python (3.11).
EDGE_WHEELS = ["numpy", "opencv-python-headless", "pillow", "pyyaml", "tqdm", "onnxruntime", "ai-edge-litert"]
PLATFORMS = ["manylinux2014_aarch64", "manylinux_2_27_aarch64", "manylinux_2_28_aarch64", "manylinux_2_35_aarch64"]
# The graphs a board runs: name -> (file suffix, export arguments).
EXPORTS = {
    "tflite_fp32": (".tflite", ["--format", "tflite"]),
    "tflite_int8_split": (".tflite", ["--format", "tflite", "--int8", "--split"]),
    "onnx_fp32": (".onnx", ["--format", "onnx"]),
}


def setup_root(root: Path) -> None:
    """An arm64 Debian 12 tree (Python 3.11, as Raspberry Pi OS has) unpacked without running anything in it,
    and the edge wheels for aarch64 in ROOT/opt/site."""
    if not shutil.which("debootstrap"):
        raise SystemExit("--setup needs debootstrap: apt-get install debootstrap qemu-user")
    if not (root / "usr/bin/python3.11").is_file():
        subprocess.run(["debootstrap", "--foreign", "--arch", "arm64", "--variant=minbase", "--include=python3",
                        "bookworm", str(root), "http://deb.debian.org/debian"], check=True)  # fmt: skip
        for deb in sorted((root / "var/cache/apt/archives").glob("*.deb")):  # the second stage would need chroot
            subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
    platforms = [x for p in PLATFORMS for x in ("--platform", p)]
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--only-binary=:all:", "--python-version", "3.11",
                    "--implementation", "cp", *platforms, "--target", str(root / "opt/site"), *EDGE_WHEELS],
                   check=True)  # fmt: skip


def subset(val: Path, n: int, work: Path) -> tuple[Path, Path]:
    """The first n images of the val set: a COCO JSON beside copies of the images (the folder predict reads)."""
    coco = json.loads(val.read_text())
    coco["images"] = sorted(coco["images"], key=lambda im: im["file_name"])[:n]
    keep = {im["id"] for im in coco["images"]}
    coco["annotations"] = [a for a in coco["annotations"] if a["image_id"] in keep]
    source = work / "images"
    source.mkdir(parents=True, exist_ok=True)
    for im in coco["images"]:
        shutil.copy(val.parent / im["file_name"], source / Path(im["file_name"]).name)
        im["file_name"] = Path(im["file_name"]).name
    path = source / "val.json"
    path.write_text(json.dumps(coco))
    return path, source


def arm_python(a) -> tuple[list[str], dict]:
    """The command and environment that run the aarch64 Python under qemu-user."""
    env = {**os.environ, "QEMU_LD_PREFIX": str(a.root), "QEMU_CPU": a.cpu,
           "PYTHONPATH": f"{a.root / 'opt/site'}{os.pathsep}{REPO}"}  # fmt: skip
    return [a.qemu, str(a.root / "usr/bin/python3.11")], env


def predict(python: list[str], env: dict | None, model: Path, source: Path, out: Path) -> list[dict]:
    """`tinyseg predict` with one thread -> COCO results (image ids: 1.. in file-name order). Results of an earlier
    call are reused (delete the work folder to start over)."""
    if (out / "results.json").is_file():
        return json.loads((out / "results.json").read_text())
    cmd = [*python, "-m", "tinyseg", "predict", "--weights", str(model), "--source", str(source), "--out", str(out),
           "--json", str(out / "results.json"), "--conf", "0.05", "--threads", "1"]  # fmt: skip
    res = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if res.returncode:
        raise SystemExit(f"{' '.join(cmd[:3])} predict {model.name} failed:\n{res.stderr[-2000:]}")
    return json.loads((out / "results.json").read_text())


def compare(native: list[dict], arm: list[dict]) -> dict:
    """Detections of one graph on the two machines: each x86-64 detection paired with the arm64 detection of the
    same image and class, box IoU >= 0.5 and the closest score (a weak model repeats boxes). Pairs: mask IoU (two
    empty masks count as equal), score and box differences. The rest: how many, and the highest score among them."""
    from pycocotools import mask as mask_util

    by_image = lambda rs: {i: [r for r in rs if r["image_id"] == i] for i in {r["image_id"] for r in rs}}  # noqa: E731
    x86, a64 = by_image(native), by_image(arm)
    score, box, mask_ious, unpaired = 0.0, 0.0, [], []
    for image_id, p in x86.items():
        q = a64.get(image_id, [])
        overlap = np.zeros((len(p), len(q)))
        if q:
            same = np.equal.outer([r["category_id"] for r in p], [s["category_id"] for s in q])
            overlap = mask_util.iou([r["bbox"] for r in p], [s["bbox"] for s in q], [0] * len(q)) * same
        for i, r in enumerate(p):
            candidates = [k for k in range(len(q)) if overlap[i, k] >= 0.5]
            if not candidates:
                unpaired.append(r["score"])
                continue
            s = min((q[k] for k in candidates), key=lambda s: abs(s["score"] - r["score"]))  # duplicates: closest
            score = max(score, abs(r["score"] - s["score"]))
            box = max(box, float(np.abs(np.subtract(r["bbox"], s["bbox"])).max()))
            empty = mask_util.area(r["segmentation"]) == mask_util.area(s["segmentation"]) == 0
            mask_ious.append(1.0 if empty else mask_util.iou([r["segmentation"]], [s["segmentation"]], [0])[0, 0])
    return {"detections_native": len(native), "detections_arm": len(arm), "unpaired": len(unpaired),
            "unpaired_max_score": max(unpaired, default=None),
            "mask_iou_mean": float(np.mean(mask_ious)) if mask_ious else None,
            "mask_iou_min": float(np.min(mask_ious)) if mask_ious else None,
            "max_score_diff": score, "max_box_diff_px": box}  # fmt: skip


def mask_ap(results: list[dict], val: Path, max_det: int) -> dict:
    """AP of predict's results on the subset (its image ids are 1.. in file-name order)."""
    from tinyseg.data.coco import load_coco
    from tinyseg.evaluation import coco_evaluate, ground_truth

    data = load_coco(str(val))
    ids = [rec.id for rec in sorted(data.images, key=lambda rec: rec.file.name)]
    mapped = [{**r, "image_id": ids[r["image_id"] - 1]} for r in results]
    m = coco_evaluate(ground_truth(data), mapped, max_dets=max_det)
    return {"mask_ap": m["mask_ap"], "box_ap": m["box_ap"]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", help="checkpoint to export (.pt)")
    p.add_argument("--val", help="COCO JSON: the first --images images are predicted on both machines")
    p.add_argument("--calib", help="COCO JSON of calibration images for the INT8 export")
    p.add_argument("--images", type=int, default=12)
    p.add_argument("--max-det", type=int, default=100, help="maxDets of the AP (500 for dense sets)")
    p.add_argument("--root", type=Path, default=Path("/opt/arm64"), help="the arm64 tree (--setup makes it)")
    p.add_argument("--qemu", default="qemu-aarch64", help="QEMU 8 or newer, user mode")
    p.add_argument("--cpu", default="cortex-a53", help="the emulated core (QEMU_CPU)")
    p.add_argument("--work", type=Path, default=Path("runs/arm64_check"))
    p.add_argument("--results", default="arm64_check", help="name of the results files in benchmarks/results")
    p.add_argument("--setup", action="store_true", help="make --root and exit")
    a = p.parse_args()
    if a.setup:
        setup_root(a.root)
        return 0
    if not (a.weights and a.val and a.calib):
        p.error("--weights, --val and --calib are needed (or --setup)")
    val, source = subset(Path(a.val), a.images, a.work)
    arm, env = arm_python(a)
    rows = {}
    for name, (suffix, args) in EXPORTS.items():
        model = a.work / f"{name}{suffix}"
        if not model.is_file():
            tinyseg("export", "--weights", a.weights, *args, "--calib", a.calib, "--calib-num", "100",
                    "--out", str(model))  # fmt: skip
        native = predict([sys.executable], None, model, source, a.work / f"{name}_x86")
        emulated = predict(arm, env, model, source, a.work / f"{name}_arm64")
        rows[name] = {
            **compare(native, emulated),
            "native": mask_ap(native, val, a.max_det),
            "arm": mask_ap(emulated, val, a.max_det),
        }
        print(name, json.dumps(rows[name]), flush=True)
    write_results(a, rows)
    return 0


def write_results(a, rows: dict) -> None:
    version = subprocess.run([a.qemu, "--version"], capture_output=True, text=True).stdout.splitlines()[0]
    result = {"weights": a.weights, "val": a.val, "images": a.images, "cpu": a.cpu, "qemu": version, "graphs": rows}
    out = HERE / "results"
    (out / f"{a.results}.json").write_text(json.dumps(result, indent=1) + "\n")
    head = "| graph | detections x86-64 / arm64 | unpaired (top score) | pairs: mask IoU mean / min | max score diff |"
    head += " max box diff (px) | mask AP x86-64 / arm64 | box AP x86-64 / arm64 |"
    md = [f"# The ARM path under emulation ({a.cpu}, {version.split(' (')[0]})", "",
          f"`{Path(a.weights).parent.name}/{Path(a.weights).name}` on the first {a.images} images of "
          f"`{Path(a.val).name}`, `tinyseg predict --conf 0.05 --threads 1` on both machines: x86-64 natively, "
          "aarch64 Python 3.11 with the aarch64 wheels (no torch) under qemu-user.", "", head,
          "|" + "---|" * (head.count("|") - 1)]  # fmt: skip
    for name, r in rows.items():
        iou = f"{r['mask_iou_mean']:.4f} / {r['mask_iou_min']:.4f}" if r["mask_iou_mean"] is not None else "-"
        top = f" ({r['unpaired_max_score']:.3f})" if r["unpaired"] else ""
        md.append(f"| {name} | {r['detections_native']} / {r['detections_arm']} | {r['unpaired']}{top} | {iou} | "
                  f"{r['max_score_diff']:.2g} | {r['max_box_diff_px']:.2g} | "
                  f"{r['native']['mask_ap']:.3f} / {r['arm']['mask_ap']:.3f} | "
                  f"{r['native']['box_ap']:.3f} / {r['arm']['box_ap']:.3f} |")  # fmt: skip
    (out / f"{a.results}.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    sys.exit(main())
