"""CondInst's dynamic convolutions as a mask design: hand-set weights give a known mask, the three assembly paths
agree, training overfits a batch, and the exported graph matches PyTorch."""

import numpy as np
import pytest
import torch

from tinyseg.config import Config, ModelConfig, TrainConfig
from tinyseg.models.masks import DynamicConvMasks


def _weights(w1, b1, w2, b2, w3, b3) -> torch.Tensor:
    return torch.cat([torch.as_tensor(v, dtype=torch.float32).reshape(-1) for v in (w1, b1, w2, b2, w3, b3)])


def test_hand_set_dynamic_weights_give_a_known_mask():
    """Layer 1 passes on relu(-rel_x) (the distance to the left of the peak), layer 2 passes it through, layer 3
    thresholds it: the mask is 'left of the peak by more than 16 px'."""
    head = DynamicConvMasks(8, 4, 8, head_stride=4, mask_stride=2)
    w1 = torch.zeros(8, 10)
    w1[0, 8] = -1.0  # input 8 is rel_x, input 9 rel_y (after the 8 feature channels)
    w2 = torch.zeros(8, 8)
    w2[0, 0] = 1.0
    w3 = torch.zeros(1, 8)
    w3[0, 0] = 100.0
    params = _weights(w1, torch.zeros(8), w2, torch.zeros(8), w3, [-100.0 * 16 / head.REL_SCALE]).reshape(1, 1, -1)
    features = torch.randn(1, 8, 32, 32)  # ignored by these weights
    centers = torch.tensor([[[7.0, 3.0]]])  # heatmap cell (x=7, y=3): peak at pixel (30, 14)
    mask = head.assemble(params, features, centers).sigmoid()[0, 0] > 0.5
    xs = (torch.arange(32) + 0.5) * 2  # mask cell centres in pixels
    want = (30 - xs > 16).expand(32, 32)
    assert torch.equal(mask, want) and mask.any() and not mask.all()
    assert head.num_params == 169  # the paper's 169 parameters per instance


def test_assembly_paths_agree():
    torch.manual_seed(0)
    head = DynamicConvMasks(8, 4, 8, head_stride=4, mask_stride=2)
    params, features = torch.randn(2, 3, 169) * 0.3, torch.randn(2, 8, 20, 20)
    centers = torch.tensor([[[2.0, 3.0], [5.0, 5.0], [9.0, 1.0]], [[0.0, 0.0], [4.0, 7.0], [8.0, 8.0]]])
    full = head.assemble(params, features, centers)
    index = torch.randint(0, 400, (2, 3, 17))
    at = head.assemble_at(params, features, centers, None, index)
    torch.testing.assert_close(at, full.reshape(2, 3, -1).gather(2, index), rtol=1e-5, atol=1e-5)
    instance, cell = torch.tensor([0, 2, 4, 5, 5]), torch.tensor([0, 399, 17, 200, 3])
    cells = head.assemble_cells(params, features, centers, None, instance, cell)
    torch.testing.assert_close(cells, full.reshape(6, -1)[instance, cell], rtol=1e-5, atol=1e-5)


def test_condinst_overfits_a_batch(synth):
    """150 steps on 4 images: the loss falls and masks match (IoU > 0.8), as for the prototype design."""
    from tinyseg.data.coco import load_coco
    from tinyseg.data.dataset import CocoDataset, TrainingSamples
    from tinyseg.data.rle import decode_masks
    from tinyseg.data.transforms import Letterbox
    from tinyseg.deploy.results import to_detections
    from tinyseg.models.detector import build_model
    from tinyseg.training.losses import build_criterion
    from tinyseg.training.targets import TrainingCollate

    torch.manual_seed(0)
    data = load_coco(synth / "train.json")
    data.images = [r for r in data.images if 2 <= len(r.labels) <= 6][:4]
    ds = CocoDataset(data, 128, TrainingSamples(1, 1, 0, 0, 6, 10**6, mask_stride=2))
    images, t = TrainingCollate(4, 2)([ds[i] for i in range(len(ds))])
    m = build_model(ModelConfig(num_classes=data.num_classes, mask_head="condinst"))
    crit = build_criterion(TrainConfig(), m.stride)
    opt = torch.optim.AdamW(m.parameters(), lr=0.01, weight_decay=0)
    first = None
    for _ in range(150):
        loss = crit.total(crit(m(images, t), t))
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.3 * first
    m.train()
    with torch.no_grad():
        det = m.detect(images, 20)
    ious = []
    for i, rec in enumerate(data.images):
        o = {k: v[i].float().numpy() for k, v in det.items()}
        d = to_detections(
            *(o[k] for k in ("boxes", "scores", "classes", "masks")),
            Letterbox(1.0, 0, 0),
            128,
            128,
            128,
            0.3,
            data.class_names,
        )
        for g in decode_masks(rec.rles, 128, 128).astype(bool):
            ious.append(max((np.logical_and(g, p).sum() / np.logical_or(g, p).sum() for p in d.masks), default=0))
    assert np.mean(ious) > 0.8, ious


def test_condinst_exports_and_matches_pytorch(tmp_path):
    import onnx

    from tinyseg.deploy.export.onnx import export_onnx
    from tinyseg.deploy.export.parity import check_parity, verify_batch
    from tinyseg.deploy.predict import Segmenter
    from tinyseg.models.detector import build_model

    torch.manual_seed(0)
    cfg = Config()
    cfg.model = ModelConfig(num_classes=6, mask_head="condinst")
    cfg.data.imgsz = 128
    model = build_model(cfg.model).eval()
    torch.nn.init.normal_(model.heatmap.out.weight, std=0.5)  # spread, high scores: parity compares detections
    torch.nn.init.constant_(model.heatmap.out.bias, 2.0)
    seg = Segmenter(model, cfg, ["a", "b", "c", "d", "e", "f"])
    path = export_onnx(seg, tmp_path / "c.onnx", max_det=20)
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert {"MaxPool", "TopK", "MatMul"} <= ops and "If" not in ops  # an If breaks INT8 quantization's rewrite
    images = verify_batch(128, 4)
    parity = check_parity(seg, path, images)
    assert parity.ok and parity.detections > 0, parity
    from tinyseg.deploy.export.quantize import quantize_onnx
    from tinyseg.deploy.runtime import EdgeSegmenter

    out = EdgeSegmenter(quantize_onnx(path, tmp_path / "q.onnx", images)).run(images[:1])  # INT8 loads and runs
    assert out["masks"].shape[2:] == (64, 64) and np.isfinite(out["scores"]).all()


@pytest.mark.parametrize("kind", ["prototypes", "condinst"])
def test_mask_head_is_a_config_choice(kind):
    from tinyseg.models.detector import build_model

    m = build_model(ModelConfig(num_classes=2, mask_head=kind))
    assert type(m.mask).__name__ == {"prototypes": "PrototypeMasks", "condinst": "DynamicConvMasks"}[kind]
