"""The evaluation report: TIDE-style classification of detections by hand-made cases, and the HTML page a user
opens (written by eval --report and by training), looked at in a headless Chromium where one is installed."""

import shutil
import subprocess

import numpy as np
import pytest

from tinyseg.data.mask_formats import encode_rle
from tinyseg.report import match_image
from tinyseg.tools.cli import main


def _square(x, y, size=10, cat=1, score=None):
    m = np.zeros((64, 64), np.uint8)
    m[y : y + size, x : x + size] = 1
    out = {"segmentation": encode_rle(m), "category_id": cat}
    if score is not None:
        out["score"] = score
    return out


def test_errors_are_classified_as_tide_does():
    gts = [_square(0, 0), _square(30, 0), _square(0, 30, cat=2), _square(40, 40)]
    dets = [
        _square(0, 0, score=0.9),  # correct
        _square(1, 0, score=0.8),  # the same object again: duplicate
        _square(30, 0, cat=2, score=0.7),  # right place, wrong class: class
        _square(5, 35, cat=2, score=0.6),  # right class, IoU 25/175: location
        _square(36, 4, cat=2, score=0.5),  # IoU 24/176 with an object of class 1: both
        _square(20, 50, score=0.4),  # nothing there: background
    ]
    kinds, objects, found = match_image(dets, gts)
    assert kinds == ["correct", "duplicate", "class", "location", "both", "background"]
    assert objects[:4] == [0, 0, 1, 2] and found == {0}  # objects 1, 2 and 3 are missed


def test_eval_report_is_one_self_contained_page(tiny_run, synth, tmp_path):
    report = tmp_path / "rep"
    argv = ["eval", "--weights", str(tiny_run / "best.pt"), "--val", str(synth / "val.json"), "--conf", "0.0"]
    assert main(argv + ["--report", str(report)]) == 0
    page = (report / "index.html").read_text()
    for part in ("Metrics", "Precision-recall", "Confusion matrix", "Errors", "Worst images", "false positives"):
        assert part in page, part
    assert page.count("data:image/png;base64,") >= 4 and 'src="http' not in page  # pictures inline, nothing fetched
    assert list(report.iterdir()) == [report / "index.html"]


def test_training_writes_its_report(tiny_run):
    page = (tiny_run / "report" / "index.html").read_text()
    assert "Training" in page and "Metrics" in page


def _browser() -> str | None:
    return next((b for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)


@pytest.mark.skipif(_browser() is None, reason="no Chromium here (apt install chromium) to open the report in")
def test_report_opens_in_a_headless_browser(tiny_run, tmp_path):
    shot = tmp_path / "shot.png"
    cmd = [_browser(), "--headless", "--no-sandbox", "--disable-gpu", f"--screenshot={shot}", "--window-size=1280,2000"]
    subprocess.run(cmd + [(tiny_run / "report" / "index.html").as_uri()], capture_output=True, timeout=120)
    assert shot.is_file() and shot.stat().st_size > 10_000
