"""The training run end to end on tiny data: checkpoints, metrics, resume, eval/predict commands."""

import csv

import numpy as np
import pytest
import torch

from tinyseg.checkpoint import load_checkpoint, save_checkpoint
from tinyseg.config import Config, preset
from tinyseg.errors import CheckpointError
from tinyseg.predict import Segmenter
from tinyseg.tools.cli import main


def _cfg(synth, out, epochs=2, deterministic=False) -> Config:
    cfg = Config()
    cfg.train.deterministic = deterministic
    cfg.model = preset("nano")
    cfg.data.train, cfg.data.val, cfg.data.imgsz = str(synth / "train.json"), str(synth / "val.json"), 128
    cfg.train.epochs, cfg.train.batch, cfg.train.workers, cfg.train.out = epochs, 8, 0, str(out)
    cfg.train.val_interval = 1
    return cfg


@pytest.fixture(scope="module")
def run(tiny_run):
    state = torch.load(tiny_run / "last.pt", weights_only=True)["train_state"]
    return tiny_run, {"steps": state["step"]}


def test_run_writes_everything(run):
    out, summary = run
    for f in ("best.pt", "last.pt", "metrics.csv", "curves.png", "config.yaml"):
        assert (out / f).is_file(), f
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert all(r["mask_ap"] != "" for r in rows)
    assert summary["steps"] == 6  # 24 images / batch 8 * 2 epochs
    assert not list(out.glob("*.tmp"))


def test_checkpoint_alone_predicts_same_outputs(run, synth, tmp_path):
    out, _ = run
    ckpt = load_checkpoint(out / "best.pt")
    assert ckpt["class_names"] == ["circle", "square", "triangle", "star", "ring", "cross"]
    assert ckpt["imgsz"] == 128 and "train_state" not in ckpt
    seg = Segmenter.load(out / "best.pt")
    img = np.asarray(__import__("PIL.Image", fromlist=["Image"]).open(synth / "images/val/000000.png").convert("RGB"))
    seg.model.score_thresh = 0.0  # all 10 detections of a 6-step model (its scores are below the default 0.05)
    a = seg.predict(img, conf=0.0, max_det=10)
    save_checkpoint(ckpt, tmp_path / "copy.pt")
    copy = Segmenter.load(tmp_path / "copy.pt")
    copy.model.score_thresh = 0.0
    b = copy.predict(img, conf=0.0, max_det=10)
    assert np.array_equal(a.boxes, b.boxes) and np.array_equal(a.masks, b.masks) and len(a) == 10
    assert a.masks.shape == (10, 128, 128)


def test_resume_continues_from_same_step(synth, tmp_path, monkeypatch):
    """A 3-epoch run that crashes after epoch 2 and is resumed ends with the same weights as one that never
    stopped (exact resume: optimiser, EMA, schedule, sampler and augmentation all continue). Deterministic
    kernels: on a busy CPU oneDNN's fastest ones add up in a varying order, and Adam's first steps magnify that."""
    import tinyseg.training.trainer as tr

    a = tmp_path / "a"
    tr.train(_cfg(synth, a, epochs=3, deterministic=True), show_progress=False)

    saves = {"n": 0}
    real_save = tr.save_checkpoint

    def crash_after_second_epoch(obj, path):
        real_save(obj, path)
        if path.name == "last.pt":
            saves["n"] += 1
            if saves["n"] == 2:
                raise KeyboardInterrupt

    b = tmp_path / "b"
    monkeypatch.setattr(tr, "save_checkpoint", crash_after_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        tr.train(_cfg(synth, b, epochs=3, deterministic=True), show_progress=False)
    monkeypatch.setattr(tr, "save_checkpoint", real_save)
    assert torch.load(b / "last.pt", weights_only=True)["train_state"]["step"] == 6
    summary = tr.train(Config(), resume=str(b), show_progress=False)
    assert summary["steps"] == 9 and summary["epochs"] == 3
    wa = torch.load(a / "last.pt", weights_only=True)
    wb = torch.load(b / "last.pt", weights_only=True)
    for k in wa["model"]:
        assert torch.allclose(wa["model"][k].float(), wb["model"][k].float(), atol=1e-6), k
    assert wa["train_state"]["history"][-1]["loss"] == pytest.approx(wb["train_state"]["history"][-1]["loss"])


def test_eval_and_predict_commands(run, synth, tmp_path, capsys):
    import json

    out, _ = run
    assert (
        main(
            [
                "eval",
                "--weights",
                str(out / "best.pt"),
                "--val",
                str(synth / "val.json"),
                "--json",
                str(tmp_path / "m.json"),
                "--max-det",
                "50",
            ]
        )
        == 0
    )
    m = json.loads((tmp_path / "m.json").read_text())
    for k in (
        "mask_ap",
        "mask_ap50",
        "mask_ap75",
        "box_ap",
        "box_ap50",
        "box_ap75",
        "mask_ap_small",
        "mask_ap_medium",
        "mask_ap_large",
        "num_images",
    ):
        assert k in m
    assert m["num_images"] == 8
    assert (
        main(
            [
                "predict",
                "--weights",
                str(out / "best.pt"),
                "--source",
                str(synth / "images/val"),
                "--out",
                str(tmp_path / "pred"),
                "--conf",
                "0.0",
                "--json",
                str(tmp_path / "r.json"),
            ]
        )
        == 0
    )
    assert len(list((tmp_path / "pred").glob("*.png"))) == 8
    assert json.loads((tmp_path / "r.json").read_text())


def test_bad_checkpoints(tmp_path, capsys):
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.pt: not a readable tinyseg checkpoint"):
        load_checkpoint(tmp_path / "junk.pt")
    torch.save({"format": "other/9"}, tmp_path / "old.pt")
    with pytest.raises(CheckpointError, match="another tinyseg version"):
        load_checkpoint(tmp_path / "old.pt")
    assert main(["eval", "--weights", str(tmp_path / "missing.pt"), "--val", "x.json"]) == 2
    assert "missing.pt: checkpoint not found" in capsys.readouterr().err


def test_non_finite_loss_stops_cleanly(synth, tmp_path):
    from tinyseg.errors import TrainingError
    from tinyseg.training.trainer import train

    cfg = _cfg(synth, tmp_path / "nan", epochs=2)
    cfg.train.lr = 1e30  # finite, but the first step's weights are not
    with pytest.raises(TrainingError, match="non-finite loss"):
        train(cfg, show_progress=False)


def test_best_checkpoint_is_the_ema_model(synth, tmp_path, monkeypatch):
    """best.pt holds the EMA weights of the epoch that scored best, bit for bit; last.pt the raw ones too."""
    import tinyseg.training.trainer as tr

    kept = {}
    real_save_run = tr.save_run

    def remember(run, ap):
        real_save_run(run, ap)
        if (tmp_path / "e" / "best.pt").stat().st_mtime_ns != kept.get("mtime"):
            kept["mtime"] = (tmp_path / "e" / "best.pt").stat().st_mtime_ns
            kept["ema"] = {k: v.clone() for k, v in run.opt.ema.model.state_dict().items()}
            kept["raw"] = {k: v.clone() for k, v in run.model.state_dict().items()}

    monkeypatch.setattr(tr, "save_run", remember)
    tr.train(_cfg(synth, tmp_path / "e", epochs=2), show_progress=False)
    best = torch.load(tmp_path / "e" / "best.pt", weights_only=True)
    assert best["model"].keys() == kept["ema"].keys()
    for k, v in kept["ema"].items():
        assert torch.equal(best["model"][k], v), k
    assert any(not torch.equal(kept["raw"][k], v) for k, v in kept["ema"].items() if v.is_floating_point())
