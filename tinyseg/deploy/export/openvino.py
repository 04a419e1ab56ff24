"""OpenVINO IR (.xml + .bin) from the ONNX graph: FP32, or FP16-compressed weights (what the NCS2 runs)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from tinyseg.deploy.export.onnx import onnx_meta
from tinyseg.io import atomic_write


def identity_conv_name(prototype_sum: str) -> str:
    """The name of the identity conv convert_openvino adds after the prototype sum (a sibling of it)."""
    return prototype_sum.rsplit("/", 1)[0] + "/prototypes"


def export_openvino(onnx_path: Path, path: str | Path, half: bool = False) -> Path:
    path = Path(path).with_suffix(".xml")
    meta = onnx_meta(onnx_path)
    model = convert_openvino(onnx_path, meta["nodes"]["prototype_sum"])
    meta["precision"] = "fp16" if half else "fp32"
    model.set_rt_info(json.dumps(meta), ["tinyseg"])
    save_ir(model, path, half)
    return path


def convert_openvino(onnx_path: Path, prototype_sum: str):
    """ONNX -> OpenVINO model, with an identity 1x1 conv after the prototype sum (node `prototype_sum`).
    The mask MatMul and Gather read the prototypes channels-last, the layout OpenVINO's CPU plugin keeps conv
    outputs in, so the permute could be free; but the plugin fuses the sum into the last prototype conv and
    does not merge a Transpose after a conv with a fused sum, so the permute would run as a real Transpose +
    Reorder. After a plain conv it is merged into nothing. Exact in FP32 and FP16. ONNX Runtime fuses the
    permute into its MatMul, so the ONNX file stays as it is."""
    import openvino as ov
    import openvino.opset13 as ops

    model = ov.convert_model(str(onnx_path))
    add = next((op for op in model.get_ops() if op.get_friendly_name() == prototype_sum), None)
    if add is None:
        return model
    k = add.get_output_partial_shape(0)[1].get_length()
    readers = list(add.output(0).get_target_inputs())
    eye = ops.constant(np.eye(k, dtype=np.float32).reshape(k, k, 1, 1))
    conv = ops.convolution(add.output(0), eye, [1, 1], [0, 0], [0, 0], [1, 1])
    conv.set_friendly_name(identity_conv_name(prototype_sum))
    for reader in readers:
        reader.replace_source_output(conv.output(0))
    model.validate_nodes_and_infer_types()
    return model


def save_ir(model, path: Path, half: bool) -> None:
    """.xml and .bin, each replaced atomically (the .bin first: an .xml never points at a missing .bin)."""
    import openvino as ov

    with atomic_write(path) as tmp:
        ov.save_model(model, str(tmp), compress_to_fp16=half)
        os.replace(tmp.with_suffix(".bin"), path.with_suffix(".bin"))
