"""`tinyseg export`: ONNX (onnx.py), OpenVINO IR (openvino.py), INT8 (quantize.py), each verified against
PyTorch (parity.py)."""

from __future__ import annotations

import tempfile
from pathlib import Path

from tinyseg.deploy.export.onnx import export_onnx
from tinyseg.deploy.export.openvino import export_openvino
from tinyseg.deploy.export.parity import (
    PARITY_CONF,
    check_parity,
    tolerances,
    verify_batch,
)
from tinyseg.deploy.export.quantize import calibration_images, quantize_onnx, quantize_openvino
from tinyseg.deploy.predict import Segmenter
from tinyseg.deploy.runtime import model_file_size
from tinyseg.errors import ExportError
from tinyseg.io import check_writable

VERIFY_IMAGES = 8


def run_export(
    weights: str,
    fmt: str,
    out: str | None = None,
    half: bool = False,
    int8: bool = False,
    calib: str | None = None,
    images: str | None = None,
    calib_num: int = 300,
    max_det: int | None = None,
    split: bool = False,
) -> Path:
    """Write the model, then verify it against PyTorch on a few images and say so."""
    if int8 and not calib:
        raise ExportError("--int8 needs calibration images: --calib ANN.json (or an image folder)")
    if half and (fmt != "openvino" or int8):
        raise ExportError("--half is for FP16 OpenVINO IR (--format openvino without --int8)")
    if split and fmt != "tflite":
        raise ExportError("--split is for --format tflite (an NPU graph and its decode tail)")
    seg = Segmenter.load(weights)
    tag = "int8" if int8 else ("fp16" if half else "fp32")
    path = check_writable(Path(out) if out else Path(weights).with_name(f"{Path(weights).stem}_{tag}" + _suffix(fmt)))
    calib_batch = calibration_images(calib, images, seg.imgsz, calib_num) if calib else None
    if fmt == "tflite":
        from tinyseg.deploy.export.tflite import export_tflite

        path = export_tflite(seg, path, max_det, calib_batch if int8 else None, split)
    else:
        path = _export_onnx_based(seg, fmt, path, half, int8, calib_batch, max_det)
    check = calib_batch[:VERIFY_IMAGES] if calib_batch is not None else verify_batch(seg.imgsz, VERIFY_IMAGES)
    parity = check_parity(seg, path, check, **tolerances(half or int8))
    print(f"wrote {path} ({model_file_size(path) / 1e6:.2f} MB, {tag})")
    if split:
        _print_npu_fallback(path)
    if not parity.detections:
        print(
            f"parity vs PyTorch: UNVERIFIED: no detection scored >= {PARITY_CONF} on the {parity.images} check images"
        )
    elif int8:
        print(f"parity vs PyTorch (INT8: differences are expected; measure AP with tinyseg eval): {parity}")
    elif not parity.ok:
        raise ExportError(f"{path}: exported model does not match PyTorch ({parity})")
    else:
        print(f"parity vs PyTorch: {parity}")
    return path


def _export_onnx_based(seg, fmt: str, path: Path, half: bool, int8: bool, calib_batch, max_det) -> Path:
    with tempfile.TemporaryDirectory() as d:
        fp32 = export_onnx(seg, (path if fmt == "onnx" and not int8 else Path(d) / "fp32.onnx"), max_det)
        if fmt == "onnx" and int8:
            quantize_onnx(fp32, path, calib_batch)
        elif fmt == "openvino":
            path = quantize_openvino(fp32, path, calib_batch) if int8 else export_openvino(fp32, path, half)
    return path


def _print_npu_fallback(path: Path) -> None:
    import json

    from tinyseg.deploy.runtime import tflite_metadata

    for npu, ops in json.loads(tflite_metadata(path.read_bytes(), path))["npu_fallback"].items():
        print(f"NPU graph on {npu}: " + (f"would run on the CPU: {', '.join(ops)}" if ops else "every op on the NPU"))


def _suffix(fmt: str) -> str:
    return {"onnx": ".onnx", "openvino": ".xml", "tflite": ".tflite"}[fmt]
