"""TinySeg: backbone -> FPN fused to stride 4 -> heatmap, box and mask heads. Returns named tensors."""

from __future__ import annotations

import torch
from torch import nn

from tinyseg.config import ModelConfig
from tinyseg.models.backbone import MobileNetV2Backbone
from tinyseg.models.heads import BoxHead, HeatmapHead, ShapeClassifier
from tinyseg.models.masks import build_mask_head
from tinyseg.models.neck import FPNFuse
from tinyseg.models.postprocess import postprocess


class TinySeg(nn.Module):
    def __init__(
        self,
        backbone: MobileNetV2Backbone,
        neck: FPNFuse,
        heatmap: HeatmapHead,
        box: BoxHead,
        mask: nn.Module,
        classifier: ShapeClassifier,
        num_classes: int,
        score_thresh: float = 0.0,
    ):
        super().__init__()
        self.backbone, self.neck, self.heatmap, self.box, self.mask = backbone, neck, heatmap, box, mask
        self.classifier = classifier
        self.num_classes = num_classes
        self.score_thresh = score_thresh  # masks are assembled only for detections above it (postprocess)
        self.stride = neck.stride  # of the heatmap / box / mask-parameter maps
        self.mask_stride = self.stride // 2  # of the prototypes and assembled masks
        # Normalisation lives in the graph: the deployed model takes raw uint8 pixels.
        self.register_buffer("mean", torch.tensor([0.5, 0.5, 0.5]).view(1, 3, 1, 1) * 255, persistent=False)
        self.register_buffer("inv_std", 1 / (torch.tensor([0.25, 0.25, 0.25]).view(1, 3, 1, 1) * 255), persistent=False)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """images [B, 3, S, S] RGB, uint8 or float in 0..255 -> dict of
        heatmap [B, 1, S/4, S/4] centre logits, classes [B, C, S/4, S/4] appearance class logits,
        box [B, 4, S/4, S/4] raw ltrb distances (see decode_boxes),
        mask_params [B, P, S/4, S/4], mask_features [B, F, S/2, S/2]."""
        x = (images.float() - self.mean) * self.inv_std
        feats = self.backbone(x)
        f = self.neck(feats)
        params, features = self.mask(f, feats[self.stride // 2])
        heat = self.heatmap(f)
        return {
            "heatmap": heat[:, :1],
            "classes": heat[:, 1:],
            "box": self.box(f),
            "mask_params": params,
            "mask_features": features,
        }

    def detect(self, images: torch.Tensor, max_det: int) -> dict[str, torch.Tensor]:
        """forward + post-processing: detections (see postprocess.postprocess)."""
        return postprocess(self(images), self.mask, self.classifier, self.stride, max_det, self.score_thresh)


def build_model(cfg: ModelConfig) -> TinySeg:
    backbone = MobileNetV2Backbone(cfg.width, tuple(cfg.depths), cfg.expand, cfg.fused)
    neck = FPNFuse({s: c for s, c in backbone.channels.items() if s >= 4}, cfg.neck_channels)
    return TinySeg(
        backbone,
        neck,
        HeatmapHead(cfg.neck_channels, cfg.head_channels, cfg.num_classes),
        BoxHead(cfg.neck_channels, cfg.head_channels),
        build_mask_head(cfg.mask_head, cfg.neck_channels, backbone.channels[2], cfg.head_channels, cfg.num_prototypes),
        ShapeClassifier(cfg.num_classes),
        cfg.num_classes,
        cfg.score_thresh,
    )


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
