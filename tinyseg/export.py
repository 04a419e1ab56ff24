"""Export: one self-contained graph (normalisation, network, peak finding, top-K, boxes, masks) to ONNX and
OpenVINO IR, INT8 post-training quantization, and a parity check against PyTorch after every export.

Graph contract (same for every format):
  input   images   uint8 [B, 3, S, S]   RGB, letterboxed to the model's size S (pad value 114), NCHW
  outputs boxes    float32 [B, K, 4]    xyxy in input pixels
          scores   float32 [B, K]       peak scores, sorted descending; filter by your threshold. K is dynamic:
                                        the most scores >= model.score_thresh in any image of the batch
                                        (at least 1, at most max_det)
          classes  int64   [B, K]       0-based labels
          masks    float32 [B, K, S/2, S/2]  mask probabilities on the letterboxed grid (S/2: the prototypes'
                                             resolution); a mask is meant inside its box grown by 2 input px:
                                             cut it there when you paste it (results.to_detections does)
Masks stay at S/2: resizing K masks to S inside the graph would cost 4x the memory traffic for nothing the host
can't do for the few detections it keeps. The cut at the box is left to the host for the same reason: two
broadcast Muls over [K, S/2, S/2] were 2.2 of 4.8 ms of the graph's mask tail (ONNX Runtime, 1 thread, K=100;
5x that at K=500), while the host cuts only the few masks it keeps, at full resolution, anyway.
Metadata (class names, size, layout) is embedded in the model file under the key `tinyseg`.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from tinyseg.data.transforms import letterbox_input
from tinyseg.predict import Segmenter

OUTPUT_NAMES = ("boxes", "scores", "classes", "masks")


class ExportError(RuntimeError):
    pass


class ExportGraph(nn.Module):
    """TinySeg + post-processing as one module with tensor outputs (what goes into the graph)."""

    def __init__(self, seg: Segmenter, max_det: int):
        super().__init__()
        self.model, self.max_det = seg.model, max_det

    def forward(self, images: torch.Tensor):
        det = self.model.detect(images, self.max_det)
        return tuple(det[k] for k in OUTPUT_NAMES)


def metadata(seg: Segmenter, max_det: int, precision: str) -> dict:
    return {
        "class_names": seg.class_names,
        "imgsz": seg.imgsz,
        "max_det": max_det,
        "layout": "NCHW",
        "dtype": "uint8",
        "color": "RGB",
        "pad_value": 114,
        "mask_stride": seg.model.mask_stride,
        "outputs": list(OUTPUT_NAMES),
        "precision": precision,
        "score_thresh": seg.model.score_thresh,
        "format": "tinyseg/3",  # /2: K = max_det always; /1: masks were zeroed outside the box in the graph
    }


def _atomic_path(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.with_name(f".tmp-{os.getpid()}-{path.name}")


def export_onnx(seg: Segmenter, path: str | Path, max_det: int | None = None, opset: int = 17) -> Path:
    """Trace the whole pipeline to ONNX (batch dimension dynamic), check it, simplify it where onnxslim is
    installed, embed the metadata. Written atomically."""
    import onnx

    path = Path(path)
    max_det = max_det or seg.cfg.model.max_det
    graph = ExportGraph(seg, max_det).eval()
    s = seg.imgsz
    dummy = torch.zeros(1, 3, s, s, dtype=torch.uint8)
    tmp = _atomic_path(path)
    axes = {"images": {0: "batch"}, **{k: {0: "batch"} for k in OUTPUT_NAMES}}
    with torch.no_grad():
        torch.onnx.export(
            graph,
            (dummy,),
            str(tmp),
            input_names=["images"],
            output_names=list(OUTPUT_NAMES),
            dynamic_axes=axes,
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
        )
    model = onnx.load(str(tmp))
    try:
        import onnxslim

        model = onnxslim.slim(model)
    except ImportError:
        pass
    onnx.checker.check_model(model)
    del model.metadata_props[:]
    entry = model.metadata_props.add()
    entry.key, entry.value = "tinyseg", json.dumps(metadata(seg, max_det, "fp32"))
    onnx.save(model, str(tmp))
    os.replace(tmp, path)
    return path


def export_openvino(onnx_path: Path, path: str | Path, half: bool = False) -> Path:
    """ONNX -> OpenVINO IR (.xml + .bin), FP32 or FP16-compressed weights (what the NCS2 runs)."""
    path = Path(path).with_suffix(".xml")
    model = _convert_openvino(onnx_path)
    meta = json.loads(_onnx_meta(onnx_path))
    meta["precision"] = "fp16" if half else "fp32"
    model.set_rt_info(json.dumps(meta), ["tinyseg"])
    _save_ir(model, path, half)
    return path


PROTOTYPES = "/model/mask/prototypes"  # the identity conv _convert_openvino adds


def _convert_openvino(onnx_path: Path):
    """ONNX -> OpenVINO model, with an identity 1x1 conv after the prototype sum (`/model/mask/Add`).
    The mask MatMul and Gather read the prototypes channels-last ([B, h * w, K], `prototype_table`), the
    layout OpenVINO's CPU plugin keeps conv outputs in, so the permute could be free; but the plugin fuses the
    sum into the last prototype conv, and it does not merge a Transpose after a conv with a fused sum (a
    workaround in its graph optimizer), so the permute ran as a 0.9 ms Transpose + 0.2 ms Reorder. After a plain
    conv it is merged into nothing; the identity conv costs 0.15 ms (FP32 nano graph, 1 thread, static
    shapes: 11.5 -> 10.9 ms). Exact in FP32 and FP16. ONNX Runtime fuses the permute into its MatMul, so the
    ONNX file stays as it is."""
    import openvino as ov
    import openvino.opset13 as ops

    model = ov.convert_model(str(onnx_path))
    add = next((op for op in model.get_ops() if op.get_friendly_name() == "/model/mask/Add"), None)
    if add is None:
        return model
    k = add.get_output_partial_shape(0)[1].get_length()
    readers = list(add.output(0).get_target_inputs())
    eye = ops.constant(np.eye(k, dtype=np.float32).reshape(k, k, 1, 1))
    conv = ops.convolution(add.output(0), eye, [1, 1], [0, 0], [0, 0], [1, 1])
    conv.set_friendly_name(PROTOTYPES)
    for reader in readers:
        reader.replace_source_output(conv.output(0))
    model.validate_nodes_and_infer_types()
    return model


def _save_ir(model, path: Path, half: bool) -> None:
    import openvino as ov

    tmp = _atomic_path(path)
    ov.save_model(model, str(tmp), compress_to_fp16=half)
    os.replace(tmp.with_suffix(".bin"), path.with_suffix(".bin"))
    os.replace(tmp, path)


def _onnx_meta(path: Path) -> str:
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    return next((p.value for p in m.metadata_props if p.key == "tinyseg"), "{}")


def calibration_images(source: str, images_dir: str | None, size: int, num: int) -> np.ndarray:
    """Letterboxed uint8 [N, 3, S, S] calibration batch from a COCO JSON or an image folder."""
    from tinyseg.data.io import read_image

    src = Path(source)
    if src.is_dir():
        files = sorted(f for f in src.iterdir() if f.suffix.lower() in {".png", ".jpg", ".jpeg", ".bmp"})
    else:
        from tinyseg.data.coco import load_coco

        files = [r.file for r in load_coco(src, images_dir).images]
    if not files:
        raise ExportError(f"{source}: no calibration images found")
    rng = np.random.default_rng(0)
    files = [files[i] for i in sorted(rng.permutation(len(files))[:num])]
    return np.concatenate([letterbox_input(read_image(f), size)[1] for f in files])


def tail_nodes(onnx_path: Path, float_stem: bool = True) -> list[str]:
    """Names of the nodes INT8 quantization keeps in float: everything that decodes detections (peaks, top-K,
    gathers, the mask MatMul: exact comparisons and index arithmetic), the centre heatmap's output conv, whose
    logits are compared for equality with their 3x3 max, the last convs of the prototypes with their upsampling
    and sum, and (`float_stem`) the input normalisation with the stem conv.
    The rest of the network, the other heads and the shape classifier's MLP are quantized: keeping the box/mask
    heads and the prototype convs in float as well gave the same AP on the demo model (mask 0.439 either way)
    in a file 8 KB larger.
    Why the prototypes' outputs: quantized, OpenVINO moved their dequantization scale past the Add into the
    decode tail, where it ran as two float Multiplies over the prototype table ([B, 25600, 16] and the
    classifier's samples: 0.6 ms of an 8.4 ms INT8 graph, 1 thread); kept float, the graph took 8.03 ms
    (ONNX Runtime: no change, 7.02 vs 7.18 ms).
    Why the stem: ONNX Runtime's int8 conv over 3 input channels at 160x160 took 0.70 ms against 0.24 ms in
    float (per-node profile, 1 thread). Kept float together with the normalisation before it, it stays float
    (kept float alone, with its input and output quantized, ONNX Runtime re-quantizes its weights at load
    time: WeightBiasQuantization); measured: ONNX Runtime INT8 graph 7.37 -> 6.84 ms. OpenVINO's int8 stem is
    the faster one (0.16 ms + 0.10 ms input reorder against 0.28 + 0.21 ms in float): `float_stem=False`."""
    import onnx

    m = onnx.load(str(onnx_path))
    network = ("/model/", "/classifier/mlp/")
    keep = ("/model/mask/coarse/coarse.1/", "/model/mask/Resize", "/model/mask/fine/fine.2/", "/model/mask/Add")
    if float_stem:
        keep += ("/model/Cast", "/model/Sub", "/model/Mul", "/model/backbone/stem/")
    return [
        n.name
        for n in m.graph.node
        if not n.name.startswith(network) or n.name.startswith(keep) or "/heatmap/out/" in n.name
    ]


def compact(model):
    """Make a quantized ONNX model smaller without changing what it computes:
    - no all-zero zero points on the DequantizeLinear of weights and biases (symmetric int8 weights and int32
      biases have zero points of 0, the operator's default; ~25 KB on nano);
    - short tensor names (t + a base-36 number), no node names, no value_info: PyTorch's scope names
      (`/model/backbone/stages.1/...`) and shape annotations (~110 KB on nano) carry nothing a runtime needs.
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
    return model


def quantize_onnx(onnx_path: Path, path: str | Path, calib: np.ndarray) -> Path:
    """Static INT8 (QDQ, per-channel weights, uint8 activations) with onnxruntime; decode tail in float."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(calib[i : i + 1] for i in range(len(calib)))

        def get_next(self):
            x = next(self.it, None)
            return None if x is None else {"images": x}

    path = Path(path)
    with tempfile.TemporaryDirectory() as d:
        pre = Path(d) / "pre.onnx"
        quant_pre_process(str(onnx_path), str(pre), skip_symbolic_shape=True)
        tmp = _atomic_path(path)
        quantize_static(
            str(pre),
            str(tmp),
            Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=tail_nodes(pre),
        )
    import onnx

    model = compact(onnx.load(str(tmp)))
    meta = json.loads(_onnx_meta(onnx_path))
    meta["precision"] = "int8"
    del model.metadata_props[:]
    entry = model.metadata_props.add()
    entry.key, entry.value = "tinyseg", json.dumps(meta)
    onnx.save(model, str(tmp))
    os.replace(tmp, path)
    return path


def quantize_openvino(onnx_path: Path, path: str | Path, calib: np.ndarray) -> Path:
    """INT8 with NNCF post-training quantization; the decode tail and head outputs stay in float."""
    import nncf
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet

    path = Path(path).with_suffix(".xml")
    model = _convert_openvino(onnx_path)
    names = {op.get_friendly_name() for op in model.get_ops()}
    # OpenVINO splits an ONNX Conv `X` into the convolution `X/WithoutBiases` and the bias Add `X`.
    tail = tail_nodes(onnx_path, float_stem=False) + [PROTOTYPES]
    ignored = [m for n in tail for m in (n, n + "/WithoutBiases") if m in names]
    dataset = nncf.Dataset([calib[i : i + 1] for i in range(len(calib))])
    # MIXED: symmetric weights, asymmetric activations (the linear bottlenecks and residual sums are signed and
    # skewed). Measured on the demo model (300 training images for calibration): mask AP 0.476 -> 0.479 against
    # 0.487 in FP32, graph ~2-3% slower (8.06 -> 8.22 ms, 1 thread, interleaved).
    # MINMAX: activation ranges from the smallest and largest value over all calibration images, as onnxruntime
    # does, not NNCF's default mean over images of each image's min and max, which clips what only a few images
    # reach (the strongest centre peaks among them). Mask AP (FP32 / mean-min-max / min-max): demo model
    # 0.524 / 0.512 / 0.520, another demo model 0.487 / 0.479 / 0.488, DSB2018 0.460 / 0.447 / 0.460;
    # same speed (6.56 vs 6.48 ms, 1 thread, interleaved).
    q = nncf.quantize(
        model,
        dataset,
        preset=nncf.QuantizationPreset.MIXED,
        subset_size=len(calib),
        ignored_scope=nncf.IgnoredScope(names=ignored, validate=False),
        advanced_parameters=nncf.AdvancedQuantizationParameters(
            activations_range_estimator_params=RangeEstimatorParametersSet.MINMAX
        ),
    )
    meta = json.loads(_onnx_meta(onnx_path))
    meta["precision"] = "int8"
    q.set_rt_info(json.dumps(meta), ["tinyseg"])
    _save_ir(q, path, half=False)
    return path


@dataclass
class Parity:
    images: int
    detections: int
    max_box_diff: float  # pixels, over detections scoring >= conf in PyTorch
    min_mask_iou: float
    ok: bool

    def __str__(self) -> str:
        return (
            f"{'OK' if self.ok else 'MISMATCH'}: {self.images} images, {self.detections} detections, "
            f"max box difference {self.max_box_diff:.3f} px, min mask IoU {self.min_mask_iou:.4f}"
        )


def check_parity(
    seg: Segmenter,
    model_path: Path,
    images: np.ndarray,
    conf: float = 0.3,
    box_tol: float = 1.0,
    iou_tol: float = 0.99,
    device: str = "CPU",
    score_tol: float = 1e-5,
) -> Parity:
    """Run the exported model and PyTorch on the same letterboxed images and compare every PyTorch detection
    scoring >= conf with its counterpart (same class, score within score_tol; nearest box, since near-equal
    scores may swap places in top-K): boxes within box_tol px, mask IoU (at 0.5) >= iou_tol. A detection
    without a counterpart counts as box difference inf. Detections tied with the K-th score are skipped: which
    of equal scores makes the top-K cut is arbitrary."""
    from tinyseg.runtime import EdgeSegmenter

    edge = EdgeSegmenter(model_path, device=device)
    ref = seg.run(images, edge.meta["max_det"])
    max_diff, min_iou, n = 0.0, 1.0, 0
    for i in range(len(images)):
        out = edge.run(images[i : i + 1])
        cut = ref["scores"][i, -1] + score_tol
        for k in np.flatnonzero((ref["scores"][i] >= conf) & (ref["scores"][i] > cut)):
            n += 1
            cand = np.flatnonzero(
                (out["classes"][0] == ref["classes"][i, k])
                & (np.abs(out["scores"][0] - ref["scores"][i, k]) <= score_tol)
            )
            if not len(cand):
                max_diff = float("inf")
                continue
            diffs = np.abs(out["boxes"][0, cand] - ref["boxes"][i, k]).max(1)
            j = cand[int(diffs.argmin())]
            max_diff = max(max_diff, float(diffs.min()))
            a, b = ref["masks"][i, k] > 0.5, out["masks"][0, j] > 0.5
            union = (a | b).sum()
            min_iou = min(min_iou, float((a & b).sum() / union) if union else 1.0)
    return Parity(len(images), n, max_diff, min_iou, max_diff <= box_tol and min_iou >= iou_tol)


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
    verify_images: int = 8,
) -> Path:
    """`tinyseg export`: write the model, then verify it against PyTorch on a few images and say so."""
    if int8 and not calib:
        raise ExportError("--int8 needs calibration images: --calib ANN.json (or an image folder)")
    if half and (fmt != "openvino" or int8):
        raise ExportError("--half is for FP16 OpenVINO IR (--format openvino without --int8)")
    seg = Segmenter.load(weights)
    tag = "int8" if int8 else ("fp16" if half else "fp32")
    default = Path(weights).with_name(f"{Path(weights).stem}_{tag}" + (".onnx" if fmt == "onnx" else ".xml"))
    path = Path(out) if out else default
    with tempfile.TemporaryDirectory() as d:
        fp32 = export_onnx(seg, (path if fmt == "onnx" and not int8 else Path(d) / "fp32.onnx"), max_det)
        calib_batch = calibration_images(calib, images, seg.imgsz, calib_num) if calib else None
        if fmt == "onnx" and int8:
            quantize_onnx(fp32, path, calib_batch)
        elif fmt == "openvino":
            path = quantize_openvino(fp32, path, calib_batch) if int8 else export_openvino(fp32, path, half)
    check = calib_batch[:verify_images] if calib_batch is not None else _verify_batch(seg, verify_images)
    parity = check_parity(seg, path, check, conf=0.1, score_tol=2e-3 if half or int8 else 1e-5)
    size = path.stat().st_size + (path.with_suffix(".bin").stat().st_size if path.suffix == ".xml" else 0)
    print(f"wrote {path} ({size / 1e6:.2f} MB, {tag})")
    if int8:
        print(f"parity vs PyTorch (INT8: differences are expected; measure AP with tinyseg eval): {parity}")
    else:
        print(f"parity vs PyTorch: {parity}")
        if not parity.ok:
            raise ExportError(f"{path}: exported model does not match PyTorch ({parity})")
    return path


def _verify_batch(seg: Segmenter, n: int) -> np.ndarray:
    """Images to verify an export on when no calibration data was given: synthetic scenes of the same kind
    the demo trains on (deterministic), letterboxed to the model's size."""
    from tinyseg.data.synthetic import render_image

    out = []
    for i in range(n):
        img, _ = render_image(seg.imgsz, np.random.default_rng([12345, i]))
        out.append(img[:, :, ::-1].transpose(2, 0, 1))
    return np.ascontiguousarray(np.stack(out))
