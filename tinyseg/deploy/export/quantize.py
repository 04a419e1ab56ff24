"""INT8 post-training quantization: ONNX Runtime static QDQ and NNCF for OpenVINO, calibrated on the user's
images. The decode tail and a few accuracy- or speed-critical convs stay in float (tail_nodes)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np

from tinyseg.data.transforms import letterbox_input
from tinyseg.deploy.export.onnx import onnx_meta, set_onnx_meta
from tinyseg.deploy.export.openvino import convert_openvino, identity_conv_name, save_ir
from tinyseg.errors import ExportError
from tinyseg.io import atomic_write, image_files, read_image

CALIBRATION_SEED = 0  # which images of a large set calibrate: fixed, so an export is reproducible


def calibration_images(source: str, images_dir: str | None, size: int, num: int) -> np.ndarray:
    """Letterboxed uint8 [N, 3, S, S] calibration batch from a COCO JSON or an image folder."""
    src = Path(source)
    if src.is_dir():
        files = image_files(src)
    else:
        from tinyseg.data.coco import load_coco

        files = [r.file for r in load_coco(src, images_dir).images]
    if not files:
        raise ExportError(f"{source}: no calibration images found")
    rng = np.random.default_rng(CALIBRATION_SEED)
    files = [files[i] for i in sorted(rng.permutation(len(files))[:num])]
    return np.concatenate([letterbox_input(read_image(f), size)[1] for f in files])


def tail_nodes(onnx_path: Path, nodes: dict, float_stem: bool = True) -> list[str]:
    """Names of the nodes of `onnx_path` INT8 quantization keeps in float: everything outside the network
    (peaks, top-K, gathers, mask assembly: exact comparisons and index arithmetic), the prefixes the export
    recorded as `keep_float` (`nodes`, see onnx.float_node_names) and (`float_stem`) the input normalisation
    with the stem conv: ONNX Runtime's int8 conv over 3 channels is slower than its float one, OpenVINO's
    faster. docs/design.md says why the others."""
    import onnx

    network, keep = tuple(nodes["network"]), tuple(nodes["keep_float"] + (nodes["stem"] if float_stem else []))
    m = onnx.load(str(onnx_path))
    return [n.name for n in m.graph.node if not n.name.startswith(network) or n.name.startswith(keep)]


def compact(model):
    """Make a quantized ONNX model smaller without changing what it computes:
    - no all-zero zero points on the DequantizeLinear of weights and biases (symmetric int8 weights and int32
      biases have zero points of 0, the operator's default);
    - short tensor names (t + a base-36 number), no node names, no value_info: PyTorch's scope names and shape
      annotations carry nothing a runtime needs.
    Graph inputs and outputs keep their names (the contract). Used on the INT8 file only: the FP32 file keeps
    its names, since they select the nodes INT8 keeps in float (tail_nodes) and label per-op profiles."""
    from onnx import numpy_helper

    g = model.graph
    inits = {t.name: t for t in g.initializer}
    for node in g.node:
        if node.op_type == "DequantizeLinear" and len(node.input) == 3 and node.input[0] in inits:
            zp = inits.get(node.input[2])
            if zp is not None and not numpy_helper.to_array(zp).any():
                del node.input[2]
    used = {name for node in g.node for name in node.input}
    kept = [t for t in g.initializer if t.name in used]
    del g.initializer[:]
    g.initializer.extend(kept)
    _shorten_names(g)
    return model


def _shorten_names(g) -> None:
    fixed = {v.name for v in g.input} | {v.name for v in g.output}
    short: dict[str, str] = {}

    def rename(name: str) -> str:
        if not name or name in fixed:
            return name
        return short.setdefault(name, "t" + np.base_repr(len(short), 36).lower())  # ONNX names: C identifiers

    for t in g.initializer:
        t.name = rename(t.name)
    for node in g.node:
        node.name = ""
        node.input[:] = [rename(n) for n in node.input]
        node.output[:] = [rename(n) for n in node.output]
    del g.value_info[:]


def quantize_onnx(onnx_path: Path, path: str | Path, calib: np.ndarray) -> Path:
    """Static INT8 (QDQ, per-channel weights, uint8 activations) with onnxruntime; decode tail in float."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(calib[i : i + 1] for i in range(len(calib)))

        def get_next(self):
            x = next(self.it, None)
            return None if x is None else {"images": x}

    path = Path(path)
    meta = onnx_meta(onnx_path)
    with tempfile.TemporaryDirectory() as d, atomic_write(path) as tmp:
        pre = Path(d) / "pre.onnx"
        quant_pre_process(str(onnx_path), str(pre), skip_symbolic_shape=True)
        quantize_static(
            str(pre),
            str(tmp),
            Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=tail_nodes(pre, meta["nodes"]),
        )
        model = compact(onnx.load(str(tmp)))
        set_onnx_meta(model, {**meta, "precision": "int8"})
        onnx.save(model, str(tmp))
    return path


def quantize_openvino(onnx_path: Path, path: str | Path, calib: np.ndarray) -> Path:
    """INT8 with NNCF post-training quantization; the decode tail and head outputs stay in float.
    MIXED preset: symmetric weights, asymmetric activations (the linear bottlenecks and residual sums are
    signed and skewed). MINMAX ranges: the smallest and largest value over all calibration images, as
    onnxruntime does; NNCF's default (the mean over images of each image's min and max) clips what only a few
    images reach, the strongest centre peaks among them (benchmarks/README.md has the AP of both)."""
    import nncf
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet

    path = Path(path).with_suffix(".xml")
    meta = onnx_meta(onnx_path)
    prototype_sum = meta["nodes"]["prototype_sum"]
    model = convert_openvino(onnx_path, prototype_sum)
    names = {op.get_friendly_name() for op in model.get_ops()}
    # OpenVINO splits an ONNX Conv `X` into the convolution `X/WithoutBiases` and the bias Add `X`.
    tail = tail_nodes(onnx_path, meta["nodes"], float_stem=False) + [identity_conv_name(prototype_sum)]
    ignored = [m for n in tail for m in (n, n + "/WithoutBiases") if m in names]
    q = nncf.quantize(
        model,
        nncf.Dataset([calib[i : i + 1] for i in range(len(calib))]),
        preset=nncf.QuantizationPreset.MIXED,
        subset_size=len(calib),
        ignored_scope=nncf.IgnoredScope(names=ignored, validate=False),
        advanced_parameters=nncf.AdvancedQuantizationParameters(
            activations_range_estimator_params=RangeEstimatorParametersSet.MINMAX
        ),
    )
    q.set_rt_info(json.dumps({**meta, "precision": "int8"}), ["tinyseg"])
    save_ir(q, path, half=False)
    return path
