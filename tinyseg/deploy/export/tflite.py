"""LiteRT (TFLite) export for ARM boards and NPUs: litert-torch converts the model straight from PyTorch
(torch.export, no ONNX or TensorFlow in between), ai-edge-quantizer makes it full-integer INT8 (int8 weights and
activations, min/max calibrated on the user's images).

Two layouts, both with the ONNX graph's contract (runtime.py) except that K is always max_det (a converter
traces static shapes only; the host drops low scores):
  single  one graph: uint8 images -> boxes, scores, classes, masks;
  split   the network up to its dense heads (conv, depthwise, add, resize, concat, logistic: what NPU delegates
          run), and beside it `M.tail.tflite`, the float decode tail (peaks, top-K, gathers, mask assembly) the
          runtime runs after it on the CPU.
Metadata (class names, size, layout) sits in the .tflite's metadata table under `tinyseg`.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from tinyseg.deploy.export.onnx import metadata
from tinyseg.deploy.predict import Segmenter
from tinyseg.deploy.runtime import DENSE_NAMES, OUTPUT_NAMES, TAIL_SUFFIX
from tinyseg.errors import ExportError
from tinyseg.io import atomic_write
from tinyseg.models.detector import TinySeg


class FixedKGraph(nn.Module):
    """TinySeg + decoding with K = max_det: the single graph."""

    def __init__(self, model: TinySeg, max_det: int):
        super().__init__()
        self.model, self.max_det = model, max_det

    def forward(self, images: torch.Tensor):
        det = self.model.detect(images, self.max_det, fixed_k=True)
        return tuple(det[k] for k in OUTPUT_NAMES)


class NetworkGraph(nn.Module):
    """The network up to the dense heads: the part of the split pair an NPU runs. Channels-last in and out
    (float pixels [1, S, S, 3] -> maps [1, h, w, C]), the layout TFLite computes in: no TRANSPOSE (which Ethos-U
    lacks) and no CAST (which the VX delegate lacks) in the graph."""

    def __init__(self, model: TinySeg):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor):
        out = self.model(images.permute(0, 3, 1, 2))
        return tuple(out[k].permute(0, 2, 3, 1) for k in DENSE_NAMES)


class TailGraph(nn.Module):
    """The dense heads (channels-last) -> detections (K = max_det): the float part of the split pair."""

    def __init__(self, model: TinySeg, max_det: int):
        super().__init__()
        self.model, self.max_det = model, max_det

    def forward(self, *dense: torch.Tensor):
        maps = {k: v.permute(0, 3, 1, 2) for k, v in zip(DENSE_NAMES, dense)}
        det = self.model.decode(maps, self.max_det, fixed_k=True)
        return tuple(det[k] for k in OUTPUT_NAMES)


def export_tflite(
    seg: Segmenter,
    path: str | Path,
    max_det: int | None = None,
    calib: np.ndarray | None = None,
    split: bool = False,
    ranges: str = "full",
) -> Path:
    """Write `path` (and with `split` its tail beside it); INT8 when calibration images [N, 3, S, S] are given,
    activation ranges as `ranges` says (see quantize_tflite)."""
    try:
        with quiet():  # importing it starts TensorFlow's and JAX's logging
            import litert_torch
    except ImportError:
        raise ExportError("TFLite export needs the converter: pip install 'tinyseg[tflite]'") from None
    path, model = Path(path).with_suffix(".tflite"), seg.model.eval()
    max_det = max_det or seg.cfg.model.max_det
    images = torch.zeros(1, 3, seg.imgsz, seg.imgsz, dtype=torch.uint8)
    meta = {**metadata(seg, max_det, "int8" if calib is not None else "fp32"), "fixed_k": True}
    if split:  # the NPU half takes float pixels, channels-last
        images = images.permute(0, 2, 3, 1).float()
        calib = None if calib is None else calib.transpose(0, 2, 3, 1).astype(np.float32)
    with torch.no_grad():
        head = NetworkGraph(model) if split else FixedKGraph(model, max_det)
        buf = _convert(litert_torch, head, (images,))
        if calib is not None:
            buf = quantize_tflite(buf, calib, whole=split, ranges=ranges)
        if split:
            tail_path = path.with_name(path.stem + TAIL_SUFFIX)
            dense = NetworkGraph(model)(images)
            _write(_convert(litert_torch, TailGraph(model, max_det), dense), {"part": "tail"}, tail_path)
            meta["tail"] = tail_path.name
            meta["npu_fallback"] = npu_fallback(buf)
    _write(buf, meta, path)
    return path


@contextlib.contextmanager
def quiet():
    """Silence the converter's and quantizer's progress lines and C++ logs (file descriptors 1 and 2): the
    export prints its own summary, and an error still surfaces as the exception it raises."""
    sys.stdout.flush(), sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 1), os.dup2(null, 2)
        with open(os.devnull, "w") as sink, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
                yield
    finally:
        sys.stdout.flush(), sys.stderr.flush()
        os.dup2(saved[0], 1), os.dup2(saved[1], 2)
        for fd in (*saved, null):
            os.close(fd)


def _convert(litert_torch, module: nn.Module, args: tuple) -> bytes:
    with tempfile.TemporaryDirectory() as d:
        try:
            with quiet():
                litert_torch.convert(module.eval(), args).export(str(Path(d) / "m.tflite"))
        except Exception as e:  # the converter raises many types; the message is what the user needs
            raise ExportError(f"TFLite conversion failed: {str(e)[:300]}") from None
        return (Path(d) / "m.tflite").read_bytes()


def quantize_tflite(model: bytes, calib: np.ndarray, whole: bool, ranges: str = "full") -> bytes:
    """INT8 with ai-edge-quantizer: int8 weights (per channel) and int8 activations, calibrated on the images.
    `whole`: every op (a split pair's network: int8 from its input to its outputs); else the ops of the network
    only (the tensors litert-torch names after the TinySeg module): quantized, the single graph's decode tail cost
    the demo model 13 mask AP points (benchmarks/README.md). `ranges`: "full", each activation's range is the
    union over the images; "moving_average", the quantizer's default (a moving average of the images' extremes,
    which clips the values detections live on: the peaks, the large boxes; benchmarks/results/tflite_int8.md)."""
    from ai_edge_litert.interpreter import Interpreter
    from ai_edge_quantizer import qtyping, quantizer

    signature = Interpreter(model_content=model).get_signature_list()["serving_default"]
    name = signature["inputs"][0]
    q = quantizer.Quantizer(model)
    scope = ".*" if whole else f".*{TinySeg.__name__}_model.*"
    q.add_static_config(scope, qtyping.TFLOperationName.ALL_SUPPORTED, 8, 8)
    samples = [{name: calib[i : i + 1]} for i in range(len(calib))]
    with quiet():
        if ranges == "moving_average":
            found = q.calibrate({"serving_default": samples})
        else:
            found = {}
            for sample in samples:  # one image at a time, merged here
                _widen(found, q.calibrate({"serving_default": [sample]}))
        return bytes(q.quantize(found, enable_progress_report=False).quantized_model)


def _widen(ranges: dict, new: dict) -> None:
    """Merge one image's min / max per tensor into `ranges`: the union."""
    for tensor, qsv in new.items():
        old = ranges.get(tensor)
        if not old or not qsv:
            ranges[tensor] = old or qsv
            continue
        ranges[tensor] = {**old, "min": np.minimum(old["min"], qsv["min"]), "max": np.maximum(old["max"], qsv["max"])}


def _write(model: bytes, meta: dict, path: Path) -> None:
    with atomic_write(path) as tmp:
        tmp.write_bytes(with_metadata(model, json.dumps(meta)))


def with_metadata(model: bytes, text: str) -> bytes:
    """The flatbuffer with `text` added to its metadata table under `tinyseg` (TFLite's place for it)."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    m = schema.ModelT.InitFromPackedBuf(model, 0)
    for b in m.buffers:  # data stored after the flatbuffer (offset/size) moves inside it: a repack drops the rest
        if b.offset > 1:
            b.data, b.offset, b.size = np.frombuffer(model, np.uint8, b.size, b.offset), 0, 0
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(text.encode(), np.uint8)
    m.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name, entry.buffer = "tinyseg", len(m.buffers) - 1
    m.metadata = [e for e in (m.metadata or []) if e.name != b"tinyseg"] + [entry]
    builder = flatbuffers.Builder(len(model) + 4096)
    builder.Finish(m.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


# TFLite builtin ops the NPU delegates place on the NPU, from their public operator tables: VeriSilicon's
# tflite-vx-delegate op_map.cc (the i.MX 8M Plus NPU) and Vela 3.6's SUPPORTED_OPS.md (Ethos-U65 on the i.MX 93),
# restricted to the ops a CNN like ours can contain. Per-op constraints (strides, shapes) are not checked here.
NPU_OPS = {
    "imx8mp_vx": {
        "ADD", "AVERAGE_POOL_2D", "CONCATENATION", "CONV_2D", "DEPTHWISE_CONV_2D", "DEQUANTIZE", "FULLY_CONNECTED",
        "LOGISTIC", "MAX_POOL_2D", "MAXIMUM", "MINIMUM", "MUL", "PAD", "QUANTIZE", "RELU", "RELU6", "RESHAPE",
        "RESIZE_BILINEAR", "RESIZE_NEAREST_NEIGHBOR", "SLICE", "SOFTMAX", "SPLIT", "SQUEEZE", "STRIDED_SLICE",
        "SUB", "TRANSPOSE", "HARD_SWISH", "LEAKY_RELU", "EXP", "LOG", "DIV", "GATHER", "BATCH_MATMUL", "SELECT_V2",
    },
    "ethos_u65": {
        "ADD", "AVERAGE_POOL_2D", "CONCATENATION", "CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "HARD_SWISH",
        "LEAKY_RELU", "LOGISTIC", "MAXIMUM", "MAX_POOL_2D", "MEAN", "MINIMUM", "MUL", "PACK", "PAD", "QUANTIZE",
        "RELU", "RELU6", "RESHAPE", "RESIZE_BILINEAR", "RESIZE_NEAREST_NEIGHBOR", "SLICE", "SOFTMAX", "SPLIT",
        "SPLIT_V", "SQUEEZE", "STRIDED_SLICE", "SUB", "TANH", "TRANSPOSE_CONV", "UNPACK",
    },
}  # fmt: skip


def graph_ops(model: bytes) -> dict[str, int]:
    """Builtin op name -> count in a .tflite."""
    from collections import Counter

    from ai_edge_litert.interpreter import Interpreter

    return dict(Counter(d["op_name"] for d in Interpreter(model_content=model)._get_ops_details()))


def npu_fallback(model: bytes) -> dict[str, list[str]]:
    """Per NPU, the ops of the graph its delegate would leave to the CPU."""
    ops = graph_ops(model)
    return {npu: sorted(op for op in ops if op not in supported) for npu, supported in NPU_OPS.items()}
