"""Decoding and the host side: planted peaks through decode(), silhouettes, and the letterbox round trip back to
the original image."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tinyseg.config import MASK_MARGIN, ModelConfig
from tinyseg.data.transforms import Letterbox
from tinyseg.deploy.results import masks_to_original, to_detections
from tinyseg.models.detector import build_model
from tinyseg.models.postprocess import BOX_SCALE, find_peaks


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
    model = build_model(ModelConfig(num_classes=3, num_prototypes=2, score_thresh=0.0))
    classifier = model.classifier
    torch.nn.init.zeros_(classifier.mlp[-1].weight)  # shape logits = bias = 0: the class is the appearance one
    torch.nn.init.zeros_(classifier.mlp[-1].bias)

    def postprocess(out, max_det=3, thresh=0.0):
        model.score_thresh = thresh
        with torch.no_grad():
            return model.decode(out, max_det)

    det = postprocess(out)
    assert det["classes"][0, :2].tolist() == [1, 2]
    assert det["scores"][0, 0].item() == pytest.approx(torch.sigmoid(torch.tensor(3.0)).item(), rel=1e-6)
    assert det["scores"][0, 2].item() < 1e-3  # the suppressed neighbour is not a detection
    # cell centre (5.5*4, 4.5*4) = (22, 18) -> box (16, 16, 28, 20)
    assert det["boxes"][0, 0].tolist() == pytest.approx([16.0, 16.0, 28.0, 20.0])
    m = det["masks"][0, 0]
    assert m[9, 11].item() == pytest.approx(torch.sigmoid(torch.tensor(10.0)).item())  # inside the box
    assert m[0, 0].item() == m[9, 11].item()  # the graph leaves the cut at the box to the host
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
    det = postprocess(out)
    half = torch.sigmoid(torch.tensor(3.0)).item() / 2
    assert det["scores"][0].tolist() == pytest.approx([torch.sigmoid(torch.tensor(1.0)).item(), half, half], rel=1e-5)
    assert det["classes"][0, 0] == 2 and sorted(det["classes"][0, 1:].tolist()) == [0, 1]
    assert det["boxes"][0, 1].tolist() == det["boxes"][0, 2].tolist() == pytest.approx([16.0, 16.0, 28.0, 20.0])
    assert torch.equal(det["masks"][0, 1], det["masks"][0, 2]) and det["masks"][0, 1, 9, 11] > 0.99
    # score_thresh: only the pairs at or above it are kept (masks built for them alone), at least one; in a
    # batch, as many as the image with the most.
    scores = [torch.sigmoid(torch.tensor(1.0)).item(), half, half]
    for thresh, n in ((0.0, 3), (0.4, 3), (0.6, 1), (0.99, 1)):
        det = postprocess(out, 3, thresh)
        assert det["scores"][0].tolist() == pytest.approx(scores[:n], rel=1e-5) and det["masks"].shape[1] == n
    batch = {k: torch.cat([v, v]) for k, v in out.items()}
    batch["heatmap"][1] = -10.0  # an image with no object
    det = postprocess(batch, 3, 0.4)
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


def test_letterbox_round_trip_to_the_original_image():
    """A 200x100 image letterboxed into 100 px: scale 0.5, pad 25 on top and bottom (the Letterbox of an image
    of twice the size with a 16-px pad is checked the same way). Boxes and masks drawn on the input grid land
    exactly where they belong in the original image."""
    for (h, w, size), (scale, pad_x, pad_y) in (((100, 200, 100), (0.5, 0.0, 25.0)), ((64, 64, 64), (1.0, 0.0, 0.0))):
        lb = Letterbox.fit(h, w, size)
        assert (lb.scale, lb.pad_x, lb.pad_y) == (scale, pad_x, pad_y)
        assert Letterbox.from_matrix(lb.matrix()) == lb
    lb = Letterbox(0.5, 16.0, 16.0)  # 200x200 image into 132 px: scale 0.5, pad 16 on every side
    boxes = np.array([[16.0, 26.0, 36.0, 46.0]], np.float32)  # input pixels
    assert lb.boxes_to_original(boxes).tolist() == [[0.0, 20.0, 40.0, 60.0]]
    grid = np.zeros((1, 66, 66), np.float32)  # masks at stride 2 of the 132-px input
    grid[0, 13:23, 8:18] = 1.0  # input pixels x 16..36, y 26..46 -> original x 0..40, y 20..60
    window = np.array([[0.0, 0.0, 200.0, 200.0]], np.float32)
    got = masks_to_original(grid, window, lb, 200, 200, 132)
    want = np.zeros((1, 200, 200), bool)
    want[0, 20:60, 0:40] = True
    # Bilinear sampling: each edge pixel sees 0.625 of the mask (> 0.5), each corner 0.625^2 (< 0.5).
    want[0, [20, 20, 59, 59], [0, 39, 0, 39]] = False
    assert np.array_equal(got, want)


@settings(max_examples=60, deadline=None)
@given(
    h=st.integers(1, 2000),
    w=st.integers(1, 2000),
    size=st.sampled_from([64, 128, 320, 640]),
    box=st.tuples(*[st.floats(0, 1)] * 4),
)
def test_letterbox_maps_boxes_back_exactly(h, w, size, box):
    """Any image size: a box in original pixels, letterboxed into the input and mapped back, is where it was."""
    lb = Letterbox.fit(h, w, size)
    x1, x2 = sorted((box[0] * w, box[2] * w))
    y1, y2 = sorted((box[1] * h, box[3] * h))
    orig = np.array([[x1, y1, x2, y2]], np.float64)
    m = lb.matrix().astype(np.float64)
    corners = np.array([[x1, y1, 1], [x2, y2, 1]]) @ m.T
    back = lb.boxes_to_original(corners.reshape(1, 4).astype(np.float32))
    assert np.allclose(back, orig, atol=1e-3 * max(h, w))
    assert corners.min() >= -1e-3 and corners.max() <= size + 1e-3  # inside the input square


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(1, 30), st.integers(1, 30))
def test_tight_box_holds_every_pixel(seed, h, w):
    from tinyseg.data.transforms import masks_to_boxes

    mask = np.random.default_rng(seed).random((1, h, w)) > 0.7
    box = masks_to_boxes(mask)[0]
    ys, xs = np.nonzero(mask[0])
    if not len(xs):
        assert not box.any()
        return
    assert (box[0], box[1], box[2], box[3]) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)


def test_a_plateau_is_one_peak():
    """Equal neighbours (as an int8 heatmap has them): one peak per plateau, the first cell in raster order, in
    every direction a tie can lie; a lone strict maximum next to a lower cell is still a peak."""
    for dy, dx in ((0, 1), (1, -1), (1, 0), (1, 1)):
        heat = torch.full((1, 1, 8, 8), -10.0)
        heat[0, 0, 3, 3] = heat[0, 0, 3 + dy, 3 + dx] = 2.0
        heat[0, 0, 6, 1] = 1.0
        objectness, pos = find_peaks(heat, 3)
        found = pos[objectness > 0.5].tolist()
        assert found == [3 * 8 + 3, 6 * 8 + 1], (dy, dx, found)
