"""Deployment predictor: numpy + OpenCV + onnxruntime *or* openvino. Never imports torch.

    from tinyseg.runtime import EdgeSegmenter
    seg = EdgeSegmenter("model.onnx")            # or model.xml (OpenVINO IR)
    det = seg.predict(rgb_image)                # same Detections as the PyTorch Segmenter

Install without torch: `pip install tinyseg[edge]`.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from tinyseg.deploy.results import Detections, predict_image
from tinyseg.errors import EdgeRuntimeError

BACKENDS = ("onnxruntime", "openvino")
MODEL_SUFFIXES = (".onnx", ".xml")


def model_file_size(path: Path) -> int:
    """Bytes of an exported model (OpenVINO .xml: with its .bin)."""
    return path.stat().st_size + (path.with_suffix(".bin").stat().st_size if path.suffix == ".xml" else 0)


def _missing(backend: str) -> EdgeRuntimeError:
    pkg = {"onnxruntime": "onnxruntime", "openvino": "openvino"}[backend]
    return EdgeRuntimeError(
        f"the {backend} backend is not installed: pip install 'tinyseg[edge]' (or pip install {pkg})"
    )


class EdgeSegmenter:
    """Runs an exported tinyseg graph (.onnx or OpenVINO .xml). The graph does all decoding; this class only
    letterboxes the image on the way in and maps boxes and masks back to the original size on the way out."""

    def __init__(self, path: str | Path, backend: str = "auto", device: str = "CPU", threads: int | None = None):
        self.path = Path(path)
        if not self.path.is_file():
            raise EdgeRuntimeError(f"{self.path}: model file not found")
        suffix = self.path.suffix.lower()
        if suffix not in MODEL_SUFFIXES:
            raise EdgeRuntimeError(f"{self.path}: not an exported tinyseg model (expected .onnx or OpenVINO .xml)")
        if backend == "auto":
            backend = "openvino" if suffix == ".xml" else "onnxruntime"
        if backend not in BACKENDS:
            raise EdgeRuntimeError(f"unknown backend {backend!r} (choose {', '.join(BACKENDS)})")
        if suffix == ".xml" and backend != "openvino":
            raise EdgeRuntimeError(f"{self.path}: OpenVINO IR needs --backend openvino")
        self.backend = backend
        if backend == "onnxruntime":
            self._init_onnxruntime(threads)
        else:
            self._init_openvino(device, threads)
        for key in ("class_names", "imgsz", "max_det"):
            if key not in self.meta:
                raise EdgeRuntimeError(f"{self.path}: no tinyseg metadata ({key}); export it with `tinyseg export`")
        self.class_names: list[str] = list(self.meta["class_names"])
        # The dataset's category id of each label (models exported before they were stored: 1..C).
        self.cat_ids: list[int] = [int(c) for c in self.meta.get("cat_ids", range(1, len(self.class_names) + 1))]
        self.imgsz: int = int(self.meta["imgsz"])
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
        self.meta = json.loads(self.session.get_modelmeta().custom_metadata_map.get("tinyseg", "{}"))

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
            self.meta = json.loads(model.get_rt_info(["tinyseg"]).astype(str))
        except Exception:
            self.meta = {}
        config: dict = {}
        if device == "CPU":
            # OpenVINO's CPU plugin silently computes in bf16 where the CPU supports it; ask for f32 so an FP32
            # model gives FP32 results (INT8 models keep their integer kernels either way).
            config["INFERENCE_PRECISION_HINT"] = "f32"
            if threads:
                config["INFERENCE_NUM_THREADS"] = threads
        self._core, self._model, self._device, self._config = core, model, device, config
        self._requests: dict = {}

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
        else:
            compiled, request = self._openvino_request(len(images))
            res = request.infer({0: images})
            outs = [res[o] for o in compiled.outputs]
        return dict(zip(("boxes", "scores", "classes", "masks"), outs))

    def predict(self, image: np.ndarray, conf: float = 0.3) -> Detections:
        """RGB uint8 [H, W, 3] -> Detections at the original size with scores >= conf."""
        return predict_image(self.run, image, self.imgsz, conf, self.class_names)
