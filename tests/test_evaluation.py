import json

import numpy as np
import pycocotools.mask as mask_util
import pytest

from tinyseg.data.coco import load_coco
from tinyseg.data.rle import decode_masks
from tinyseg.data.transforms import masks_to_boxes
from tinyseg.deploy.results import detections_to_coco
from tinyseg.evaluation import coco_evaluate, ground_truth
from tinyseg.io import write_json

from .conftest import grid_rectangles, write_coco, write_png


def _gt_results(data, shift: int = 0, shrink: int = 0):
    out = []
    for rec in data.images:
        masks = decode_masks(rec.rles, rec.height, rec.width).astype(bool)
        if shift:
            masks = np.roll(masks, shift, axis=2)
        boxes = masks_to_boxes(masks)
        boxes[:, :2] += shrink
        boxes[:, 2:] -= shrink
        out += detections_to_coco(rec.id, boxes, np.ones(len(boxes)), np.array(rec.labels), masks, data.cat_ids)
    return out


def test_ground_truth_scores_one(synth):
    data = load_coco(synth / "val.json")
    m = coco_evaluate(ground_truth(data), _gt_results(data))
    assert m["mask_ap"] == pytest.approx(1.0) and m["box_ap"] == pytest.approx(1.0)
    assert m["mask_ap50"] == pytest.approx(1.0) and m["num_images"] == 8
    assert set(m["per_class"]) == set(data.class_names)


def test_known_lower_value_for_shifted_boxes(tmp_path):
    """One 20x20 square; a box shrunk by 2 px per side has IoU 16^2/20^2 = 0.64: it counts as a match at the
    IoU thresholds 0.50, 0.55, 0.60 and misses at the other 7, so box AP = 3/10. The mask (unchanged) stays 1."""
    write_png(tmp_path / "a.png", 64, 64)
    anns = [
        {"id": 1, "image_id": 1, "category_id": 1, "iscrowd": 0, "segmentation": [[10, 10, 30, 10, 30, 30, 10, 30]]}
    ]
    data = load_coco(write_coco(tmp_path, [{"id": 1, "file_name": "a.png", "height": 64, "width": 64}], anns))
    res = _gt_results(data, shrink=2)
    m = coco_evaluate(ground_truth(data), res)
    assert m["box_ap"] == pytest.approx(0.3, abs=1e-6)
    assert m["box_ap50"] == pytest.approx(1.0) and m["box_ap75"] == pytest.approx(0.0)
    assert m["mask_ap"] == pytest.approx(1.0)
    # A mask shifted by 4 px: IoU 16*20/(2*400-320) = 0.667 -> matches at 0.50..0.65 (4 of 10): AP = 0.4.
    m = coco_evaluate(ground_truth(data), _gt_results(data, shift=4))
    assert m["mask_ap"] == pytest.approx(0.4, abs=1e-6)


def test_max_dets_matters_for_dense_images(tmp_path):
    """150 objects in one image: with maxDets=100 at most 100 can be found; AP is read at the largest maxDets."""
    write_png(tmp_path / "a.png", 200, 200)
    anns = grid_rectangles(150, 15, 13, 19, 9, 9, 2)
    data = load_coco(write_coco(tmp_path, [{"id": 1, "file_name": "a.png", "height": 200, "width": 200}], anns))
    res = _gt_results(data)
    assert coco_evaluate(ground_truth(data), res, max_dets=500)["mask_ap"] == pytest.approx(1.0)
    capped = coco_evaluate(ground_truth(data), res, max_dets=100)["mask_ap"]
    assert capped < 0.8


def test_results_are_valid_coco_json(synth, tmp_path):
    data = load_coco(synth / "val.json")
    res = _gt_results(data)
    write_json(res, tmp_path / "res.json")
    back = json.loads((tmp_path / "res.json").read_text())
    assert back[0].keys() >= {"image_id", "category_id", "bbox", "score", "segmentation"}
    m = mask_util.decode(back[0]["segmentation"])
    assert m.shape == (128, 128)
    assert not list(tmp_path.glob("*.tmp"))


def test_no_detections_scores_zero(synth):
    data = load_coco(synth / "val.json")
    m = coco_evaluate(ground_truth(data), [])
    assert m["mask_ap"] == 0.0 and m["box_ap"] == 0.0


def test_faster_coco_eval_agrees_with_pycocotools(synth):
    """The fast path gives pycocotools' numbers (to 1e-4) on imperfect detections (ground truth moved by 0-4 px,
    classes swapped, scores random, duplicates); boundary AP comes with it, and is 1 for the ground truth."""
    data = load_coco(synth / "val.json")
    rng = np.random.default_rng(0)
    results = []
    for shift in range(5):
        for r in _gt_results(data, shift=shift):
            r["score"] = float(rng.random())
            if rng.random() < 0.2:
                r["category_id"] = int(rng.choice(data.cat_ids))
            results.append(r)
    gt = ground_truth(data)
    ref = coco_evaluate(gt, results, 100, evaluator="pycocotools")
    fast = coco_evaluate(gt, results, 100, evaluator="faster")
    keys = [k for k in ref if k.startswith(("mask_ap", "box_ap"))]
    assert len(keys) == 12 and 0.2 < ref["mask_ap"] < 0.9
    for k in keys:
        assert fast[k] == pytest.approx(ref[k], abs=1e-4), k
    for name, v in ref["per_class"].items():
        assert fast["per_class"][name]["mask_ap"] == pytest.approx(v["mask_ap"], abs=1e-4)
    assert "boundary_ap" not in ref and 0 < fast["boundary_ap"] < fast["mask_ap"]  # edges are the hard part
    perfect = coco_evaluate(gt, _gt_results(data), evaluator="faster")
    assert perfect["boundary_ap"] == pytest.approx(1.0) and perfect["mask_ap"] == pytest.approx(1.0)
