"""TinySeg: backbone -> FPN fused to stride 4 -> heatmap, box and mask heads -> detections.

`forward` returns the dense maps as named tensors; `read_instances` reads what each detection needs at given
cells (boxes, mask parameters, class logits), the one place both `detect` (at the heatmap's peaks) and
training (at the objects' centres) read them; `detect` is everything the exported graph computes.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from tinyseg.config import ModelConfig
from tinyseg.models.backbone import MobileNetV2Backbone
from tinyseg.models.heads import BoxHead, HeatmapHead, ShapeClassifier
from tinyseg.models.masks import build_mask_head
from tinyseg.models.neck import FPNFuse
from tinyseg.models.postprocess import cell_centers, decode_boxes, find_peaks, gather, take, top_pairs

# Normalisation lives in the graph, so the deployed model takes raw uint8 pixels: (x - mean) / std maps
# 0..255 to about -2..2.
PIXEL_MEAN = 127.5
PIXEL_STD = 63.75
# The heads read the FPN fused to this stride (neck.py says why 4), the mask features sit at this backbone
# level: half the heads' stride, fine enough for the shapes of small objects.
HEAD_STRIDE = 4
MASK_STRIDE = 2


class TinySeg(nn.Module):
    def __init__(
        self,
        backbone: MobileNetV2Backbone,
        neck: FPNFuse,
        heatmap: HeatmapHead,
        box: BoxHead,
        mask: nn.Module,
        classifier: ShapeClassifier,
        mask_stride: int,
        score_thresh: float,
    ):
        super().__init__()
        self.backbone, self.neck, self.heatmap, self.box, self.mask = backbone, neck, heatmap, box, mask
        self.classifier = classifier
        self.score_thresh = score_thresh  # masks are assembled only for detections above it (top_pairs)
        self.stride = neck.stride  # of the heatmap / box / mask-parameter maps
        self.mask_stride = mask_stride  # of the mask features and the assembled masks
        self.register_buffer("mean", torch.full((1, 3, 1, 1), PIXEL_MEAN), persistent=False)
        self.register_buffer("inv_std", torch.full((1, 3, 1, 1), 1 / PIXEL_STD), persistent=False)

    def forward(self, images: torch.Tensor, targets: dict | None = None) -> dict[str, torch.Tensor]:
        """images [B, 3, S, S] RGB, uint8 or float in 0..255 -> dict of
        heatmap [B, 1, S/4, S/4] centre logits, classes [B, C, S/4, S/4] appearance class logits,
        box [B, 4, S/4, S/4] raw ltrb distances (see decode_boxes),
        mask_params [B, P, S/4, S/4], mask_features [B, F, S/2, S/2];
        with training `targets` (training/targets.py) also what the loss reads at the true objects (read_targets)."""
        x = (images.float() - self.mean) * self.inv_std
        feats = self.backbone(x)
        f = self.neck(feats)
        params, features = self.mask(f, feats[self.mask_stride])
        heat = self.heatmap(f)
        outputs = {
            "heatmap": heat[:, :1],
            "classes": heat[:, 1:],
            "box": self.box(f),
            "mask_params": params,
            "mask_features": features,
        }
        if targets is not None:
            outputs.update(self.read_targets(outputs, targets))
        return outputs

    def read_targets(self, outputs: dict[str, torch.Tensor], targets: dict) -> dict[str, torch.Tensor]:
        """Read the detections at the true centres -> mask_logits [Q] at the targets' mask cells; class_logits
        [B, N, C] from the predicted mask in the predicted box (exactly what inference sees, detached so the
        class loss does not bend masks or boxes) and class_logits_truth [B, N, C] from the true mask in the
        true box (clean, fast to learn)."""
        inst = self.read_instances(outputs, targets["centers"], detach_masks=True)
        features = outputs["mask_features"]
        mask_logits = self.mask.assemble_cells(
            inst["params"], features, inst["centers"], targets["boxes"], targets["mask_instance"], targets["mask_cell"]
        )
        truth = self.classifier.sample(targets["masks"], targets["boxes"], self.mask_stride).float() / 255
        appearance = gather(outputs["classes"].float(), targets["centers"])
        return {
            "mask_logits": mask_logits,
            "class_logits": inst["class_logits"],
            "class_logits_truth": self.classifier(appearance, truth),
        }

    def read_instances(
        self, outputs: dict[str, torch.Tensor], pos: torch.Tensor, detach_masks: bool = False
    ) -> dict[str, torch.Tensor]:
        """Read detections at flat cells pos [B, K] of the stride-`stride` maps -> centers [B, K, 2] (cells),
        boxes [B, K, 4] (xyxy input pixels), params [B, K, P] and class_logits [B, K, C]: the appearance
        logits at the cell plus the shape classifier on the predicted mask, sampled over the predicted box.
        detach_masks: the classifier's samples carry no gradient into masks and boxes (training)."""
        h, w = outputs["heatmap"].shape[-2:]
        centers = cell_centers(pos, w)
        boxes = decode_boxes(gather(outputs["box"].float(), pos), centers, self.stride, h * self.stride)
        params, features = gather(outputs["mask_params"], pos), outputs["mask_features"]
        s_boxes, s_params, s_features = boxes, params, features
        if detach_masks:
            s_boxes, s_params, s_features = boxes.detach().nan_to_num(0.0), params.detach(), features.detach()
        index = self.classifier.points(s_boxes, *features.shape[-2:], self.mask_stride)
        silhouettes = self.mask.assemble_at(s_params, s_features, centers, s_boxes, index).sigmoid()
        class_logits = self.classifier(gather(outputs["classes"].float(), pos), silhouettes.float())
        return {"centers": centers, "boxes": boxes, "params": params, "class_logits": class_logits}

    def detect(self, images: torch.Tensor, max_det: int, fixed_k: bool = False) -> dict[str, torch.Tensor]:
        """images -> detections: everything the exported graph computes (see decode)."""
        return self.decode(self(images), max_det, fixed_k)

    def decode(self, outputs: dict[str, torch.Tensor], max_det: int, fixed_k: bool = False) -> dict[str, torch.Tensor]:
        """Dense outputs -> detections in network-input coordinates, sorted by score: boxes [B, K, 4] xyxy
        pixels, scores [B, K], classes [B, K] int64, masks [B, K, S/2, S/2] probabilities. A mask is meant
        inside its box grown by MASK_MARGIN px; the host cuts it there at full resolution (deploy/results.py).
        K is the detections scoring >= score_thresh, or (fixed_k) always max_det: a static shape."""
        objectness, pos = find_peaks(outputs["heatmap"], max_det)
        inst = self.read_instances(outputs, pos)
        scores, peak, classes = top_pairs(objectness, inst["class_logits"], None if fixed_k else self.score_thresh)
        b = pos.shape[0]
        boxes, centers, params = (take(inst[k], peak, b) for k in ("boxes", "centers", "params"))
        masks = self.mask.assemble(params, outputs["mask_features"], centers, boxes).sigmoid()
        return {"boxes": boxes, "scores": scores, "classes": classes, "masks": masks}


def build_model(cfg: ModelConfig) -> TinySeg:
    backbone = MobileNetV2Backbone(cfg.width, tuple(cfg.depths), cfg.expand, cfg.fused)
    neck = FPNFuse({s: c for s, c in backbone.channels.items() if s >= HEAD_STRIDE}, cfg.neck_channels)
    fine = backbone.channels[MASK_STRIDE]
    return TinySeg(
        backbone,
        neck,
        HeatmapHead(cfg.neck_channels, cfg.head_channels, cfg.num_classes),
        BoxHead(cfg.neck_channels, cfg.head_channels),
        build_mask_head(
            cfg.mask_head, cfg.neck_channels, fine, cfg.head_channels, cfg.num_prototypes, HEAD_STRIDE, MASK_STRIDE
        ),
        ShapeClassifier(cfg.num_classes),
        MASK_STRIDE,
        cfg.score_thresh,
    )


def graph_runner(model: TinySeg, device: str = "cpu", max_det: int = 100) -> Callable[[np.ndarray], dict]:
    """The model as a graph-like callable: letterboxed uint8 [B, 3, S, S] numpy -> dict of numpy detections,
    the contract of an exported graph, so one evaluator serves PyTorch and every edge backend."""

    @torch.no_grad()
    def run(images: np.ndarray) -> dict[str, np.ndarray]:
        model.eval()
        det = model.detect(torch.from_numpy(images).to(device), max_det)
        return {k: v.float().cpu().numpy() if v.is_floating_point() else v.cpu().numpy() for k, v in det.items()}

    return run


def detect_flops(model: TinySeg, size: int, max_det: int) -> int:
    """FLOPs (2 per multiply-add, torch.utils.flop_counter) of one size x size image through detect(),
    post-processing included, in the worst case: all max_det detections get masks (score_thresh 0)."""
    from torch.utils.flop_counter import FlopCounterMode

    thresh, model.score_thresh = model.score_thresh, 0.0
    try:
        with FlopCounterMode(display=False) as fc, torch.no_grad():
            model.detect(torch.zeros(1, 3, size, size), max_det)
    finally:
        model.score_thresh = thresh
    return fc.get_total_flops()
