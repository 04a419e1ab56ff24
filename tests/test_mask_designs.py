"""The mask designs beside the prototypes: CondInst's dynamic convolutions (hand-set weights give a known mask) and
CenterMask's shape x saliency (a known shape lands in a known box); for each, the three assembly paths agree and the
exported graph matches PyTorch (overfitting a batch: test_training, for every design)."""

import numpy as np
import pytest
import torch

from tinyseg.config import Config, ModelConfig
from tinyseg.models.masks import DynamicConvMasks, ShapeSaliencyMasks


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


def test_hand_set_shape_lands_in_its_box():
    """A shape that is 'left half of the box' (the linear map's bias, whatever the code) and a confident saliency
    everywhere: the mask is the left half of the box and nothing outside it."""
    head = ShapeSaliencyMasks(8, 4, 8, mask_stride=2)
    s = head.SIZE
    torch.nn.init.zeros_(head.shape.weight)
    with torch.no_grad():
        head.shape.bias.copy_(torch.where(torch.arange(s) < s // 2, 20.0, -20.0).repeat(s))
    features = torch.full((1, 1, 32, 32), 20.0)  # saliency logits: sure everywhere
    boxes = torch.tensor([[[8.0, 16.0, 40.0, 48.0]]])  # 32 x 32 px: mask cells 4..19 in x and 8..23 in y
    mask = head.assemble(torch.randn(1, 1, 8), features, None, boxes).sigmoid()[0, 0] > 0.5
    want = torch.zeros(32, 32, dtype=torch.bool)
    want[8:24, 4:12] = True  # cell centres at 9..23 px in x: the left half of 8..40
    assert torch.equal(mask, want)
    features[..., :, 8] = -20.0  # saliency off in one column: the product follows it
    mask = head.assemble(torch.randn(1, 1, 8), features, None, boxes).sigmoid()[0, 0] > 0.5
    assert not mask[:, 8].any() and mask[8:24, 4:8].all()


@pytest.mark.parametrize("seed", range(3))
def test_fresh_dynamic_convs_start_with_open_units(seed):
    """A fresh head's first dynamic layer is open (ReLU input > 0) on nearly every pixel, for every peak: with zero
    hidden biases half the units start shut, and training at full learning rate can shut them all, leaving a mask
    stuck at 0.5 that no gradient reaches (one seed of the benchmark did exactly that)."""
    torch.manual_seed(seed)
    head = DynamicConvMasks(16, 8, 16, head_stride=4, mask_stride=2)
    params, features = head(torch.randn(1, 16, 8, 8), torch.randn(1, 8, 16, 16))
    peaks = params.flatten(2).transpose(1, 2)  # [1, 64 peaks, 169]
    w1, b1 = torch.split(peaks, head.SIZES, -1)[:2]
    cells = torch.arange(16 * 16).expand(1, 64, -1)
    centers = torch.stack([torch.arange(64) % 8, torch.arange(64) // 8], -1).float().unsqueeze(0)
    x = torch.cat([features.flatten(2).unsqueeze(1).expand(1, 64, 8, 256), head._relative(cells, 16, centers)], 2)
    pre = w1.reshape(1, 64, 8, 10) @ x + b1.unsqueeze(-1)
    assert (pre > 0).float().mean() > 0.9


def test_shut_dynamic_convs_still_learn():
    """Every hidden unit shut on every pixel (pre-activations far below 0): the mask still sends a gradient to the
    first layer's weights and biases, so training can open them again."""
    head = DynamicConvMasks(8, 4, 8, head_stride=4, mask_stride=2)
    torch.manual_seed(0)
    w1, w2, w3 = torch.randn(8, 10) * 0.1, torch.randn(8, 8) * 0.1, torch.randn(1, 8)
    shut = torch.full((8,), -5.0)
    params = _weights(w1, shut, w2, shut, w3, [0.0]).reshape(1, 1, -1).requires_grad_()
    features, centers = torch.randn(1, 8, 16, 16), torch.tensor([[[4.0, 4.0]]])
    x = torch.cat([features.flatten(2), head._relative(torch.arange(256).unsqueeze(0), 16, centers[0])], 1)
    assert (w1 @ x[0] + shut[:, None] < 0).all()  # shut on every pixel
    logits = head.assemble(params, features, centers)
    torch.nn.functional.binary_cross_entropy_with_logits(logits, torch.ones_like(logits)).backward()
    w1_b1 = params.grad[0, 0, : head.SIZES[0] + head.SIZES[1]]
    assert w1_b1.abs().sum() > 0


def _condinst_inputs():
    return DynamicConvMasks(8, 4, 8, head_stride=4, mask_stride=2), torch.randn(2, 3, 169) * 0.3, 8


def _centermask_inputs():
    return ShapeSaliencyMasks(8, 4, 8, mask_stride=2), torch.randn(2, 3, 8), 1


@pytest.mark.parametrize("make", [_condinst_inputs, _centermask_inputs])
def test_assembly_paths_agree(make):
    torch.manual_seed(0)
    head, params, channels = make()
    features = torch.randn(2, channels, 20, 20)
    centers = torch.tensor([[[2.0, 3.0], [5.0, 5.0], [9.0, 1.0]], [[0.0, 0.0], [4.0, 7.0], [8.0, 8.0]]])
    boxes = torch.tensor(
        [[[2, 3, 30, 25.0], [0, 0, 40, 40], [10, 10, 11, 11]], [[5, 5, 20, 35], [1, 2, 3, 4], [0] * 4]]
    )
    full = head.assemble(params, features, centers, boxes)
    index = torch.randint(0, 400, (2, 3, 17))
    at = head.assemble_at(params, features, centers, boxes, index)
    torch.testing.assert_close(at, full.reshape(2, 3, -1).gather(2, index), rtol=1e-5, atol=1e-5)
    instance, cell = torch.tensor([0, 2, 4, 5, 5]), torch.tensor([0, 399, 17, 200, 3])
    cells = head.assemble_cells(params, features, centers, boxes, instance, cell)
    torch.testing.assert_close(cells, full.reshape(6, -1)[instance, cell], rtol=1e-5, atol=1e-5)


def _spread_segmenter(kind: str):
    """A fresh 128-px model of this design whose heatmap gives many high scores: parity compares detections."""
    from tinyseg.deploy.predict import Segmenter
    from tinyseg.models.detector import build_model

    torch.manual_seed(0)
    cfg = Config()
    cfg.model = ModelConfig(num_classes=6, mask_head=kind)
    cfg.data.imgsz = 128
    model = build_model(cfg.model).eval()
    torch.nn.init.normal_(model.heatmap.out.weight, std=0.5)
    torch.nn.init.constant_(model.heatmap.out.bias, 2.0)
    return Segmenter(model, cfg, ["a", "b", "c", "d", "e", "f"])


@pytest.mark.parametrize("kind", ["condinst", "centermask"])
def test_design_exports_and_matches_pytorch(tmp_path, kind):
    import onnx

    from tinyseg.deploy.export.onnx import export_onnx, onnx_meta
    from tinyseg.deploy.export.openvino import export_openvino
    from tinyseg.deploy.export.parity import check_parity, verify_batch
    from tinyseg.deploy.export.quantize import quantize_onnx
    from tinyseg.deploy.runtime import EdgeSegmenter

    seg = _spread_segmenter(kind)
    path = export_onnx(seg, tmp_path / "c.onnx", max_det=20)
    graph = onnx.load(str(path)).graph
    ops, names = {n.op_type for n in graph.node}, [n.name for n in graph.node]
    assert {"MaxPool", "TopK"} <= ops and "If" not in ops  # an If breaks INT8 quantization's rewrite
    nodes = onnx_meta(path)["nodes"]
    for prefix in nodes["network"] + nodes["keep_float"]:  # what INT8 keeps in float names real nodes
        assert any(n.startswith(prefix) for n in names), prefix
    images = verify_batch(128, 4)
    parity = check_parity(seg, path, images)
    assert parity.ok and parity.detections > 0, parity

    onnx_out = EdgeSegmenter(path).run(images)
    ov_out = EdgeSegmenter(export_openvino(path, tmp_path / "c.xml")).run(images)
    np.testing.assert_allclose(ov_out["scores"], onnx_out["scores"], atol=1e-4)
    assert np.mean((ov_out["masks"] > 0.5) == (onnx_out["masks"] > 0.5)) > 0.999
    out = EdgeSegmenter(quantize_onnx(path, tmp_path / "q.onnx", images)).run(images[:1])  # INT8 loads and runs
    assert out["masks"].shape[2:] == (64, 64) and np.isfinite(out["scores"]).all()


@pytest.mark.parametrize("kind", ["prototypes", "condinst", "centermask"])
def test_design_tflite_matches_pytorch_and_does_not_grow_with_k(tmp_path, kind):
    """LiteRT traces static shapes: a gather along an inner dimension or an expanded index would be stored as
    constants of shape [K, cells], megabytes per detection slot (models/masks.flat_rows)."""
    pytest.importorskip("litert_torch", reason="the tflite extra is not installed")
    from tinyseg.deploy.export.parity import check_parity, verify_batch
    from tinyseg.deploy.export.tflite import export_tflite

    seg = _spread_segmenter(kind)
    k20 = export_tflite(seg, tmp_path / "k20.tflite", max_det=20)
    parity = check_parity(seg, k20, verify_batch(128, 4))
    assert parity.ok and parity.detections > 0, parity
    k40 = export_tflite(seg, tmp_path / "k40.tflite", max_det=40)
    per_slot = (k40.stat().st_size - k20.stat().st_size) / 20  # bytes per extra detection slot
    assert per_slot < 4_000, per_slot  # its parameters' gather coordinates, not a copy of the 64 x 64 mask grid


@pytest.mark.parametrize("kind", ["prototypes", "condinst", "centermask"])
def test_mask_head_is_a_config_choice(kind):
    from tinyseg.models.detector import build_model

    m = build_model(ModelConfig(num_classes=2, mask_head=kind))
    assert (
        type(m.mask).__name__
        == {
            "prototypes": "PrototypeMasks",
            "condinst": "DynamicConvMasks",
            "centermask": "ShapeSaliencyMasks",
        }[kind]
    )
