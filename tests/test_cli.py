"""The commands a new user runs first: synth and show, and their error messages."""

import json

from tinyseg.tools.cli import main


def test_synth_and_show(tmp_path, capsys):
    assert main(["synth", str(tmp_path / "d"), "--train", "4", "--val", "2", "--size", "96", "--seed", "1"]) == 0
    d = json.loads((tmp_path / "d/train.json").read_text())
    assert len(d["images"]) == 4 and (tmp_path / "d/images/val/000001.png").is_file()
    assert main(["show", "--data", str(tmp_path / "d/train.json"), "--out", str(tmp_path / "o"), "--num", "3"]) == 0
    assert len(list((tmp_path / "o").glob("*.png"))) == 3
    assert (
        main(
            [
                "show",
                "--data",
                str(tmp_path / "d/train.json"),
                "--out",
                str(tmp_path / "a"),
                "--augment",
                "--imgsz",
                "96",
            ]
        )
        == 0
    )
    assert len(list((tmp_path / "a").glob("*.png"))) == 4


def test_show_bad_json_is_one_clear_line(tmp_path, capsys):
    (tmp_path / "x.json").write_text("{")
    assert main(["show", "--data", str(tmp_path / "x.json"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "x.json: not valid JSON" in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()  # nothing half-written


def test_train_bad_override(tmp_path, capsys):
    assert main(["train", "--train", "a.json", "--set", "train.lr=fast"]) == 2
    assert "train.lr: expected float" in capsys.readouterr().err
