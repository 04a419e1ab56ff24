"""Bad, hostile and unusual inputs through the command line, as a careless or hostile user would give them.

Every case runs `tinyseg ...` in-process and checks: the exit status; no traceback; that what was said (stderr
and warnings) names the problem; and that no file outside the case's output folder changed. Cases that a
demanding user expects to work (a dataset with a few broken annotations) expect status 0 and a warning.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from tinyseg.tools.cli import main

from .conftest import write_png

SQUARE = [4, 4, 20, 4, 20, 20, 4, 20]


@dataclass
class World:
    """The files a case may use: a valid little dataset (`ok.json` + `a.png`, `b.png`), a checkpoint, an
    exported model, and `out/`, the only folder a command may write."""

    root: Path
    ckpt: Path
    onnx: Path

    @property
    def out(self) -> Path:
        return self.root / "out"

    def coco(self, images=None, annotations=None, categories=None, name: str = "d.json", raw: str | None = None):
        images = images if images is not None else [_img(1, "a.png"), _img(2, "b.png")]
        annotations = annotations if annotations is not None else [_ann(1, 1, [SQUARE])]
        categories = categories if categories is not None else [{"id": 1, "name": "thing"}]
        d = {"images": images, "annotations": annotations, "categories": categories}
        (self.root / name).write_text(raw if raw is not None else json.dumps(d))
        return str(self.root / name)

    def ann(self, segmentation, **extra) -> str:
        """A dataset whose image 1 has one good square and one annotation with `segmentation`."""
        return self.coco(annotations=[_ann(1, 1, [SQUARE]), _ann(2, 1, segmentation, **extra)])


def _img(i, name, h=32, w=32):
    return {"id": i, "file_name": name, "height": h, "width": w}


def _ann(i, image_id, seg, category_id=1, **extra):
    return {"id": i, "image_id": image_id, "category_id": category_id, "segmentation": seg, "iscrowd": 0, **extra}


@pytest.fixture(scope="module")
def world(tiny_run, tmp_path_factory) -> World:
    from tinyseg.deploy.export.onnx import export_onnx
    from tinyseg.deploy.predict import Segmenter

    root = tmp_path_factory.mktemp("world")
    write_png(root / "a.png")
    write_png(root / "b.png")
    onnx = export_onnx(Segmenter.load(tiny_run / "best.pt"), root / "m.onnx", max_det=10)
    return World(root, tiny_run / "best.pt", onnx)


def _show(w: World, data: str, *extra: str) -> list[str]:
    return ["show", "--data", data, "--out", str(w.out), *extra]


def _train(w: World, *extra: str, data: str | None = None) -> list[str]:
    data = data or w.coco()
    return ["train", "--train", data, "--epochs", "1", "--imgsz", "64", "--out", str(w.out / "run"), *extra]


def _predict(w: World, *extra: str, weights: str | None = None, source: str | None = None) -> list[str]:
    return ["predict", "--weights", weights or str(w.ckpt), "--source", source or str(w.root / "a.png"), *extra]


def _eval(w: World, *extra: str, weights: str | None = None, val: str | None = None) -> list[str]:
    return ["eval", "--weights", weights or str(w.ckpt), "--val", val or w.coco(), *extra]


def _checkpoint(w: World, name: str, change: Callable[[dict], None]) -> str:
    from tinyseg.checkpoint import load_checkpoint, save_checkpoint

    ck = load_checkpoint(w.ckpt)
    change(ck)
    save_checkpoint(ck, w.root / name)
    return str(w.root / name)


def _onnx_meta(w: World, name: str, meta: str | None) -> str:
    import onnx

    m = onnx.load(str(w.onnx))
    del m.metadata_props[:]
    if meta is not None:
        e = m.metadata_props.add()
        e.key, e.value = "tinyseg", meta
    onnx.save(m, str(w.root / name))
    return str(w.root / name)


def _folder(w: World, name: str, files: dict[str, bytes]) -> str:
    d = w.root / name
    d.mkdir(exist_ok=True)
    for f, data in files.items():
        (d / f).write_bytes(data)
    return str(d)


def _bomb(w: World) -> str:
    """A PNG whose header declares 14000 x 14000 pixels (its data is a few bytes)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", 14000, 14000, 8, 2, 0, 0, 0)
    png = PNG + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    return _folder(w, "bomb", {"big.png": png})


def _fifo(w: World) -> str:
    d = w.root / "fifo"
    d.mkdir(exist_ok=True)
    if not (d / "a.png").exists():
        os.mkfifo(d / "a.png")
    return str(d)


PNG = b"\x89PNG\r\n\x1a\n"

# (id, argv from the world, expected status, what must be said)
CASES: list[tuple[str, Callable[[World], list[str]], int, str]] = [
    # -- dataset files
    ("json missing", lambda w: _show(w, str(w.root / "nope.json")), 2, "nope.json: annotation file not found"),
    ("json is a folder", lambda w: _show(w, str(w.root)), 2, "annotation file not found"),
    ("json syntax", lambda w: _show(w, w.coco(raw="{")), 2, "d.json: not valid JSON"),
    ("json a list", lambda w: _show(w, w.coco(raw="[1]")), 2, "not a COCO instances file"),
    ("json binary", lambda w: _show(w, w.coco(raw="\udcff" * 0 + "\x00\x01")), 2, "not valid JSON"),
    ("json deeply nested", lambda w: _show(w, w.coco(raw="[" * 200000)), 2, "not valid JSON"),
    ("no images key", lambda w: _show(w, w.coco(raw='{"categories": []}')), 2, "not a COCO instances file"),
    ("no categories", lambda w: _show(w, w.coco(categories=[])), 2, "no categories"),
    ("category id text", lambda w: _show(w, w.coco(categories=[{"id": "a"}])), 2, "integer 'id'"),
    ("category id bool", lambda w: _show(w, w.coco(categories=[{"id": True}])), 2, "integer 'id'"),
    ("category not a dict", lambda w: _show(w, w.coco(categories=[3])), 2, "integer 'id'"),
    ("category ids twice", lambda w: _show(w, w.coco(categories=[{"id": 1}, {"id": 1}])), 2, "more than once"),
    ("image not a dict", lambda w: _show(w, w.coco(images=["a.png"])), 2, "needs integer id"),
    (
        "image id twice",
        lambda w: _show(w, w.coco(images=[_img(1, "a.png"), _img(1, "b.png")])),
        2,
        "image id 1 appears",
    ),
    ("image width 0", lambda w: _show(w, w.coco(images=[_img(1, "a.png", w=0)])), 2, "impossible size 0x32"),
    ("image height < 0", lambda w: _show(w, w.coco(images=[_img(1, "a.png", h=-3)])), 2, "impossible size"),
    ("image huge", lambda w: _show(w, w.coco(images=[_img(1, "a.png", 10**5, 10**5)])), 2, "impossible size"),
    ("image size float", lambda w: _show(w, w.coco(images=[_img(1, "a.png", 32.5, 32)])), 2, "needs integer id"),
    ("file_name missing", lambda w: _show(w, w.coco(images=[{"id": 1, "height": 3, "width": 3}])), 2, "file_name"),
    ("file_name ../", lambda w: _show(w, w.coco(images=[_img(1, "../a.png")])), 2, "leads outside the image folder"),
    ("file_name absolute", lambda w: _show(w, w.coco(images=[_img(1, "/etc/passwd")])), 2, "outside the image folder"),
    ("all images missing", lambda w: _show(w, w.coco(images=[_img(1, "gone.png")])), 2, "the dataset is empty"),
    ("annotations a dict", lambda w: _show(w, w.coco(annotations={"a": 1})), 2, "'annotations' is not a list"),
    ("image folder missing", lambda w: _show(w, w.coco(), "--images", str(w.root / "no")), 2, "image folder not found"),
    # -- annotations: skipped with a warning, the rest of the dataset is used
    ("polygon 1e9", lambda w: _show(w, w.ann([[1e9, 0, 5, 5, 0, 5]])), 0, "far outside the image"),
    ("polygon nan", lambda w: _show(w, w.ann([[float("nan"), 0, 5, 5, 0, 5]])), 0, "not finite"),
    ("polygon inf", lambda w: _show(w, w.ann([[float("inf"), 0, 5, 5, 0, 5]])), 0, "not finite"),
    ("polygon text", lambda w: _show(w, w.ann([["a", 0, 5, 5, 0, 5]])), 0, "not a number"),
    ("polygon bools", lambda w: _show(w, w.ann([[True, 0, 5, 5, 0, 5]])), 0, "not a number"),
    ("polygon 2 points", lambda w: _show(w, w.ann([[1, 1, 5, 5]])), 0, "fewer than 3 points"),
    ("polygon nested", lambda w: _show(w, w.ann([[[1, 2], [3, 4], [5, 6]]])), 0, "not a number"),
    ("polygon huge", lambda w: _show(w, w.ann([[1.0, 2.0] * 150_000])), 0, "more than 100000 points"),
    ("rle size", lambda w: _show(w, w.ann({"size": [5, 5], "counts": [25]})), 0, "does not match image size"),
    ("rle negative", lambda w: _show(w, w.ann({"size": [32, 32], "counts": [-5, 1029]})), 0, "non-negative"),
    ("rle short", lambda w: _show(w, w.ann({"size": [32, 32], "counts": [10, 10]})), 0, "sum to 20"),
    ("rle garbage", lambda w: _show(w, w.ann({"size": [32, 32], "counts": "~~~~"})), 0, "outside its alphabet"),
    ("rle unfinished", lambda w: _show(w, w.ann({"size": [32, 32], "counts": "0P"})), 0, "middle of a number"),
    ("rle wrong area", lambda w: _show(w, w.ann({"size": [32, 32], "counts": "05"})), 0, "does not describe"),
    ("rle counts a number", lambda w: _show(w, w.ann({"size": [32, 32], "counts": 7})), 0, "neither a list"),
    ("segmentation number", lambda w: _show(w, w.ann(5)), 0, "neither polygons nor RLE"),
    ("category unknown", lambda w: _show(w, w.coco(annotations=[_ann(1, 1, [SQUARE], 9)])), 0, "unknown category_id"),
    ("image_id text", lambda w: _show(w, w.coco(annotations=[_ann(1, "1", [SQUARE])])), 0, "non-integer image_id"),
    ("bbox text", lambda w: _show(w, w.ann([SQUARE], bbox=["a", 1, 2, 3])), 0, "wrote 2 overlays"),
    ("annotation a list", lambda w: _show(w, w.coco(annotations=[[1, 2]])), 0, "not an object"),
    # -- image files
    ("image truncated", lambda w: _show(w, w.coco(images=[_img(1, "t.png")]) if _trunc(w) else ""), 2, "t.png"),
    ("image is text", lambda w: _show(w, w.coco(images=[_img(1, "x.png")]) if _text(w) else ""), 2, "x.png: not"),
    ("image size differs", lambda w: _show(w, w.coco(images=[_img(1, "a.png", 40, 40)])), 2, "JSON says 40x40"),
    # -- training settings
    ("imgsz 100", lambda w: _train(w, "--imgsz", "100"), 2, "data.imgsz = 100 is out of range"),
    ("imgsz 0", lambda w: _train(w, "--imgsz", "0"), 2, "--imgsz: invalid integer in 32..4096"),
    ("batch 0", lambda w: _train(w, "--batch", "0"), 2, "--batch: invalid"),
    ("epochs 0", lambda w: _train(w, "--epochs", "0"), 2, "--epochs: invalid"),
    ("time 0", lambda w: ["train", "--train", w.coco(), "--time", "0"], 2, "--time: invalid number of minutes"),
    ("time negative", lambda w: ["train", "--train", w.coco(), "--time", "-5"], 2, "--time: invalid"),
    ("time nan", lambda w: ["train", "--train", w.coco(), "--time", "nan"], 2, "--time: invalid"),
    ("workers -1", lambda w: _train(w, "--workers", "-1"), 2, "--workers: invalid"),
    ("lr negative", lambda w: _train(w, "--set", "train.lr=-1"), 2, "train.lr = -1.0 is out of range"),
    ("lr nan", lambda w: _train(w, "--set", "train.lr=.nan"), 2, "train.lr = nan is out of range"),
    ("val_interval 0", lambda w: _train(w, "--set", "train.val_interval=0"), 2, "train.val_interval = 0"),
    ("max_det 0", lambda w: _train(w, "--set", "model.max_det=0"), 2, "model.max_det = 0"),
    ("depths short", lambda w: _train(w, "--set", "model.depths=[1,2]"), 2, "model.depths"),
    ("scale min > max", lambda w: _train(w, "--set", "data.scale_min=2", "data.scale_max=1"), 2, "scale_min"),
    ("unknown key", lambda w: _train(w, "--set", "train.speed=3"), 2, "train.speed: unknown key"),
    ("not key=value", lambda w: _train(w, "--set", "lr"), 2, "expected key=value"),
    ("device tpu", lambda w: _train(w, "--device", "tpu"), 2, "train.device = 'tpu'"),
    ("device cuda absent", lambda w: _train(w, "--device", "cuda"), 2, "no CUDA device"),
    ("mask head unknown", lambda w: _train(w, "--set", "model.mask_head=blob"), 2, "model.mask_head = 'blob'"),
    ("jitter mode unknown", lambda w: _train(w, "--set", "data.color_jitter_mode=hsv"), 2, "one of image, mid_grey"),
    ("config missing", lambda w: _train(w, "--config", str(w.root / "c.yaml")), 2, "c.yaml: config file not found"),
    ("config not yaml", lambda w: _train(w, "--config", _file(w, "c1.yaml", ":\n  - ]")), 2, "not valid YAML"),
    ("config a list", lambda w: _train(w, "--config", _file(w, "c2.yaml", "- 1")), 2, "expected a mapping"),
    ("config unknown", lambda w: _train(w, "--config", _file(w, "c3.yaml", "model: {x: 1}")), 2, "model.x"),
    ("no training data", lambda w: ["train", "--epochs", "1"], 2, "no training data"),
    ("train json missing", lambda w: _train(w, data=str(w.root / "no.json")), 2, "no.json: annotation file not"),
    ("resume and flags", lambda w: ["train", "--resume", str(w.ckpt.parent), "--epochs", "3"], 2, "drop --epochs"),
    ("resume no last.pt", lambda w: ["train", "--resume", str(w.root)], 2, "last.pt: checkpoint not found"),
    ("resume best.pt", lambda w: ["train", "--resume", str(w.ckpt)], 2, "has no training state"),
    ("out is a file", lambda w: _train(w, "--out", str(w.root / "a.png")), 2, "a.png: exists and is not a folder"),
    ("preset unknown", lambda w: _train(w, "--model", "huge"), 2, "unknown model preset"),
    # -- models
    ("weights missing", lambda w: _predict(w, weights=str(w.root / "no.pt")), 2, "no.pt: checkpoint not found"),
    ("weights random", lambda w: _predict(w, weights=_file(w, "r.pt", "x" * 100)), 2, "not a readable tinyseg"),
    ("weights other format", lambda w: _predict(w, weights=_file(w, "o.pt", "")), 2, "not a readable tinyseg"),
    (
        "weights bad prototypes",
        lambda w: _predict(w, weights=_checkpoint(w, "p.pt", lambda c: c["config"]["model"].update(num_prototypes=-3))),
        2,
        "model.num_prototypes = -3",
    ),
    (
        "weights bad cat_ids",
        lambda w: _predict(w, weights=_checkpoint(w, "i.pt", lambda c: c.update(cat_ids=[1]))),
        2,
        "cat_ids is not one integer per class",
    ),
    (
        "weights without names",
        lambda w: _predict(w, weights=_checkpoint(w, "n.pt", lambda c: c.update(class_names=None))),
        2,
        "class_names is not a list",
    ),
    ("onnx garbage", lambda w: _predict(w, weights=_file(w, "g.onnx", "garbage")), 2, "not a loadable ONNX model"),
    ("tflite garbage", lambda w: _predict(w, weights=_file(w, "m.tflite", "x")), 2, "m.tflite: not a loadable TFLite"),
    (
        "format unknown",
        lambda w: _predict(w, weights=_file(w, "m.pb", "x")),
        2,
        "m.pb: not a readable tinyseg checkpoint",
    ),
    ("onnx meta missing", lambda w: _predict(w, weights=_onnx_meta(w, "a.onnx", None)), 2, "no tinyseg metadata"),
    ("onnx meta not json", lambda w: _predict(w, weights=_onnx_meta(w, "b.onnx", "{x")), 2, "not valid JSON"),
    (
        "onnx meta imgsz lies",
        lambda w: _predict(
            w, weights=_onnx_meta(w, "c.onnx", json.dumps({"class_names": ["a"] * 6, "imgsz": 320, "max_det": 5}))
        ),
        2,
        "is not images uint8 [B, 3, 320, 320]",
    ),
    (
        "onnx meta names",
        lambda w: _predict(
            w, weights=_onnx_meta(w, "d.onnx", json.dumps({"class_names": 3, "imgsz": 128, "max_det": 5}))
        ),
        2,
        "class_names is not a list",
    ),
    ("onnx with torch", lambda w: _predict(w, "--backend", "torch", weights=str(w.onnx)), 2, "not torch"),
    # -- predict
    ("source missing", lambda w: _predict(w, source=str(w.root / "nope.png")), 2, "nope.png: no such file"),
    ("source no images", lambda w: _predict(w, source=_folder(w, "txt", {"a.txt": b"x"})), 2, "no images"),
    (
        "source unreadable",
        lambda w: _predict(w, "--out", str(w.out), source=_folder(w, "bad", {"a.png": b"x"})),
        2,
        "none of the 1 images",
    ),
    ("source bomb", lambda w: _predict(w, "--out", str(w.out), source=_bomb(w)), 2, "big.png: image too large"),
    ("source fifo", lambda w: _predict(w, "--out", str(w.out), source=_fifo(w)), 2, "no images"),
    (
        "out equals source",
        lambda w: _predict(w, "--out", str(w.root), source=str(w.root / "a.png")),
        2,
        "would overwrite",
    ),
    ("conf 2", lambda w: _predict(w, "--conf", "2"), 2, "--conf: invalid number in [0, 1]"),
    ("threads 0", lambda w: _predict(w, "--threads", "0"), 2, "--threads: invalid"),
    (
        "predict json folder",
        lambda w: _predict(w, "--out", str(w.out), "--json", str(w.root)),
        2,
        "exists and is a folder",
    ),
    ("show for images", lambda w: _predict(w, "--out", str(w.out), "--show"), 2, "are for a video file"),
    ("video missing", lambda w: _predict(w, source=str(w.root / "v.mp4"), weights=str(w.onnx)), 2, "v.mp4: video file"),
    (
        "video garbage",
        lambda w: _predict(w, source=_file(w, "g.mp4", "xx"), weights=str(w.onnx)),
        2,
        "not a readable video",
    ),
    ("camera 99", lambda w: _predict(w, "--max-frames", "1", source="99", weights=str(w.onnx)), 2, "camera 99"),
    # -- eval / export / synth
    ("eval no objects", lambda w: _eval(w, val=w.coco(annotations=[])), 0, "no ground-truth objects in the 2 images"),
    ("eval max-det 0", lambda w: _eval(w, "--max-det", "0"), 2, "--max-det: invalid"),
    ("eval json folder", lambda w: _eval(w, "--json", str(w.root)), 2, "exists and is a folder"),
    ("eval imgsz onnx", lambda w: _eval(w, "--imgsz", "320", weights=str(w.onnx)), 2, "needs a new export"),
    (
        "export int8 no calib",
        lambda w: ["export", "--weights", str(w.ckpt), "--format", "onnx", "--int8"],
        2,
        "needs calibration",
    ),
    (
        "export half onnx",
        lambda w: ["export", "--weights", str(w.ckpt), "--format", "onnx", "--half"],
        2,
        "--half is for",
    ),
    ("export format", lambda w: ["export", "--weights", str(w.ckpt), "--format", "tf"], 2, "invalid choice"),
    (
        "export out folder",
        lambda w: ["export", "--weights", str(w.ckpt), "--format", "onnx", "--out", str(w.root)],
        2,
        "exists and is a folder",
    ),
    ("synth size 10", lambda w: ["synth", str(w.out), "--size", "10"], 2, "--size: invalid integer in 32..4096"),
    ("synth into a file", lambda w: ["synth", str(w.root / "a.png"), "--train", "1"], 2, "exists and is not a folder"),
    ("unknown command", lambda w: ["fly"], 2, "invalid choice"),
]


def _file(w: World, name: str, text: str) -> str:
    (w.root / name).write_text(text)
    return str(w.root / name)


def _trunc(w: World) -> bool:
    data = (w.root / "a.png").read_bytes()
    (w.root / "t.png").write_bytes(data[: len(data) // 2])
    return True


def _text(w: World) -> bool:
    (w.root / "x.png").write_text("hello")
    return True


def _snapshot(root: Path) -> dict[str, str]:
    """Every file outside out/ with a digest of its content."""
    out = {}
    for p in sorted(root.rglob("*")):
        if "out" in p.relative_to(root).parts[:1] or not p.is_file():
            continue
        out[str(p)] = hashlib.sha1(p.read_bytes()).hexdigest()
    return out


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input(case, world, capsys):
    name, make_argv, status, said = case
    argv = make_argv(world)
    before = _snapshot(world.root)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rc = main(argv)
    captured = capsys.readouterr()
    text = captured.err + captured.out + " ".join(str(w.message) for w in caught)
    assert rc == status, f"{name}: status {rc}\n{text[-2000:]}"
    assert "Traceback" not in text
    assert said in text, f"{name}: {said!r} not in\n{text[-2000:]}"
    if status:
        assert "weights_only" not in text  # never advise loading untrusted pickles
    after = _snapshot(world.root)
    changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
    assert not changed, f"{name} changed files outside out/: {changed}"


def test_cases_cover_the_families():
    assert len(CASES) >= 50 and len({c[0] for c in CASES}) == len(CASES)
    assert np.mean([c[2] == 2 for c in CASES]) > 0.6


def test_outputs_never_follow_a_planted_symlink(world, tmp_path):
    """A symlink planted where an output goes is replaced, not written through: the file it points to is
    untouched (the write goes to a fresh temp file in the folder, then os.replace)."""
    from tinyseg.io import write_json

    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    link = tmp_path / "out" / "metrics.json"
    link.parent.mkdir()
    link.symlink_to(victim)
    write_json({"mask_ap": 1.0}, link)
    assert victim.read_text() == "keep me"
    assert not link.is_symlink() and json.loads(link.read_text()) == {"mask_ap": 1.0}
    assert main(_predict(world, "--out", str(tmp_path / "out"), "--json", str(link))) == 0
    assert victim.read_text() == "keep me" and not link.is_symlink()
