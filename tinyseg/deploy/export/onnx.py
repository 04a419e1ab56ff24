"""ONNX export: one self-contained graph (normalisation, network, peak finding, top-K, boxes, classes, masks).

Graph contract (same for every format; docs/design.md says why masks stay at S/2 and are cut by the host):
  input   images   uint8 [B, 3, S, S]   RGB, letterboxed to the model's size S (pad value PAD_VALUE), NCHW
  outputs boxes    float32 [B, K, 4]    xyxy in input pixels
          scores   float32 [B, K]       sorted descending; K is dynamic: the most scores >= model.score_thresh
                                        in any image of the batch (at least 1, at most max_det)
          classes  int64   [B, K]       0-based labels
          masks    float32 [B, K, S/2, S/2]  probabilities on the letterboxed grid, meant inside the box grown
                                             by MASK_MARGIN input px: cut them there (deploy/results.py does)
Metadata (class names, category ids, size, layout, node names INT8 keeps in float) is embedded in the file
under the key `tinyseg`.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from tinyseg.config import MASK_MARGIN
from tinyseg.data.transforms import PAD_VALUE
from tinyseg.deploy.predict import Segmenter
from tinyseg.deploy.runtime import OUTPUT_NAMES
from tinyseg.io import atomic_write
from tinyseg.models.detector import TinySeg
from tinyseg.models.masks import PrototypeMasks

GRAPH_FORMAT = "tinyseg/3"  # bumped when the outputs change meaning (git log has the history)
ROOT = "model"  # the attribute ExportGraph keeps the model under: the first level of its node names


class ExportGraph(nn.Module):
    """TinySeg + post-processing as one module with tensor outputs (what goes into the graph)."""

    def __init__(self, model: TinySeg, max_det: int):
        super().__init__()
        self.model, self.max_det = model, max_det

    def forward(self, images: torch.Tensor):
        det = self.model.detect(images, self.max_det)
        return tuple(det[k] for k in OUTPUT_NAMES)


def node_scope(model: nn.Module, path: str = "", in_forward: bool = True) -> str:
    """The prefix torch.onnx gives the names of the nodes of submodule `path` (dotted, as named_modules()):
    one level per module that is called, each named relative to its nearest ancestor that is not an
    nn.Sequential (ModuleList / ModuleDict are never called: no level). `in_forward`: called inside the model's
    forward (under the ROOT level), else from detect() (the root scope)."""
    levels, anchor = [ROOT] if in_forward else [], ""
    parts = path.split(".") if path else []
    for i in range(len(parts)):
        prefix = ".".join(parts[: i + 1])
        module = model.get_submodule(prefix)
        if isinstance(module, nn.ModuleList | nn.ModuleDict):
            continue
        levels.append(prefix[len(anchor) + 1 :] if anchor else prefix)
        if not isinstance(module, nn.Sequential):
            anchor = prefix
    return "/" + "/".join(levels) + "/"


def float_node_names(model: TinySeg) -> dict:
    """Node-name prefixes INT8 quantization needs (docs/design.md says why each stays float):
    network: what is quantized at all (the rest is the decode tail); keep_float: inside it, the centre
    heatmap's output conv and the last convs, upsampling and sum of the mask design's shared map; stem: the
    input normalisation and the stem conv; prototype_sum: the Add that forms the prototypes."""
    # Every mask design forms its shared map (prototypes, mask features, saliency) as coarse + fine.
    mask = node_scope(model, "mask")
    coarse, fine = f"mask.coarse.{len(model.mask.coarse) - 1}", f"mask.fine.{len(model.mask.fine) - 1}"
    heads = [node_scope(model, "heatmap.out"), node_scope(model, coarse), node_scope(model, fine)]
    heads += [mask + "Resize", mask + "Add"]
    sum_node = mask + "Add" if isinstance(model.mask, PrototypeMasks) else ""
    root = node_scope(model)
    return {
        "network": [root, node_scope(model, "classifier.mlp", in_forward=False)],
        "keep_float": heads,
        "stem": [root + "Cast", root + "Sub", root + "Mul", node_scope(model, "backbone.stem")],
        "prototype_sum": sum_node,
    }


def metadata(seg: Segmenter, max_det: int, precision: str) -> dict:
    return {
        "class_names": seg.class_names,
        "cat_ids": seg.cat_ids,
        "imgsz": seg.imgsz,
        "max_det": max_det,
        "layout": "NCHW",
        "dtype": "uint8",
        "color": "RGB",
        "pad_value": PAD_VALUE,
        "mask_stride": seg.model.mask_stride,
        "mask_margin": MASK_MARGIN,
        "outputs": list(OUTPUT_NAMES),
        "precision": precision,
        "score_thresh": seg.model.score_thresh,
        "format": GRAPH_FORMAT,
        "nodes": float_node_names(seg.model),
    }


def export_onnx(seg: Segmenter, path: str | Path, max_det: int | None = None, opset: int = 17) -> Path:
    """Trace the whole pipeline to ONNX (batch dimension dynamic), check it, simplify it where onnxslim is
    installed, embed the metadata. Written atomically."""
    import onnx

    path = Path(path)
    max_det = max_det or seg.cfg.model.max_det
    dummy = torch.zeros(1, 3, seg.imgsz, seg.imgsz, dtype=torch.uint8)
    axes = {"images": {0: "batch"}, **{k: {0: "batch"} for k in OUTPUT_NAMES}}
    with atomic_write(path) as tmp, torch.no_grad():
        torch.onnx.export(
            ExportGraph(seg.model, max_det).eval(),
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
        set_onnx_meta(model, metadata(seg, max_det, "fp32"))
        onnx.save(model, str(tmp))
    return path


def set_onnx_meta(model, meta: dict) -> None:
    del model.metadata_props[:]
    entry = model.metadata_props.add()
    entry.key, entry.value = "tinyseg", json.dumps(meta)


def onnx_meta(path: Path) -> dict:
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    return json.loads(next((p.value for p in m.metadata_props if p.key == "tinyseg"), "{}"))
