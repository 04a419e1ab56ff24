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
    assert flip_pairs(["leftfoot", "leftover", "rightfoot", "rightsizer"]) == [(0, 2)]
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
    keep_labels = DataConfig(flip_prob=1, auto_flip_pairs=False)
    assert np.array_equal(build_training_samples(keep_labels, 1, data.class_names).flip_map, ())


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


STEPS = 30


def _arrow_set(folder, n: int, seed: int):
    """n 64x64 images, each with two arrows (triangles) pointing left or right: classes arrow_left, arrow_right."""
    import cv2

    rng = np.random.default_rng(seed)
    images, anns = [], []
    for i in range(n):
        img = rng.integers(60, 120, (64, 64, 3), dtype=np.uint8)
        for cx in (16, 48):  # mirror images of each other: a flipped scene is laid out like an unflipped one
            side, s = int(rng.integers(2)), 2 * int(rng.integers(9, 13))
            y0 = int(rng.integers(4, 60 - s))
            tip, back = (cx - s // 2, cx + s // 2) if side == 0 else (cx + s // 2, cx - s // 2)
            poly = [tip, y0 + s // 2, back, y0, back, y0 + s]
            cv2.fillPoly(img, [np.array(poly).reshape(3, 2)], (230, 200, 40))
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": side + 1, "segmentation": [poly],
                         "iscrowd": 0})  # fmt: skip
        cv2.imwrite(str(folder / f"{i}.png"), img)
        images.append({"id": i + 1, "file_name": f"{i}.png", "height": 64, "width": 64})
    cats = [{"id": 1, "name": "arrow_left"}, {"id": 2, "name": "arrow_right"}]
    return load_coco(write_coco(folder, images, anns, cats))


def test_label_swapping_flips_teach_the_side(tmp_path):
    """Arrows pointing left or right, trained with random flips: when the flip swaps the labels the model learns
    which way an arrow points, on the validation images and on their mirror images; when it does not (half the
    time a left arrow is taught as right), it gets the mirror images wrong."""
    import torch

    from tinyseg.config import TrainConfig, preset
    from tinyseg.data.dataset import TrainingSamples
    from tinyseg.models.detector import build_model
    from tinyseg.training.losses import build_criterion
    from tinyseg.training.targets import TrainingCollate

    (tmp_path / "train").mkdir(), (tmp_path / "val").mkdir()
    train, val = _arrow_set(tmp_path / "train", 32, 0), _arrow_set(tmp_path / "val", 8, 1)
    collate = TrainingCollate(4, 2)
    views = []  # the validation images as they are, and mirrored with their labels swapped
    for prob in (0, 1):
        ds = CocoDataset(val, 64, TrainingSamples(1, 1, prob, 0, 6, 10**6, mask_stride=2, flip_map=(1, 0)))
        views.append(collate([ds[i] for i in range(len(ds))]))
    accuracy = {}
    for swap in (True, False):
        torch.manual_seed(0)
        cfg = preset("nano")
        cfg.num_classes = 2
        m = build_model(cfg)
        crit = build_criterion(TrainConfig(), m.stride)
        opt = torch.optim.AdamW(m.parameters(), lr=0.01, weight_decay=0)
        flips = TrainingSamples(1, 1, 0.5, 0, 6, 10**6, mask_stride=2, flip_map=(1, 0) if swap else ())
        ds = CocoDataset(train, 64, flips)
        for step in range(STEPS):
            images, t = collate([ds[(step, i)] for i in range(step % 4 * 8, step % 4 * 8 + 8)])
            loss = crit.total(crit(m(images, t), t))
            opt.zero_grad()
            loss.backward()
            opt.step()
        right = []
        for images, t in views:
            with torch.no_grad():  # BN in batch mode: the fit is tested, not a few steps of running statistics
                logits = m(images, t)["class_logits_truth"][t["valid"]]
            right.append(logits.argmax(-1) == t["labels"][t["valid"]])
        accuracy[swap] = torch.cat(right).float().mean().item()
    assert accuracy[True] >= 0.9 and accuracy[False] <= 0.75, accuracy
