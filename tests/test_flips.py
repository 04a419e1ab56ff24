"""Sided classes: a horizontal flip swaps the labels of mirrored classes, found from their names or given."""

import numpy as np
import pytest

from tinyseg.config import DataConfig
from tinyseg.data.coco import load_coco
from tinyseg.data.dataset import CocoDataset, build_training_samples
from tinyseg.data.flips import flip_map, flip_pairs
from tinyseg.errors import ConfigError, DataWarning

from .conftest import write_coco, write_png


def test_pairs_from_names_as_people_write_them():
    names = ["hood", "front_left_door", "FrontRightDoor", "l-mirror", "R mirror", "wheel", "Left.Light", "right_light"]
    assert flip_pairs(names) == [(1, 2), (3, 4), (6, 7)]
    assert flip_map(len(names), flip_pairs(names)) == (0, 2, 1, 4, 3, 5, 7, 6)
    with pytest.warns(DataWarning, match=r"\['left_only'\] look sided"):
        assert flip_pairs(["left_only", "hood"]) == []
    assert flip_pairs(["a", "b", "c"], (("a", "c"),)) == [(0, 2)]
    with pytest.raises(ConfigError, match="not a pair of class names"):
        flip_pairs(["a", "b"], (("a", "z"),))


def test_a_flipped_sample_swaps_sided_labels(tmp_path):
    """An arrow pointing left (class arrow_left) mirrored is an arrow pointing right: its label follows."""
    write_png(tmp_path / "a.png", 64, 64)
    arrow = [40, 10, 40, 50, 10, 30]  # a triangle pointing left
    anns = [{"id": 1, "image_id": 1, "category_id": 1, "segmentation": [arrow], "iscrowd": 0}]
    cats = [{"id": 1, "name": "arrow_left"}, {"id": 2, "name": "arrow_right"}, {"id": 3, "name": "dot"}]
    data = load_coco(write_coco(tmp_path, [{"id": 1, "file_name": "a.png", "height": 64, "width": 64}], anns, cats))
    for prob, label in ((0.0, 0), (1.0, 1)):
        cfg = DataConfig(scale_min=1, scale_max=1, flip_prob=prob, color_jitter=0)
        _, sample = CocoDataset(data, 64, build_training_samples(cfg, 1, data.class_names))[0]
        assert sample["labels"].tolist() == [label]
        mask = sample["masks"][0].numpy() > 127
        tip_left = mask[:, :20].any() and not mask[:, 45:].any()
        assert tip_left == (prob == 0.0)  # the mask is mirrored with it
    cfg = DataConfig(flip_prob=1, flip_pairs=(("arrow_left", "dot"),))  # given pairs win over names
    assert build_training_samples(cfg, 1, data.class_names).flip_map == (2, 1, 0)
    assert np.array_equal(build_training_samples(DataConfig(flip_prob=0), 1, data.class_names).flip_map, ())


def test_copy_paste_keeps_masks_and_pixels_consistent(synth):
    """Objects pasted from other images come with their masks and labels; what they cover leaves the masks
    underneath; boxes stay the tight boxes of the masks; no pixel belongs to two objects."""
    from tinyseg.data.transforms import masks_to_boxes

    data = load_coco(synth / "train.json")
    plain = CocoDataset(data, 128, build_training_samples(DataConfig(), 1, data.class_names))
    cfg = DataConfig(copy_paste=1.0)
    pasted = CocoDataset(data, 128, build_training_samples(cfg, 1, data.class_names))
    grew = 0
    for i in range(8):
        img, t = pasted[(0, i)]
        masks = t["masks"].numpy() > 127
        assert np.allclose(masks_to_boxes(masks), t["boxes"].numpy())
        assert masks.sum(0).max() <= 1
        grew += len(t["labels"]) > len(plain[(0, i)][1]["labels"])
        a, _ = pasted[(0, i)]
        assert np.array_equal(a.numpy(), img.numpy())  # still fixed by (seed, epoch, index)
    assert grew >= 4


def test_blur_and_noise_change_pixels_only_when_asked(synth):
    data = load_coco(synth / "train.json")
    base = DataConfig(scale_min=1, scale_max=1, flip_prob=0, color_jitter=0)
    off = CocoDataset(data, 128, build_training_samples(base, 1))[(0, 0)][0].numpy().astype(int)
    noisy_cfg = DataConfig(scale_min=1, scale_max=1, flip_prob=0, color_jitter=0, blur_prob=1.0, noise=8.0)
    noisy, t = CocoDataset(data, 128, build_training_samples(noisy_cfg, 1))[(0, 0)]
    diff = np.abs(noisy.numpy().astype(int) - off)
    assert diff.mean() > 1 and diff.mean() < 30  # degraded, still the same picture
    assert len(t["labels"]) == len(CocoDataset(data, 128, build_training_samples(base, 1))[(0, 0)][1]["labels"])
