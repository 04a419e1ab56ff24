"""YOLO-seg datasets: exact polygons from masks (holes, parts), COCO <-> YOLO round trips, training and evaluating
on a data.yaml, and clear handling of broken label lines."""

import json

import cv2
import numpy as np
import pycocotools.mask as mask_util
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from tinyseg.data.coco import load_coco
from tinyseg.data.rle import decode_masks
from tinyseg.data.yolo import mask_polygon, read_yolo
from tinyseg.errors import DataWarning
from tinyseg.tools.cli import main

from .conftest import write_png


@settings(max_examples=80, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(1, 40), st.integers(1, 40), st.floats(0.1, 0.9))
def test_one_polygon_gives_back_the_mask(seed, h, w, density):
    """Any mask (noise: many parts and holes) -> one polygon whose fill is exactly the mask again."""
    mask = (np.random.default_rng(seed).random((h, w)) < density).astype(np.uint8)
    poly = mask_polygon(mask)
    if not mask.any():
        assert poly == []
        return
    back = mask_util.decode(mask_util.frPyObjects([poly], h, w))[:, :, 0]
    assert np.array_equal(back, mask)


def test_a_ring_keeps_its_hole():
    ring = np.zeros((40, 40), np.uint8)
    cv2.circle(ring, (20, 20), 15, 1, -1)
    cv2.circle(ring, (20, 20), 6, 0, -1)
    poly = mask_polygon(ring)
    back = mask_util.decode(mask_util.frPyObjects([poly], 40, 40))[:, :, 0]
    assert np.array_equal(back, ring) and back[20, 20] == 0


def _instances(data):
    """(image file name, label, mask) of every object, in order."""
    out = []
    for rec in data.images:
        for label, m in zip(rec.labels, decode_masks(rec.rles, rec.height, rec.width)):
            out.append((rec.file.name.split("_", 1)[-1], label, m))
    return out


def _iou(a, b):
    return (a & b).sum() / max((a | b).sum(), 1)


def test_coco_to_yolo_to_coco_keeps_every_mask(synth, tmp_path, capsys):
    """The synthetic set (rings have holes, occluded shapes come in parts) through YOLO-seg and back: every
    instance keeps its class and its mask (IoU >= 0.99 each; in fact exact)."""
    yolo = tmp_path / "yolo"
    for split in ("train", "val"):
        assert main(["convert", "--coco", str(synth / f"{split}.json"), "--to-yolo", str(yolo)]) == 0
    meta = yaml.safe_load((yolo / "data.yaml").read_text())
    assert meta["train"] == "images/train" and meta["val"] == "images/val"
    assert list(meta["names"].values()) == ["circle", "square", "triangle", "star", "ring", "cross"]
    original = load_coco(synth / "val.json")
    via_yolo = read_yolo(yolo / "data.yaml", "val")
    assert (
        main(
            [
                "convert",
                "--yolo",
                str(yolo / "data.yaml"),
                "--split",
                "val",
                "--to-coco",
                str(tmp_path / "c" / "v.json"),
            ]
        )
        == 0
    )
    back = load_coco(tmp_path / "c" / "v.json")
    for other in (via_yolo, back):
        a, b = _instances(original), _instances(other)
        assert len(a) == len(b) > 20
        for (fa, la, ma), (fb, lb, mb) in zip(a, b):
            assert fa == fb and la == lb and _iou(ma, mb) >= 0.99
        assert min(_iou(x[2], y[2]) for x, y in zip(a, b)) == 1.0
    assert back.cat_ids == [1, 2, 3, 4, 5, 6]
    assert "wrote" in capsys.readouterr().out


def test_train_and_eval_on_a_data_yaml(synth, tmp_path):
    yolo = tmp_path / "yolo"
    for split in ("train", "val"):
        assert main(["convert", "--coco", str(synth / f"{split}.json"), "--to-yolo", str(yolo)]) == 0
    run = tmp_path / "run"
    argv = ["train", "--data", str(yolo / "data.yaml"), "--epochs", "1", "--imgsz", "128", "--out", str(run)]
    assert main(argv + ["--workers", "0"]) == 0
    assert (run / "best.pt").is_file() and "mask_ap" in (run / "metrics.csv").read_text()
    assert (
        main(
            [
                "eval",
                "--weights",
                str(run / "best.pt"),
                "--val",
                str(yolo / "data.yaml"),
                "--json",
                str(tmp_path / "m.json"),
            ]
        )
        == 0
    )
    assert json.loads((tmp_path / "m.json").read_text())["num_images"] == 8


def test_broken_label_lines_are_skipped_by_name(tmp_path):
    root = tmp_path / "d"
    write_png(root / "images" / "train" / "a.png", 20, 40)
    (root / "labels" / "train").mkdir(parents=True)
    lines = [
        "0 0.1 0.1 0.5 0.1 0.5 0.5",  # a triangle: kept
        "7 0.1 0.1 0.5 0.1 0.5 0.5",  # no class 7
        "0 0.1 0.1 0.5",  # odd number of coordinates
        "0 nan 0.1 0.5 0.1 0.5 0.5",  # not finite
        "x 0.1 0.1 0.5 0.1 0.5 0.5",  # not a number
        "1 0.5 0.5 0.5 0.5",  # a detection box: its rectangle
    ]
    (root / "labels" / "train" / "a.txt").write_text("\n".join(lines) + "\n")
    (root / "data.yaml").write_text("path: .\ntrain: images/train\nnames: [a, b]\n")
    with pytest.warns(DataWarning) as caught:
        data = read_yolo(root / "data.yaml", "train")
    said = " | ".join(str(w.message) for w in caught)
    for n in (2, 3, 4, 5):
        assert f"a.txt:{n}: skipped" in said
    assert data.images[0].labels == [0, 1]
    box = decode_masks(data.images[0].rles, 20, 40)[1]
    assert box.sum() == 10 * 20 and box[5:15, 10:30].all()  # 0.5 x 0.5 of 40 x 20 around the centre


@pytest.mark.parametrize(
    "text, said",
    [
        ("train: images/train\n", "`names` must be a list"),
        ("names: [a]\n", "no `train` image folder"),
        ("names: [a]\ntrain: nowhere\n", "image folder"),
        (": [\n", "not valid YAML"),
    ],
)
def test_bad_data_yaml_is_one_line(tmp_path, capsys, text, said):
    (tmp_path / "data.yaml").write_text(text)
    argv = ["train", "--data", str(tmp_path / "data.yaml"), "--epochs", "1", "--out", str(tmp_path / "r")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert said in err and "Traceback" not in err


def test_results_out_as_rle_polygons_and_yolo_lines(tiny_run, synth, tmp_path):
    """predict --json as RLE (pycocotools' own encoding, bit for bit) and as polygons describe the same masks;
    --save-txt writes the same polygons as YOLO-seg lines."""
    from tinyseg.deploy.results import Detections

    rng = np.random.default_rng(0)
    masks = rng.random((3, 30, 40)) > 0.6
    det = Detections(np.zeros((3, 4), np.float32), np.ones(3, np.float32), np.array([0, 1, 0]), masks, ["a", "b"])
    for r, m in zip(det.to_coco(7, [10, 20]), masks):
        assert r["segmentation"]["counts"] == mask_util.encode(np.asfortranarray(m.astype(np.uint8)))["counts"].decode()
        assert r["image_id"] == 7 and r["category_id"] in (10, 20)
    for r, m in zip(det.to_coco(7, [10, 20], fmt="polygons"), masks):
        back = mask_util.decode(mask_util.frPyObjects(r["segmentation"], 30, 40))[:, :, 0]
        assert np.array_equal(back, m)

    out = tmp_path / "p"
    base = ["predict", "--weights", str(tiny_run / "best.pt"), "--source", str(synth / "images/val"), "--conf", "0.0"]
    assert main(base + ["--out", str(out), "--json", str(tmp_path / "rle.json"), "--save-txt"]) == 0
    assert main(base + ["--out", str(out), "--json", str(tmp_path / "poly.json"), "--format", "polygons"]) == 0
    rle, poly = (json.loads((tmp_path / f).read_text()) for f in ("rle.json", "poly.json"))
    assert len(rle) == len(poly) > 0
    h = w = 128
    for a, b in zip(rle, poly):
        ma = mask_util.decode(a["segmentation"])
        mb = (
            mask_util.decode(mask_util.frPyObjects(b["segmentation"], h, w))[:, :, 0]
            if b["segmentation"][0]
            else ma * 0
        )
        assert np.array_equal(ma, mb)
    lines = (out / "labels" / "000000.txt").read_text().splitlines()
    first = [r for r in rle if r["image_id"] == 1 and r["segmentation"]["counts"] != "0PZ1"]
    assert len(lines) == sum(1 for r in first if mask_util.area(r["segmentation"]) > 0)
