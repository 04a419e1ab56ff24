import json

import numpy as np
import pycocotools.mask as mask_util

from tinyseg.data.synthetic import CLASSES, generate, render_image


def test_deterministic_for_a_seed():
    a_img, a_inst = render_image(160, np.random.default_rng([5, 1, 7]))
    b_img, b_inst = render_image(160, np.random.default_rng([5, 1, 7]))
    c_img, _ = render_image(160, np.random.default_rng([6, 1, 7]))
    assert np.array_equal(a_img, b_img)
    assert [i["category"] for i in a_inst] == [i["category"] for i in b_inst]
    assert not np.array_equal(a_img, c_img)


def test_dataset_is_valid_coco_with_visible_masks(synth):
    d = json.loads((synth / "train.json").read_text())
    assert len(d["images"]) == 24 and [c["name"] for c in d["categories"]] == list(CLASSES)
    by_image: dict[int, list] = {}
    for a in d["annotations"]:
        m = mask_util.decode(a["segmentation"])
        assert m.shape == (128, 128) and m.sum() == a["area"] > 0
        x, y, w, h = a["bbox"]
        assert 0 <= x and 0 <= y and x + w <= 128 and y + h <= 128
        by_image.setdefault(a["image_id"], []).append(m)
        assert (synth / next(i["file_name"] for i in d["images"] if i["id"] == a["image_id"])).is_file()
    # Masks are the visible parts: no pixel belongs to two objects.
    for masks in by_image.values():
        assert np.stack(masks).sum(0).max() <= 1
    counts = [len(by_image.get(i["id"], [])) for i in d["images"]]
    assert max(counts) >= 3  # several objects per image happen


def test_generation_same_files_for_same_seed(tmp_path):
    generate(tmp_path / "a", 3, 1, 64, seed=1, progress=False)
    generate(tmp_path / "b", 3, 1, 64, seed=1, progress=False, workers=2)
    assert (tmp_path / "a/train.json").read_text() == (tmp_path / "b/train.json").read_text()
    for f in ("images/train/000002.png", "images/val/000000.png"):
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes()


def test_sizes_and_occlusion_statistics():
    """Over many images: sizes span ~8 px to ~1/3 of the image, and some objects are partly hidden."""
    sizes, occluded = [], 0
    for i in range(60):
        _, inst = render_image(320, np.random.default_rng([0, 1, i]))
        for obj in inst:
            ys, xs = np.nonzero(obj["mask"])
            sizes.append(max(np.ptp(ys), np.ptp(xs)) + 1)
            occluded += obj["mask"].sum() < obj["area"]
    assert min(sizes) <= 12 and max(sizes) >= 80
    assert occluded > 0


def test_photo_style_has_mirror_image_sided_classes(tmp_path):
    """The photo-like set: its left / right classes pair up from their names alone, and each right-hand outline is
    the left one mirrored (so only a flip that swaps labels teaches the side)."""
    from tinyseg.data.flips import flip_pairs
    from tinyseg.data.photo import PHOTO_CLASSES, _outline

    pairs = flip_pairs(list(PHOTO_CLASSES))
    assert len(pairs) == 3
    for a, b in pairs:
        left, right = _outline(PHOTO_CLASSES[a]), _outline(PHOTO_CLASSES[b])
        assert np.allclose(left * (-1, 1), right) and not np.allclose(left, right)
    _, val = generate(tmp_path, train=0, val=12, size=128, seed=3, progress=False, style="photo")
    coco = json.loads(val.read_text())
    assert [c["name"] for c in coco["categories"]] == list(PHOTO_CLASSES)
    assert coco["annotations"] and {a["category_id"] for a in coco["annotations"]} <= set(range(1, 9))
    for a in coco["annotations"]:
        assert mask_util.area(a["segmentation"]) == a["area"] >= 16


def test_photo_style_varies_in_size_and_crowding():
    from tinyseg.data.photo import render_photo

    rng = np.random.default_rng(0)
    areas, counts = [], []
    for _ in range(40):
        img, inst = render_photo(256, rng)
        assert img.shape == (256, 256, 3) and img.dtype == np.uint8 and img.std() > 5
        counts.append(len(inst))
        areas += [int(p["mask"].sum()) for p in inst]
    assert max(counts) >= 4 and min(counts) <= 1
    assert max(areas) / min(areas) > 20  # small and large objects in one set
