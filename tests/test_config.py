import pytest

from tinyseg.config import Config, ConfigError, apply_overrides, preset


def test_yaml_round_trip(tmp_path):
    cfg = Config()
    cfg.model = preset("small")
    cfg.train.lr = 0.123
    (tmp_path / "c.yaml").write_text(cfg.to_yaml())
    back = Config.load(tmp_path / "c.yaml")
    assert back == cfg
    assert back.model.depths == preset("small").depths


def test_overrides_typed():
    cfg = apply_overrides(
        Config(), ["train.lr=0.002", "train.epochs=3", "model.depths=[1, 1, 1, 1, 1]", "data.train_images=imgs"]
    )
    assert cfg.train.lr == 0.002 and cfg.train.epochs == 3
    assert cfg.model.depths == (1, 1, 1, 1, 1)
    assert cfg.data.train_images == "imgs"
    # int is accepted where a float is expected
    assert apply_overrides(Config(), ["train.lr=1"]).train.lr == 1.0


@pytest.mark.parametrize(
    "override,match",
    [
        ("train.lrr=0.1", "unknown key"),
        ("nope.lr=0.1", "unknown key"),
        ("train.epochs=abc", "expected int"),
        ("train.epochs=1.5", "expected int"),
        ("model.depths=3", "expected a list"),
        ("train.lr", "key=value"),
    ],
)
def test_bad_overrides_rejected(override, match):
    with pytest.raises(ConfigError, match=match):
        apply_overrides(Config(), [override])


def test_bad_yaml_names_file(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("train: {lr: [}")
    with pytest.raises(ConfigError, match="bad.yaml"):
        Config.load(p)
    p.write_text("train:\n  epoch: 3\n")
    with pytest.raises(ConfigError, match="bad.yaml: train.epoch: unknown key"):
        Config.load(p)
    with pytest.raises(ConfigError, match="not found"):
        Config.load(tmp_path / "missing.yaml")


def test_unknown_preset():
    with pytest.raises(ConfigError, match="nano"):
        preset("huge")
