"""Robustness beyond listed cases: random COCO structures through the loader under a memory cap, and training
killed at arbitrary points (a checkpoint write included) always leaving a loadable, resumable last.pt."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from tinyseg.checkpoint import load_checkpoint

LOADER_FUZZ = textwrap.dedent(
    """
    import json, resource, sys, tempfile, warnings
    from pathlib import Path
    import numpy as np
    from hypothesis import given, settings, HealthCheck, strategies as st
    from PIL import Image

    resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))  # a runaway allocation fails instead of swapping
    from tinyseg.data.coco import load_coco
    from tinyseg.errors import DataError, DataWarning

    root = Path(tempfile.mkdtemp())
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(root / "a.png")
    weird = st.one_of(
        st.integers(-2**63, 2**63), st.floats(), st.booleans(), st.none(), st.text(max_size=4),
        st.just(1e9), st.just(-1e9), st.integers(0, 40),
    ).map(lambda v: v)  # one choice among the alternatives below, not flattened into eight of them
    numbers = st.lists(st.one_of(st.floats(-100, 100), st.integers(-50, 80), weird), max_size=14)
    polygon = st.lists(numbers, max_size=3)
    size = st.one_of(st.just([32, 32]), st.lists(weird, max_size=3))
    rle = st.fixed_dictionaries({"size": size, "counts": st.one_of(
        st.lists(st.one_of(st.integers(-5, 1100), weird), max_size=6), st.text(max_size=12), weird)})
    segmentation = st.one_of(polygon, rle, weird)
    annotation = st.one_of(weird, st.fixed_dictionaries(
        {"id": weird, "image_id": st.one_of(st.just(1), weird), "category_id": st.one_of(st.just(1), weird),
         "segmentation": segmentation, "iscrowd": st.one_of(st.just(0), weird), "bbox": st.one_of(numbers, weird)}))
    image = st.one_of(weird, st.fixed_dictionaries(
        {"id": st.one_of(st.just(1), weird), "file_name": st.one_of(st.just("a.png"), st.text(max_size=8), weird),
         "height": st.one_of(st.just(32), weird), "width": st.one_of(st.just(32), weird)}))
    category = st.one_of(st.just({"id": 1, "name": "x"}), weird, st.fixed_dictionaries({"id": weird}))
    good_image = {"id": 1, "file_name": "a.png", "height": 32, "width": 32}
    coco = st.fixed_dictionaries({"images": st.one_of(st.just([good_image]), st.lists(image, max_size=3), weird),
        "categories": st.one_of(st.just([{"id": 1}]), st.lists(category, max_size=3), weird),
        "annotations": st.one_of(st.lists(annotation, max_size=6), weird)})
    # The same annotations on a valid image and category: the loader must keep going past the broken ones.
    annotations_only = st.fixed_dictionaries({"images": st.just([good_image]), "categories": st.just([{"id": 1}]),
        "annotations": st.lists(annotation, max_size=6)})
    outcomes = {"ok": 0, "error": 0}

    @settings(max_examples=int(sys.argv[1]), deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.one_of(coco, annotations_only))
    def check(d):
        (root / "d.json").write_text(json.dumps(d))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DataWarning)
            try:
                data = load_coco(root / "d.json")
            except DataError:
                outcomes["error"] += 1
                return
        outcomes["ok"] += 1
        for rec in data.images:
            assert len(rec.labels) == len(rec.rles) and all(r["size"] == [rec.height, rec.width] for r in rec.rles)

    check()
    print(json.dumps(outcomes))
    """
)


def test_random_coco_structures_load_or_raise_data_error():
    """Random COCO-shaped JSON (weird numbers, NaN, 1e9, bools, strings, broken RLE) either loads into valid
    records or raises DataError; never another exception, a crash or a runaway allocation (3 GB cap)."""
    res = subprocess.run([sys.executable, "-c", LOADER_FUZZ, "300"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    outcomes = __import__("json").loads(res.stdout.strip().splitlines()[-1])
    assert outcomes["ok"] > 10 and outcomes["error"] > 10, outcomes  # both paths were exercised


def test_failed_checkpoint_write_keeps_the_last_one(synth, tmp_path, monkeypatch):
    """A write that dies half-way (disk full, a kill) leaves the previous last.pt, loadable, and no temp file;
    --resume then continues from it."""
    import tinyseg.checkpoint as checkpoint
    from tinyseg.config import Config, preset
    from tinyseg.training.trainer import train

    cfg = Config()
    cfg.model = preset("nano")
    cfg.data.train, cfg.data.imgsz = str(synth / "train.json"), 128
    cfg.train.epochs, cfg.train.batch, cfg.train.workers, cfg.train.out = 3, 8, 0, str(tmp_path / "r")
    real_save, calls = torch.save, {"n": 0}

    def dies_in_the_third_write(obj, f):
        calls["n"] += 1
        if calls["n"] == 3:  # epoch 2's best.pt... or last.pt: the third checkpoint file written
            with open(f, "wb") as out:
                out.write(b"PK\x03\x04 half a checkpoint")
            raise OSError(28, "No space left on device")
        real_save(obj, f)

    monkeypatch.setattr(checkpoint.torch, "save", dies_in_the_third_write)
    with pytest.raises(OSError):
        train(cfg, show_progress=False)
    monkeypatch.setattr(checkpoint.torch, "save", real_save)
    last = load_checkpoint(tmp_path / "r" / "last.pt")
    assert last["train_state"]["epoch"] == 1
    assert not [p.name for p in (tmp_path / "r").iterdir() if p.name.startswith(".")]  # no temp files left
    summary = train(Config(), resume=str(tmp_path / "r"), show_progress=False)
    assert summary["epochs"] == 3 and summary["steps"] == 9


def test_training_killed_anywhere_resumes(synth, tmp_path):
    """SIGKILL a real training process at several moments (start-up, mid-epoch, mid-save): whenever last.pt
    exists it loads, and --resume finishes the run."""
    out = tmp_path / "k"
    argv = [sys.executable, "-m", "tinyseg", "train", "--train", str(synth / "train.json"), "--imgsz", "128"]
    argv += ["--epochs", "8", "--batch", "8", "--workers", "0", "--out", str(out), "--set", "train.val_interval=100"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for delay in (2.0, 5.0, 6.5, 8.0):
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        if (out / "last.pt").exists():
            assert load_checkpoint(out / "last.pt")["train_state"]["epoch"] >= 1
            argv = [sys.executable, "-m", "tinyseg", "train", "--resume", str(out)]
    res = subprocess.run(argv, capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode == 0, res.stderr[-2000:]
    assert load_checkpoint(out / "last.pt")["train_state"]["epoch"] == 8
