import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch

from tinyseg.data.coco import load_coco
from tinyseg.data.dataset import CocoDataset, TrainingSamples
from tinyseg.data.transforms import masks_to_boxes
from tinyseg.errors import DataError, DataWarning
from tinyseg.io import read_image
from tinyseg.training.targets import TrainingCollate

from .conftest import grid_rectangles, write_coco, write_png

SQUARE = [4.0, 4.0, 20.0, 4.0, 20.0, 20.0, 4.0, 20.0]


def _img(i=1, name="a.png", h=32, w=32):
    return {"id": i, "file_name": name, "height": h, "width": w}


def _samples(mask_stride=2, **kw) -> TrainingSamples:
    """Training samples without augmentation (scale 1, no flip, no jitter) unless kw says otherwise."""
    args = dict(scale_min=1, scale_max=1, flip_prob=0, color_jitter=0, min_pixels=6, max_mask_instances=10**6)
    return TrainingSamples(**{**args, **kw}, mask_stride=mask_stride)


def _targets(data, size, i=0):
    """Image i's training targets (batch dimension dropped)."""
    ds = CocoDataset(data, size, _samples())
    _, t = TrainingCollate(4, 2)([ds[i]])
    return {
        k: v[0] if isinstance(v, torch.Tensor) and k not in ("mask_instance", "mask_cell", "mask_value") else v
        for k, v in t.items()
    }


def test_polygon_rle_and_uncompressed_rle_agree(tmp_path):
    write_png(tmp_path / "a.png")
    rle = mask_util.merge(mask_util.frPyObjects([SQUARE], 32, 32))
    m = mask_util.decode(rle)
    uncompressed = {"size": [32, 32], "counts": _uncompressed_counts(m)}
    compressed = {"size": [32, 32], "counts": rle["counts"].decode()}
    anns = [
        {"id": k + 1, "image_id": 1, "category_id": 1, "segmentation": s, "iscrowd": 0}
        for k, s in enumerate([[SQUARE], compressed, uncompressed])
    ]
    data = load_coco(write_coco(tmp_path, [_img()], anns))
    masks = [mask_util.decode(r) for r in data.images[0].rles]
    assert masks[0].sum() > 200
    assert all(np.array_equal(masks[0], x) for x in masks[1:])


def _uncompressed_counts(m):
    flat = m.flatten(order="F")
    counts, cur, run = [], 0, 0
    for v in flat:
        if v != cur:
            counts.append(run)
            cur, run = v, 0
        run += 1
    counts.append(run)
    return [int(c) for c in counts]


def test_crowd_is_ignore_region_and_category_ids_map(tmp_path):
    write_png(tmp_path / "a.png")
    write_png(tmp_path / "b.png")
    cats = [{"id": 7, "name": "cat"}, {"id": 90, "name": "dog"}]
    anns = [
        {"id": 1, "image_id": 1, "category_id": 90, "segmentation": [SQUARE], "iscrowd": 0},
        {"id": 2, "image_id": 1, "category_id": 7, "segmentation": [[22, 22, 30, 22, 30, 30, 22, 30]], "iscrowd": 1},
    ]
    data = load_coco(write_coco(tmp_path, [_img(), _img(2, "b.png")], anns, cats))
    assert data.class_names == ["cat", "dog"] and data.cat_ids == [7, 90]
    rec = data.images[0]
    assert rec.labels == [1] and len(rec.crowd_rles) == 1  # crowd is not an object
    assert len(data.images) == 2 and data.images[1].labels == []  # image without annotations is kept
    t = _targets(data, 32)
    assert t["labels"].tolist() == [1]
    assert t["ignore"][6, 6] and not t["ignore"][1, 1]  # crowd region (22..30 px) at stride 4 is ignored
    assert t["heatmap"][0].max() == 1


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "I;16"])
def test_image_modes_become_rgb(tmp_path, mode):
    write_png(tmp_path / "x.png", 20, 30, mode)
    img = read_image(tmp_path / "x.png")
    assert img.shape == (20, 30, 3) and img.dtype == np.uint8
    if mode == "I;16":
        assert img.max() > 200  # scaled down from 16 bit, not clipped to 255 everywhere
        assert img.min() < 50


def test_bad_inputs_give_clear_errors(tmp_path):
    with pytest.raises(DataError, match="missing.json: annotation file not found"):
        load_coco(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(DataError, match="bad.json: not valid JSON"):
        load_coco(tmp_path / "bad.json")
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(DataError, match="list.json: not a COCO instances file"):
        load_coco(tmp_path / "list.json")
    with pytest.raises(DataError, match="empty"):
        load_coco(write_coco(tmp_path, [], [], name="empty.json"))
    with pytest.raises(DataError, match="image folder not found"):
        load_coco(write_coco(tmp_path, [_img()], [], name="x.json"), tmp_path / "nope")


def test_recoverable_problems_warn_and_skip(tmp_path):
    write_png(tmp_path / "a.png")
    images = [_img(), _img(2, "gone.png")]
    anns = [
        {"id": 1, "image_id": 1, "category_id": 1, "segmentation": [[1, 1, 5, 5]], "iscrowd": 0},  # 2 points
        {"id": 2, "image_id": 2, "category_id": 1, "segmentation": [SQUARE], "iscrowd": 0},  # image missing
        {
            "id": 3,
            "image_id": 1,
            "category_id": 1,
            "segmentation": [[20, 20, 60, 20, 60, 60, 20, 60]],
            "bbox": [20, 20, 40, 40],
            "iscrowd": 0,
        },  # partly outside the 32x32 image
        {"id": 4, "image_id": 99, "category_id": 1, "segmentation": [SQUARE], "iscrowd": 0},
    ]
    with pytest.warns(DataWarning) as rec:
        data = load_coco(write_coco(tmp_path, images, anns))
    text = " | ".join(str(w.message) for w in rec)
    assert "fewer than 3 points" in text and "gone.png" in text and "unknown image_id" in text
    assert "bbox outside the image" in text
    assert len(data.images) == 1 and len(data.images[0].rles) == 1
    _, t = CocoDataset(data, 32, _samples())[0]
    assert t["boxes"].tolist() == [[20.0, 20.0, 32.0, 32.0]]  # the box is the clipped mask's box


def test_truncated_image_names_file(tmp_path):
    write_png(tmp_path / "a.png")
    data = (tmp_path / "a.png").read_bytes()
    (tmp_path / "a.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="a.png: not a readable image"):
        read_image(tmp_path / "a.png")
    (tmp_path / "t.png").write_text("hello")
    with pytest.raises(DataError, match="t.png: not a readable image"):
        read_image(tmp_path / "t.png")


def test_train_transform_keeps_masks_and_boxes_consistent(synth):
    data = load_coco(synth / "train.json")
    ds = CocoDataset(data, 128, _samples(1, scale_min=0.75, scale_max=1.33, flip_prob=0.5, color_jitter=0.3))
    for i in range(6):
        img, t = ds[(0, i)]
        assert img.shape == (3, 128, 128) and img.dtype == torch.uint8
        masks = t["masks"].numpy() > 127
        assert np.allclose(masks_to_boxes(masks), t["boxes"].numpy())
        assert (masks.sum((1, 2)) >= 6).all()
        a, _ = ds[(0, i)]
        assert torch.equal(a, img)  # same (epoch, index) -> same augmentation
    b, _ = ds[(1, 0)]
    assert not torch.equal(b, ds[(0, 0)][0])


def test_flip_mirrors_image_and_masks(synth):
    data = load_coco(synth / "train.json")
    plain = CocoDataset(data, 128, _samples(1))
    flip = CocoDataset(data, 128, _samples(1, flip_prob=1))
    i = next(k for k in range(len(data.images)) if data.images[k].labels)
    a, ta = plain[(0, i)]
    b, tb = flip[(0, i)]
    assert torch.equal(a.flip(-1), b)
    assert torch.equal(ta["masks"].flip(-1), tb["masks"])


def test_collate_pads_dense_images(tmp_path):
    """500 instances in one image, 0 in another: padded with a valid flag."""
    write_png(tmp_path / "a.png", 256, 256)
    write_png(tmp_path / "b.png", 256, 256)
    anns = grid_rectangles(500, 25, 10, 12, 7, 9, 1)
    data = load_coco(write_coco(tmp_path, [_img(1, "a.png", 256, 256), _img(2, "b.png", 256, 256)], anns))
    ds = CocoDataset(data, 256, _samples())
    images, t = TrainingCollate(4, 2)([ds[0], ds[1]])
    assert images.shape == (2, 3, 256, 256)
    assert t["valid"].shape == (2, 500) and t["valid"][0].all() and not t["valid"][1].any()
    assert t["masks"].shape == (2, 500, 128, 128)
    assert int(t["heatmap"][0].eq(1).sum()) == 500  # every object has its own peak


def test_downsample_crops_equals_full_resolution_average():
    from tinyseg.data import transforms as T

    rng = np.random.default_rng(0)
    crops = []
    for _ in range(20):
        h, w = rng.integers(1, 40, 2)
        x0, y0 = rng.integers(0, 280, 2)
        crops.append(T.MaskCrop(int(x0), int(y0), (rng.random((h, w)) > 0.3).astype(np.uint8)))
    for stride in (1, 2, 4):
        full = T.paste(crops, 320).reshape(20, 320 // stride, stride, 320 // stride, stride).astype(np.float32)
        want = np.round(full.mean((2, 4)) * 255).astype(np.uint8)
        assert np.array_equal(T.downsample_crops(crops, 320, stride), want)


def test_objects_the_crop_cuts_below_min_visible_become_ignore_regions(tmp_path):
    """A square at the right edge, zoomed 2x and placed at random: where less than half of it stays in the
    canvas it is no longer an object but an ignore (crowd) region; where more stays, it is the same object as
    without the rule. Mask stride 1, so pixel counts are exact."""
    write_png(tmp_path / "a.png")
    square = [20.0, 8.0, 32.0, 8.0, 32.0, 24.0, 20.0, 24.0]  # 12 x 16 px, touching the right edge
    anns = [{"id": 1, "image_id": 1, "category_id": 1, "segmentation": [square], "iscrowd": 0}]
    data = load_coco(write_coco(tmp_path, [_img()], anns))
    zoom = dict(scale_min=2, scale_max=2, min_pixels=1)
    keep_all = CocoDataset(data, 32, _samples(1, **zoom))
    honest = CocoDataset(data, 32, _samples(1, **zoom, min_visible=0.5))
    full_area = 12 * 16 * 2 * 2
    seen = set()
    for epoch in range(40):
        _, every = keep_all[(epoch, 0)]
        _, cut = honest[(epoch, 0)]
        visible = int((every["masks"] > 127).sum()) if len(every["labels"]) else 0
        if not visible or 0.45 * full_area < visible < 0.55 * full_area:  # gone, or too close to call
            continue
        if visible > 0.5 * full_area:
            seen.add("kept")
            assert torch.equal(cut["masks"], every["masks"]) and not cut["crowd"].any()
        else:
            seen.add("ignored")
            assert len(cut["labels"]) == 0
            assert torch.equal(cut["crowd"] > 127, every["masks"][0] > 127)
    assert seen == {"kept", "ignored"}
