"""Deployment predictor: numpy + OpenCV + onnxruntime, openvino *or* LiteRT. Never imports torch.

    from tinyseg.runtime import EdgeSegmenter
    seg = EdgeSegmenter("model.onnx")            # or model.xml (OpenVINO IR), model.tflite (LiteRT)
    det = seg.predict(rgb_image)                # same Detections as the PyTorch Segmenter

Install without torch: `pip install tinyseg[edge]` (and `tinyseg[litert]` for .tflite).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from tinyseg.deploy.results import Detections, predict_image
from tinyseg.errors import EdgeRuntimeError

BACKENDS = ("onnxruntime", "openvino", "litert")
MODEL_SUFFIXES = (".onnx", ".xml", ".tflite")
OUTPUT_NAMES = ("boxes", "scores", "classes", "masks")
# What the network half of a split .tflite pair gives its decode tail (TinySeg.forward's dense maps).
DENSE_NAMES = ("heatmap", "classes", "box", "mask_params", "mask_features")
TAIL_SUFFIX = ".tail.tflite"


def parse_metadata(text: str | None, path: Path) -> dict:
    """The `tinyseg` metadata an export embeds, checked: class_names (strings), imgsz (a multiple of 32),
    max_det (>= 1), cat_ids (one integer per class; 1..C for models exported before they were stored)."""
    if not text:
        raise EdgeRuntimeError(f"{path}: no tinyseg metadata; export the model with `tinyseg export`")
    try:
        meta = json.loads(text)
    except (ValueError, RecursionError):
        raise EdgeRuntimeError(f"{path}: tinyseg metadata is not valid JSON") from None
    if not isinstance(meta, dict):
        raise EdgeRuntimeError(f"{path}: tinyseg metadata is not a mapping")
    names, size, max_det = meta.get("class_names"), meta.get("imgsz"), meta.get("max_det")
    if not (isinstance(names, list) and names and all(isinstance(n, str) for n in names)):
        raise EdgeRuntimeError(f"{path}: tinyseg metadata class_names is not a list of names")
    if not (type(size) is int and 32 <= size <= 4096 and size % 32 == 0):
        raise EdgeRuntimeError(f"{path}: tinyseg metadata imgsz {str(size)[:20]} is not a multiple of 32 in 32..4096")
    if not (type(max_det) is int and max_det >= 1):
        raise EdgeRuntimeError(f"{path}: tinyseg metadata max_det {str(max_det)[:20]} is not a count")
    ids = meta.setdefault("cat_ids", list(range(1, len(names) + 1)))
    if not (isinstance(ids, list) and len(ids) == len(names) and all(type(c) is int for c in ids)):
        raise EdgeRuntimeError(f"{path}: tinyseg metadata cat_ids is not one integer per class")
    return meta


def model_file_size(path: Path) -> int:
    """Bytes of an exported model (OpenVINO .xml: with its .bin; a split .tflite: with its tail)."""
    tail = path.with_name(path.stem + TAIL_SUFFIX)
    extra = path.with_suffix(".bin") if path.suffix == ".xml" else tail if tail.is_file() else None
    return path.stat().st_size + (extra.stat().st_size if extra else 0)


def _missing(backend: str) -> EdgeRuntimeError:
    extra, pkg = {"onnxruntime": ("edge", "onnxruntime"), "openvino": ("edge", "openvino")}.get(
        backend, ("litert", "ai-edge-litert")
    )
    return EdgeRuntimeError(
        f"the {backend} backend is not installed: pip install 'tinyseg[{extra}]' (or pip install {pkg})"
    )


def tflite_metadata(model: bytes, path: Path) -> str | None:
    """The `tinyseg` entry of a .tflite's metadata table (tflite.py writes it)."""
    try:
        from ai_edge_litert import schema_py_generated as schema
    except ImportError:
        raise _missing("litert") from None

    try:
        m = schema.Model.GetRootAs(model, 0)
        for i in range(m.MetadataLength()):
            if m.Metadata(i).Name() == b"tinyseg":
                return m.Buffers(m.Metadata(i).Buffer()).DataAsNumpy().tobytes().decode()
    except Exception:  # flatbuffers raises whatever a truncated buffer makes it hit
        raise EdgeRuntimeError(f"{path}: not a loadable TFLite model") from None
    return None


def _output_quant(runner) -> list[tuple[str, tuple[float, int]]]:
    """A signature's outputs in order, each with its (scale, zero point); scale 0: a float output."""
    details = runner.get_output_details()
    return [(k, details[k].get("quantization", (0.0, 0))) for k in _numbered(details)]


def _tail_name(meta_text: str | None) -> str | None:
    """The decode tail's file name a split pair's metadata records (bad metadata: none; parse_metadata says why)."""
    try:
        tail = json.loads(meta_text or "{}").get("tail")
    except (ValueError, AttributeError):
        return None
    return tail if isinstance(tail, str) and Path(tail).name == tail else None


def _numbered(names) -> list[str]:
    """LiteRT signature names (args_0, output_3, ...) in their number's order, not the alphabet's."""
    return sorted(names, key=lambda n: int(n.rsplit("_", 1)[-1]))


class LiteRTGraph:
    """A .tflite, or a split pair (network + decode tail, tflite.py), as one call: uint8 [B, 3, S, S] -> the four
    outputs. LiteRT graphs have batch 1 and K = max_det: images run one at a time."""

    def __init__(self, path: Path, meta_text: str | None, threads: int | None, delegate: str | None):
        try:
            from ai_edge_litert.interpreter import Interpreter, load_delegate
        except ImportError:
            try:
                from tflite_runtime.interpreter import Interpreter, load_delegate
            except ImportError:
                raise _missing("litert") from None

        def runner(file: Path):
            delegates = [load_delegate(delegate)] if delegate else None
            try:
                interp = Interpreter(model_path=str(file), num_threads=threads, experimental_delegates=delegates)
                return interp.get_signature_runner()
            except (ValueError, RuntimeError) as e:
                raise EdgeRuntimeError(f"{file}: not a loadable TFLite model ({str(e)[:200]})") from None

        self.network = runner(path)
        self.tail = runner(path.with_name(tail)) if (tail := _tail_name(meta_text)) else None
        net_in = self.network.get_input_details()
        self.input = _numbered(net_in)[0]
        shape, dtype = list(net_in[self.input]["shape"]), np.dtype(net_in[self.input]["dtype"])
        # A split pair's network takes pixels channels-last (tflite.NetworkGraph), float or, full-integer,
        # quantized (scale, zero point); the runtime converts the uint8 NCHW images.
        self.channels_last = self.tail is not None and shape[-1] == 3
        self.input_dtype = dtype
        self.input_quant = net_in[self.input].get("quantization", (0.0, 0))
        if self.channels_last:
            shape, dtype = [shape[0], 3, *shape[1:3]], np.dtype(np.uint8)
        # Read once, not per image: the tail's input names and each runner's outputs in order with their
        # quantization (scale 0: a float output).
        self._tail_inputs = _numbered(self.tail.get_input_details()) if self.tail is not None else []
        self._output_quant = {id(r): _output_quant(r) for r in (self.network, self.tail) if r is not None}
        self.signature = (
            [("images", f"tensor({dtype.name})", shape)] + [("extra", "", [])] * (len(net_in) - 1),
            list(OUTPUT_NAMES) if len(self._output_quant[id(self.tail or self.network)]) == len(OUTPUT_NAMES) else [],
        )

    def __call__(self, images: np.ndarray) -> list[np.ndarray]:
        outs = []
        for image in images:
            res = self._run(self.network, {self.input: self._network_input(image)})
            if self.tail is not None:
                res = self._run(self.tail, dict(zip(self._tail_inputs, res)))
            outs.append(res)
        return [np.concatenate([o[i] for o in outs]) for i in range(len(OUTPUT_NAMES))]

    def _run(self, runner, inputs: dict) -> list[np.ndarray]:
        """One signature call -> its outputs in order, integer ones back to float: (q - zero_point) * scale."""
        res = runner(**inputs)
        return [
            (res[k].astype(np.float32) - zero) * np.float32(scale) if scale else res[k]
            for k, (scale, zero) in self._output_quant[id(runner)]
        ]

    def _network_input(self, image: np.ndarray) -> np.ndarray:
        if not self.channels_last:
            return image[None]
        x = image.transpose(1, 2, 0)[None].astype(np.float32)
        scale, zero = self.input_quant
        if scale:
            info = np.iinfo(self.input_dtype)
            x = np.clip(np.round(x / scale + zero), info.min, info.max)
        return x.astype(self.input_dtype)


class EdgeSegmenter:
    """Runs an exported tinyseg graph (.onnx, OpenVINO .xml or LiteRT .tflite). The graph does all decoding; this
    class only letterboxes the image on the way in and maps boxes and masks back to the original size on the way
    out. `delegate`: a LiteRT delegate library (an NPU's, e.g. libvx_delegate.so) for .tflite models."""

    def __init__(
        self,
        path: str | Path,
        backend: str = "auto",
        device: str = "CPU",
        threads: int | None = None,
        delegate: str | None = None,
    ):
        self.path = Path(path)
        if not self.path.is_file():
            raise EdgeRuntimeError(f"{self.path}: model file not found")
        suffix = self.path.suffix.lower()
        if suffix not in MODEL_SUFFIXES:
            raise EdgeRuntimeError(
                f"{self.path}: not an exported tinyseg model (expected .onnx, OpenVINO .xml or .tflite)"
            )
        if backend == "auto":
            backend = {".xml": "openvino", ".tflite": "litert"}.get(suffix, "onnxruntime")
        if backend not in BACKENDS:
            raise EdgeRuntimeError(f"unknown backend {backend!r} (choose {', '.join(BACKENDS)})")
        if suffix == ".xml" and backend != "openvino":
            raise EdgeRuntimeError(f"{self.path}: OpenVINO IR needs --backend openvino")
        if (suffix == ".tflite") != (backend == "litert"):
            raise EdgeRuntimeError(f"{self.path}: the litert backend runs .tflite models, and only those")
        self.backend = backend
        if backend == "onnxruntime":
            self._init_onnxruntime(threads)
        elif backend == "litert":
            self._meta_text = tflite_metadata(self.path.read_bytes(), self.path)
            self._litert = LiteRTGraph(self.path, self._meta_text, threads, delegate)
            self._signature = self._litert.signature
        else:
            self._init_openvino(device, threads)
        self.meta = parse_metadata(self._meta_text, self.path)
        self.class_names: list[str] = self.meta["class_names"]
        self.cat_ids: list[int] = self.meta["cat_ids"]
        self.imgsz: int = self.meta["imgsz"]
        self._check_signature()
        if backend == "openvino":
            self._openvino_request(1)  # compile now: a model the device cannot run fails here, not mid-stream

    def _init_onnxruntime(self, threads: int | None) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise _missing("onnxruntime") from None
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(self.path), opts, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own exception types for a bad file
            raise EdgeRuntimeError(f"{self.path}: not a loadable ONNX model ({str(e)[:200]})") from None
        self._meta_text = self.session.get_modelmeta().custom_metadata_map.get("tinyseg")
        i = self.session.get_inputs()
        self._signature = (
            [(x.name, x.type, list(x.shape)) for x in i],
            [o.name for o in self.session.get_outputs()],
        )

    def _init_openvino(self, device: str, threads: int | None) -> None:
        try:
            import openvino as ov
        except ImportError:
            raise _missing("openvino") from None
        core = ov.Core()
        try:
            model = core.read_model(str(self.path))
        except Exception as e:
            raise EdgeRuntimeError(f"{self.path}: not a loadable OpenVINO model ({str(e)[:200]})") from None
        if device not in core.available_devices and device not in ("AUTO", "MULTI", "HETERO"):
            raise EdgeRuntimeError(
                f"OpenVINO device {device!r} not available here (have: {', '.join(core.available_devices)})"
            )
        try:
            self._meta_text = model.get_rt_info(["tinyseg"]).astype(str)
        except Exception:  # OpenVINO raises its own type for a missing key
            self._meta_text = None
        self._signature = (
            [
                (x.get_any_name(), f"tensor({x.get_element_type().get_type_name()})", list(x.get_partial_shape()))
                for x in model.inputs
            ],
            [name for o in model.outputs for name in o.get_names()],
        )
        config: dict = {}
        if device == "CPU":
            # OpenVINO's CPU plugin silently computes in bf16 where the CPU supports it; ask for f32 so an FP32
            # model gives FP32 results (INT8 models keep their integer kernels either way).
            config["INFERENCE_PRECISION_HINT"] = "f32"
            if threads:
                config["INFERENCE_NUM_THREADS"] = threads
        self._core, self._model, self._device, self._config = core, model, device, config
        self._requests: dict = {}

    def _check_signature(self) -> None:
        """The graph takes images uint8 [B, 3, S, S] (S from its metadata) and gives the four outputs."""
        inputs, outputs = self._signature
        s = self.imgsz
        ok = len(inputs) == 1 and inputs[0][0] == "images" and inputs[0][1] in ("tensor(uint8)", "tensor(u8)")
        ok = ok and len(inputs[0][2]) == 4 and [str(d) for d in inputs[0][2][1:]] == ["3", str(s), str(s)]
        if not ok:
            raise EdgeRuntimeError(f"{self.path}: the graph's input {inputs} is not images uint8 [B, 3, {s}, {s}]")
        missing = [o for o in OUTPUT_NAMES if o not in outputs]
        if missing:
            raise EdgeRuntimeError(f"{self.path}: the graph has no output {', '.join(missing)}")

    def _openvino_request(self, batch: int):
        """An infer request compiled for this batch size (cached). OpenVINO's CPU plugin runs a static-shape
        graph faster: its layout optimizations skip dynamic nodes (the prototypes are handed to the mask MatMul
        without a copy only with static shapes)."""
        if batch not in self._requests:
            model = self._model.clone()
            s = self.imgsz
            model.reshape({model.inputs[0]: [batch, 3, s, s]})
            compiled = self._core.compile_model(model, self._device, self._config)
            self._requests[batch] = (compiled, compiled.create_infer_request())
        return self._requests[batch]

    def run(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """Raw graph call: letterboxed uint8 [B, 3, S, S] -> {boxes, scores, classes, masks} (input coordinates)."""
        s = self.imgsz
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (3, s, s):
            raise EdgeRuntimeError(
                f"{self.path}: expects uint8 [B, 3, {s}, {s}] (NCHW, RGB, letterboxed); got "
                f"{images.dtype} {list(images.shape)}"
            )
        if self.backend == "onnxruntime":
            outs = self.session.run(None, {"images": images})
        elif self.backend == "litert":
            outs = self._litert(images)
        else:
            compiled, request = self._openvino_request(len(images))
            res = request.infer({0: images})
            outs = [res[o] for o in compiled.outputs]
        return dict(zip(OUTPUT_NAMES, outs))

    def predict(self, image: np.ndarray, conf: float = 0.3) -> Detections:
        """RGB uint8 [H, W, 3] -> Detections at the original size with scores >= conf."""
        return predict_image(self.run, image, self.imgsz, conf, self.class_names)
