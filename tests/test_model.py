"""Model, targets, losses, post-processing and training: real computations on small generated data."""

import math

import numpy as np
import pytest
import torch

from tinyseg.config import Config, preset
from tinyseg.data.coco import CocoDataset, collate, load_coco
from tinyseg.losses import Criterion, focal_loss, giou_loss, mask_losses
from tinyseg.models.backbone import StridedDepthwiseConv
from tinyseg.models.detector import build_model, detect_flops
from tinyseg.models.postprocess import BOX_SCALE, find_peaks, postprocess
from tinyseg.targets import build_targets


@pytest.mark.parametrize("name", ["nano", "small"])
def test_head_shapes(name):
    cfg = preset(name)
    cfg.num_classes = 5
    m = build_model(cfg).eval()
    with torch.no_grad():
        out = m(torch.zeros(2, 3, 128, 128, dtype=torch.uint8))
    assert out["heatmap"].shape == (2, 1, 32, 32) and out["classes"].shape == (2, 5, 32, 32)
    assert out["box"].shape == (2, 4, 32, 32)
    assert out["mask_params"].shape == (2, cfg.num_prototypes, 32, 32)
    assert out["mask_features"].shape == (2, cfg.num_prototypes, 64, 64)
    assert m.backbone.strides == (2, 4, 8, 16, 32) and set(m.backbone.channels) == {2, 4, 8, 16, 32}
    det = postprocess(out, m.mask, m.classifier, m.stride, 20)
    assert det["boxes"].shape == (2, 20, 4) and det["masks"].shape == (2, 20, 64, 64)


@pytest.mark.parametrize("size", [20, 21])
def test_strided_depthwise_trains_like_the_strided_conv(size):
    """CPU training computes the strided depthwise conv at stride 1 and subsamples: same outputs and gradients
    as the strided conv that inference and export use, odd sizes included."""
    conv = StridedDepthwiseConv(8, 8, 3, 2, 1, groups=8, bias=False)
    x = torch.randn(2, 8, size, size).contiguous(memory_format=torch.channels_last).requires_grad_()
    grads = []
    for train in (True, False):
        conv.train(train)
        x.grad, conv.weight.grad = None, None
        y = conv(x)
        (y * torch.arange(y.numel()).reshape(y.shape).sin()).sum().backward()
        grads.append((y.detach(), x.grad.clone(), conv.weight.grad.clone()))
    assert grads[0][0].shape == (2, 8, (size + 1) // 2, (size + 1) // 2)
    assert grads[0][0].is_contiguous(memory_format=torch.channels_last)
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    model = build_model(preset("nano"))
    assert sum(isinstance(m, StridedDepthwiseConv) for m in model.modules()) == 3  # strides 8, 16 and 32


def test_nano_budget():
    """Issue targets for nano at 320: <= 1.5 M parameters, <= 1.5 GFLOPs with post-processing."""
    cfg = preset("nano")
    cfg.num_classes = 6
    m = build_model(cfg).eval()
    assert sum(p.numel() for p in m.parameters()) <= 1.5e6
    assert detect_flops(m, 320, 100) <= 1.5e9


def test_targets_for_known_boxes():
    boxes = np.array([[8, 8, 24, 40], [60, 60, 68, 68]], np.float32)  # 16x32 and 8x8 px
    t = build_targets(np.array([0, 2]), boxes, 80, 4)
    heat = t["heatmap"]
    assert heat.shape == (1, 20, 20)
    assert heat[0, 6, 4] == 1.0 and heat[0, 16, 16] == 1.0  # centre cells: (16/4, 24/4) and (64/4, 64/4)
    assert heat.max() == 1 and int((heat == 1).sum()) == 2
    assert heat[0, 8, 4] < 1 and heat[0, 8, 4] > heat[0, 6, 6]  # elongated: wider along y than x
    assert t["centers"].tolist() == [6 * 20 + 4, 16 * 20 + 16]
    assert np.allclose(t["box"][:, 6, 4], boxes[0]) and np.allclose(t["box"][:, 16, 16], boxes[1])
    w = t["box_weight"]
    assert w[6, 4] > 0 and w[0, 19] == 0
    assert math.isclose(w[w > 0].sum(), math.log(16 * 32 + 1) + math.log(8 * 8 + 1), rel_tol=1e-4)


def test_focal_loss_hand_computed():
    # One peak (target 1) with p = 0.5, one negative with target 0 and p = 0.5, one ignored negative.
    logits = torch.zeros(1, 1, 1, 3)
    target = torch.tensor([[[[1.0, 0.0, 0.0]]]])
    ignore = torch.tensor([[[False, False, True]]])
    expected = -(0.25 * math.log(0.5) + 0.25 * math.log(0.5))
    assert focal_loss(logits, target, ignore).item() == pytest.approx(expected, rel=1e-5)
    # Empty image: no peaks, normalised by 1; a confident "nothing" is nearly free.
    assert focal_loss(torch.full((1, 2, 4, 4), -10.0), torch.zeros(1, 2, 4, 4)).item() < 1e-6


def test_giou_hand_computed():
    a = torch.tensor([0.0, 0, 2, 2])
    assert giou_loss(a, a).item() == pytest.approx(0.0, abs=1e-5)
    # Disjoint boxes [0,2]x[0,2] and [3,5]x[0,2]: IoU 0, enclosure 10, union 8 -> GIoU = -0.2 -> loss 1.2.
    assert giou_loss(a, torch.tensor([3.0, 0, 5, 2])).item() == pytest.approx(1.2, rel=1e-5)


def test_mask_losses_hand_computed():
    logits = torch.zeros(4)  # p = 0.5 at the 4 pixels of instance 0's crop
    target = torch.tensor([1.0, 0.0, 0.0, 0.0])
    instance = torch.zeros(4, dtype=torch.long)
    bce, dice = mask_losses(logits, target, instance, torch.tensor([[True, False]]))
    assert bce.item() == pytest.approx(math.log(2), rel=1e-5)
    assert dice.item() == pytest.approx(1 - (2 * 0.5 + 1) / (2 + 1 + 1), rel=1e-5)
    bce, dice = mask_losses(logits, target, instance, torch.zeros(1, 2, dtype=torch.bool))
    assert bce.item() == 0 and dice.item() == 0


def test_sparse_mask_loss_matches_dense():
    """The loss builds masks only at the cells of each box (crop_cells + assemble_cells); the same losses
    computed densely over full [B, N, H, W] masks agree."""
    from tinyseg.models.masks import PrototypeMasks
    from tinyseg.models.postprocess import crop_cells

    torch.manual_seed(0)
    head = PrototypeMasks(8, 4, 8, 3)
    params, features = torch.randn(2, 3, 3), torch.randn(2, 3, 16, 16)
    boxes = torch.tensor([[[2.0, 3.0, 20.0, 12.0], [0.0, 0.0, 32.0, 32.0], [5.0, 5.0, 6.0, 6.0]]] * 2)
    valid = torch.tensor([[True, True, False], [True, False, False]])
    target = torch.rand(2, 3, 16, 16)
    instance, cell = crop_cells(boxes, valid, 16, 16, 2, margin=2.0)
    logits = head.assemble_cells(params, features, None, boxes, instance, cell)
    bce, dice = mask_losses(logits, target.reshape(6, -1)[instance, cell], instance, valid)

    dense = head.assemble(params, features)
    c = (torch.arange(16) + 0.5) * 2
    inx = (c >= boxes[..., 0:1] - 2) & (c <= boxes[..., 2:3] + 2)
    iny = (c >= boxes[..., 1:2] - 2) & (c <= boxes[..., 3:4] + 2)
    crop = (iny.unsqueeze(-1) & inx.unsqueeze(-2)).float()
    v = valid.float()
    b = torch.nn.functional.binary_cross_entropy_with_logits(dense, target, reduction="none")
    want_bce = ((b * crop).sum((2, 3)) / crop.sum((2, 3)) * v).sum() / v.sum()
    p = dense.sigmoid() * crop
    d = 1 - (2 * (p * target).sum((2, 3)) + 1) / (p.sum((2, 3)) + (target * crop).sum((2, 3)) + 1)
    assert len(cell) == int((crop.sum((2, 3)) * v).sum())  # every cell of every valid box, nothing else
    assert bce.item() == pytest.approx(want_bce.item(), rel=1e-5)
    assert dice.item() == pytest.approx(((d * v).sum() / v.sum()).item(), rel=1e-5)


def _batch(n_objects: int, size: int = 64, num_classes: int = 2):
    """A synthetic batch with n_objects 6x6 squares (class alternating) in image 0 and none in image 1."""
    from tinyseg.data.coco import INSTANCE_KEYS  # noqa: F401  (documented padded keys)
    from tinyseg.data.transforms import downsample_masks

    targets = []
    for n in (n_objects, 0):
        masks = np.zeros((n, size, size), np.uint8)
        boxes = np.zeros((n, 4), np.float32)
        for k in range(n):
            y, x = divmod(k, size // 8)
            y, x = (y * 8) % size, x * 8
            masks[k, y : y + 6, x : x + 6] = 1
            boxes[k] = (x, y, x + 6, y + 6)
        labels = np.arange(n) % num_classes
        t = build_targets(labels, boxes, size, 4)
        targets.append(
            {
                "heatmap": torch.from_numpy(t["heatmap"]),
                "box": torch.from_numpy(t["box"]),
                "box_weight": torch.from_numpy(t["box_weight"]),
                "ignore": torch.zeros(size // 4, size // 4, dtype=torch.bool),
                "labels": torch.from_numpy(labels),
                "boxes": torch.from_numpy(boxes),
                "centers": torch.from_numpy(t["centers"]),
                "masks": torch.from_numpy(downsample_masks(masks, 2)),
                "image_id": 0,
                "orig_size": (size, size),
                "matrix": torch.eye(2, 3),
            }
        )
    return collate([(torch.zeros(3, size, size, dtype=torch.uint8), t) for t in targets])


@pytest.mark.parametrize("n", [0, 1, 500])
def test_criterion_on_empty_single_and_dense_images(n):
    size = 256 if n == 500 else 64
    cfg = preset("nano")
    cfg.num_classes = 2
    m = build_model(cfg)
    images, t = _batch(min(n, (size // 8) ** 2 * 2), size)
    crit = Criterion(m)
    losses = crit(m(images), t)
    assert set(losses) == {"heatmap", "class", "box", "mask_bce", "mask_dice"}
    total = crit.total(losses)
    assert torch.isfinite(total)
    total.backward()
    if n == 0:
        assert losses["box"].item() == 0 and losses["class"].item() == 0 and losses["mask_bce"].item() == 0
    else:
        assert losses["box"].item() > 0 and losses["class"].item() > 0 and losses["mask_dice"].item() > 0


def test_postprocess_planted_peaks():
    heat = torch.full((1, 1, 16, 16), -10.0)
    heat[0, 0, 4, 5] = 3.0  # an object centre at cell (x=5, y=4)
    heat[0, 0, 4, 6] = 2.0  # its neighbour: suppressed by the 3x3 max-pool
    heat[0, 0, 10, 12] = 1.0  # another at (12, 10)
    classes = torch.zeros(1, 3, 16, 16)
    classes[0, 1, 4, 5] = 20.0  # class 1, certain
    classes[0, 2, 10, 12] = 20.0  # class 2, certain
    box = torch.zeros(1, 4, 16, 16)
    box[0, :, 4, 5] = torch.log(torch.expm1(torch.tensor([6.0, 2.0, 6.0, 2.0]) / BOX_SCALE))  # ltrb 6, 2, 6, 2 px
    params = torch.zeros(1, 2, 16, 16)
    params[0, 0, 4, 5] = 1.0
    feats = torch.stack([torch.full((32, 32), 10.0), torch.zeros(32, 32)])[None]
    out = {"heatmap": heat, "classes": classes, "box": box, "mask_params": params, "mask_features": feats}
    from tinyseg.models.heads import ShapeClassifier
    from tinyseg.models.masks import PrototypeMasks

    classifier = ShapeClassifier(3)
    torch.nn.init.zeros_(classifier.mlp[-1].weight)  # shape logits = bias = 0: the class is the appearance one
    torch.nn.init.zeros_(classifier.mlp[-1].bias)
    det = postprocess(out, PrototypeMasks(8, 4, 8, 2), classifier, stride=4, max_det=3)
    assert det["classes"][0, :2].tolist() == [1, 2]
    assert det["scores"][0, 0].item() == pytest.approx(torch.sigmoid(torch.tensor(3.0)).item(), rel=1e-6)
    assert det["scores"][0, 2].item() < 1e-3  # the suppressed neighbour is not a detection
    # cell centre (5.5*4, 4.5*4) = (22, 18) -> box (16, 16, 28, 20)
    assert det["boxes"][0, 0].tolist() == pytest.approx([16.0, 16.0, 28.0, 20.0])
    m = det["masks"][0, 0]
    assert m[9, 11].item() == pytest.approx(torch.sigmoid(torch.tensor(10.0)).item())  # inside the box
    assert m[0, 0].item() == m[9, 11].item()  # the graph leaves the cut at the box to the host
    from tinyseg.data.transforms import Letterbox
    from tinyseg.results import MASK_MARGIN, to_detections

    o = {k: v[0].detach().numpy() for k, v in det.items()}
    d = to_detections(
        o["boxes"], o["scores"], o["classes"], o["masks"], Letterbox(1.0, 0, 0), 64, 64, 64, 0.5, ["a"] * 3
    )
    # host: every pixel whose centre is inside the box (16, 16, 28, 20) grown by MASK_MARGIN = 2 px, nothing else
    want = np.zeros((64, 64), bool)
    want[14:22, 14:30] = True
    assert MASK_MARGIN == 2.0 and np.array_equal(d.masks[0], want)
    assert d.boxes[0].tolist() == [14, 14, 30, 22]  # the reported box is the mask's tight box
    objectness, pos = find_peaks(heat, 2)
    assert pos.tolist() == [[4 * 16 + 5, 10 * 16 + 12]]
    # An uncertain class: the peak is reported once per plausible class, scored P(object) * P(class).
    classes[0, :, 4, 5] = torch.tensor([0.0, 0.0, -20.0])
    det = postprocess(out, PrototypeMasks(8, 4, 8, 2), classifier, stride=4, max_det=3)
    half = torch.sigmoid(torch.tensor(3.0)).item() / 2
    assert det["scores"][0].tolist() == pytest.approx([torch.sigmoid(torch.tensor(1.0)).item(), half, half], rel=1e-5)
    assert det["classes"][0, 0] == 2 and sorted(det["classes"][0, 1:].tolist()) == [0, 1]
    assert det["boxes"][0, 1].tolist() == det["boxes"][0, 2].tolist() == pytest.approx([16.0, 16.0, 28.0, 20.0])
    assert torch.equal(det["masks"][0, 1], det["masks"][0, 2]) and det["masks"][0, 1, 9, 11] > 0.99
    # score_thresh: only the pairs at or above it are kept (masks built for them alone), at least one; in a
    # batch, as many as the image with the most.
    scores = [torch.sigmoid(torch.tensor(1.0)).item(), half, half]
    for thresh, n in ((0.0, 3), (0.4, 3), (0.6, 1), (0.99, 1)):
        det = postprocess(out, PrototypeMasks(8, 4, 8, 2), classifier, 4, 3, thresh)
        assert det["scores"][0].tolist() == pytest.approx(scores[:n], rel=1e-5) and det["masks"].shape[1] == n
    batch = {k: torch.cat([v, v]) for k, v in out.items()}
    batch["heatmap"][1] = -10.0  # an image with no object
    det = postprocess(batch, PrototypeMasks(8, 4, 8, 2), classifier, 4, 3, 0.4)
    assert det["scores"].shape == (2, 3) and det["scores"][1].max() < 0.4 and det["masks"].shape[:2] == (2, 3)


def test_shape_classifier_silhouettes():
    """A mask sampled over its box: a filled box -> all ones; the left half -> the left half of the grid, whatever
    the box size. The prototype head's assemble_at() gives the same samples without building the masks."""
    from tinyseg.models.heads import ShapeClassifier

    clf = ShapeClassifier(2, grid=4)
    masks = torch.zeros(1, 2, 40, 40)
    masks[0, 0, 10:20, 8:16] = 1  # 8x10 cells = 16x20 px at stride 2, box (16, 20, 32, 40)
    masks[0, 1, 0:40, 0:20] = 1  # left half of a 80x80 px box
    boxes = torch.tensor([[[16.0, 20.0, 32.0, 40.0], [0.0, 0.0, 80.0, 80.0]]])
    sil = clf.sample(masks, boxes, 2).reshape(2, 4, 4)
    assert torch.equal(sil[0], torch.ones(4, 4))
    assert torch.equal(sil[1][:, :2], torch.ones(4, 2)) and torch.equal(sil[1][:, 2:], torch.zeros(4, 2))

    from tinyseg.models.masks import PrototypeMasks

    head = PrototypeMasks(8, 4, 8, 3)
    for size in (40, 41):  # an even number of cells: rows of two cells; odd: rows of one
        params, features = torch.randn(2, 2, 3), torch.randn(2, 3, size, size)
        full = head.assemble(params, features)
        index = clf.points(boxes.expand(2, -1, -1), size, size, 2)
        index[1] = (index[1].flip(-1) + 1) % (size * size)  # other cells in the second image
        at = head.assemble_at(params, features, None, None, index)
        assert torch.allclose(at, full.reshape(2, 2, -1).gather(2, index), atol=1e-5)


def _tiny_cfg() -> Config:
    cfg = Config()
    cfg.model = preset("nano")
    cfg.data.imgsz = 128
    return cfg


def test_training_lowers_loss_and_overfits_masks(synth):
    """A few real iterations lower the loss; overfitting 4 images makes masks match (mask IoU > 0.8)."""
    from tinyseg.data.transforms import Letterbox
    from tinyseg.results import to_detections

    torch.manual_seed(0)
    data = load_coco(synth / "train.json")
    data.images = [r for r in data.images if 2 <= len(r.labels) <= 6][:4]
    cfg = _tiny_cfg()
    cfg.model.num_classes = data.num_classes
    ds = CocoDataset(data, 128, train=False)
    images, t = collate([ds[i] for i in range(len(ds))])
    m = build_model(cfg.model)
    crit = Criterion(m)
    opt = torch.optim.AdamW(m.parameters(), lr=0.01, weight_decay=0)
    first = None
    for _ in range(150):
        loss = crit.total(crit(m(images), t))
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.3 * first
    m.train()  # BN in batch mode: we test the fit, not the running statistics of 150 steps
    with torch.no_grad():
        det = m.detect(images, 20)
    ious = []
    for i, rec in enumerate(data.images):
        o = {k: v[i].float().numpy() for k, v in det.items()}
        d = to_detections(
            o["boxes"],
            o["scores"],
            o["classes"],
            o["masks"],
            Letterbox(1.0, 0.0, 0.0),
            128,
            128,
            128,
            0.3,
            data.class_names,
        )
        gt = t["masks"][i][t["valid"][i]]
        from tinyseg.data.coco import decode_masks

        gtm = decode_masks(rec.rles, 128, 128).astype(bool)
        for g in gtm:
            best = max((np.logical_and(g, p).sum() / np.logical_or(g, p).sum() for p in d.masks), default=0)
            ious.append(best)
        assert len(gt) == len(gtm)
    assert np.mean(ious) > 0.8, ious
