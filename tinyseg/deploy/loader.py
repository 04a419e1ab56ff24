"""One entry point for every model file: a checkpoint (.pt) runs with PyTorch, an exported model (.onnx, .xml, .tflite)
with the torch-free runtime. Importing this module imports neither."""

from __future__ import annotations

from pathlib import Path

from tinyseg.errors import UsageError

EXPORTED_SUFFIXES = (".onnx", ".xml", ".tflite")


def is_exported(weights: str | Path) -> bool:
    return Path(weights).suffix.lower() in EXPORTED_SUFFIXES


def load_predictor(
    weights: str | Path,
    backend: str = "auto",
    device: str | None = None,
    threads: int | None = None,
    delegate: str | None = None,
):
    """A checkpoint (.pt) -> PyTorch Segmenter; an exported model (.onnx / .xml) -> the torch-free EdgeSegmenter.
    Both have .predict(image, conf), .run(letterboxed batch), .class_names, .cat_ids and .imgsz."""
    if is_exported(weights):
        if backend == "torch":
            raise UsageError(
                f"{weights}: an exported model runs with --backend onnxruntime, openvino or litert, not torch"
            )
        from tinyseg.deploy.runtime import EdgeSegmenter

        return EdgeSegmenter(weights, backend, (device or "CPU").upper(), threads, delegate)
    if backend not in ("auto", "torch"):
        raise UsageError(
            f"{weights}: a checkpoint runs with --backend torch; for {backend}, export it first "
            f"(tinyseg export --weights {weights} --format onnx)"
        )
    import torch

    from tinyseg.deploy.predict import Segmenter

    if threads:
        torch.set_num_threads(threads)
    return Segmenter.load(weights, (device or "cpu").lower())
