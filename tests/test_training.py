"""Training code: the training collate's targets, the learning-rate schedule, the EMA, and a real overfit."""

import math

import numpy as np
import pytest
import torch

from tinyseg.config import Config, TrainConfig, preset
from tinyseg.data.coco import load_coco
from tinyseg.data.dataset import CocoDataset, TrainingSamples
from tinyseg.models.detector import build_model
from tinyseg.training.engine import ModelEMA, lr_factor
from tinyseg.training.losses import build_criterion
from tinyseg.training.targets import TrainingCollate, build_targets


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


def test_gaussian_alpha_sets_the_centre_spread():
    """sigma = alpha * size / 6: at the default a 16x32 box's sigma is 0.5 (the floor) x 0.72 cells at stride 4;
    at alpha 1.5 it is 1 x 2, so the cell 2 below the centre holds exp(-2^2 / (2 * 2^2)), and more cells carry
    box samples of the same total weight."""
    boxes = np.array([[8, 8, 24, 40]], np.float32)
    narrow = build_targets(np.array([0]), boxes, 80, 4)
    wide = build_targets(np.array([0]), boxes, 80, 4, alpha=1.5)
    assert math.isclose(wide["heatmap"][0, 8, 4], math.exp(-0.5), rel_tol=1e-5)
    assert narrow["heatmap"][0, 8, 4] < 0.05
    assert (wide["box_weight"] > 0).sum() > (narrow["box_weight"] > 0).sum()
    assert math.isclose(wide["box_weight"].sum(), math.log(16 * 32 + 1), rel_tol=1e-4)  # same total weight


def _tiny_cfg() -> Config:
    cfg = Config()
    cfg.model = preset("nano")
    cfg.data.imgsz = 128
    return cfg


@pytest.mark.parametrize("mask_head", ["prototypes", "condinst", "centermask"])
def test_training_lowers_loss_and_overfits_masks(synth, mask_head):
    """A few real iterations lower the loss; overfitting 4 images makes masks match (mask IoU > 0.8), with each
    mask design."""
    from tinyseg.data.transforms import Letterbox
    from tinyseg.deploy.results import to_detections

    torch.manual_seed(0)
    data = load_coco(synth / "train.json")
    data.images = [r for r in data.images if 2 <= len(r.labels) <= 6][:4]
    cfg = _tiny_cfg()
    cfg.model.num_classes, cfg.model.mask_head = data.num_classes, mask_head
    ds = CocoDataset(data, 128, TrainingSamples(1, 1, 0, 0, 6, 10**6, mask_stride=2))  # no augmentation
    images, t = TrainingCollate(4, 2)([ds[i] for i in range(len(ds))])
    m = build_model(cfg.model)
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
        from tinyseg.data.rle import decode_masks

        gtm = decode_masks(rec.rles, 128, 128).astype(bool)
        for g in gtm:
            best = max((np.logical_and(g, p).sum() / np.logical_or(g, p).sum() for p in d.masks), default=0)
            ious.append(best)
        assert len(gt) == len(gtm)
    assert np.mean(ious) > 0.8, ious


def test_training_collate_pads_and_lists_mask_cells():
    """Two images, 3 squares and none: dense targets stacked, instances padded with a valid flag, and the mask
    cells are exactly those inside each box grown by MASK_MARGIN, with the true mask there."""
    from .conftest import square_batch

    images, t = square_batch(3, 64)
    assert images.shape == (2, 3, 64, 64) and images.is_contiguous(memory_format=torch.channels_last)
    assert t["heatmap"].shape == (2, 1, 16, 16) and t["ignore"].shape == (2, 16, 16)
    assert t["valid"].tolist() == [[True] * 3, [False] * 3] and t["masks"].shape == (2, 3, 32, 32)
    assert int(t["heatmap"][0].eq(1).sum()) == 3 and not t["heatmap"][1].any()
    # Square 0 covers input pixels 0..6 (x and y): with the 2-px margin, cell centres (1 + 2k) up to 8 -> k 0..3.
    cells = t["mask_cell"][t["mask_instance"] == 0]
    assert sorted(cells.tolist()) == [y * 32 + x for y in range(4) for x in range(4)]
    values = t["mask_value"][t["mask_instance"] == 0].reshape(4, 4)
    assert values[:3, :3].eq(255).all() and values[3].eq(0).all() and values[:, 3].eq(0).all()
    assert set(t["mask_instance"].tolist()) == {0, 1, 2}


def test_crowd_regions_become_ignore_cells(tmp_path):
    from tinyseg.data.dataset import build_training_samples

    from .conftest import write_coco, write_png

    write_png(tmp_path / "a.png", 64, 64)
    crowd = {"id": 1, "image_id": 1, "category_id": 1, "iscrowd": 1, "segmentation": [[0, 0, 16, 0, 16, 16, 0, 16]]}
    obj = {"id": 2, "image_id": 1, "category_id": 1, "iscrowd": 0, "segmentation": [[40, 40, 50, 40, 50, 50, 40, 50]]}
    data = load_coco(write_coco(tmp_path, [{"id": 1, "file_name": "a.png", "height": 64, "width": 64}], [crowd, obj]))
    cfg = Config().data
    cfg.scale_min = cfg.scale_max = 1.0
    cfg.flip_prob = 0.0
    ds = CocoDataset(data, 64, build_training_samples(cfg, 2))
    _, t = TrainingCollate(4, 2)([ds[0]])
    ignore = t["ignore"][0]
    assert ignore[:4, :4].all() and int(ignore.sum()) == 16  # the crowd's 16x16 px = 4x4 cells, nothing else
    assert t["valid"].tolist() == [[True]]


def test_lr_schedule_end_points():
    assert lr_factor(0.0, 0.1, 0.02) == pytest.approx(0.1)  # warm-up starts at 0.1 x lr
    assert lr_factor(0.1, 0.1, 0.02) == pytest.approx(1.0)  # and ends at the peak
    assert lr_factor(0.55, 0.1, 0.02) == pytest.approx(0.02 + 0.98 * 0.5)  # half-way down the cosine
    assert lr_factor(1.0, 0.1, 0.02) == pytest.approx(0.02)  # the end: final_lr
    assert lr_factor(2.0, 0.1, 0.02) == pytest.approx(0.02)  # past the end stays there


def test_ema_formula():
    """d = decay * (1 - exp(-updates / ramp)); ema = d * ema + (1 - d) * weights; buffers that are not floats
    are copied."""
    model = torch.nn.BatchNorm1d(2)
    ema = ModelEMA(model, decay=0.9, ramp=2.0)
    with torch.no_grad():
        model.weight.fill_(3.0)
    model.num_batches_tracked.fill_(7)
    ema.update(model)
    d = 0.9 * (1 - math.exp(-1 / 2.0))
    assert ema.model.weight.tolist() == pytest.approx([d * 1.0 + (1 - d) * 3.0] * 2)
    assert int(ema.model.num_batches_tracked) == 7
    ema.update(model)
    d2 = 0.9 * (1 - math.exp(-2 / 2.0))
    assert ema.model.weight.tolist() == pytest.approx([d2 * (d + (1 - d) * 3.0) + (1 - d2) * 3.0] * 2)
