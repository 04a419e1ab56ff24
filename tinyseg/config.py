"""Typed configuration: dataclasses, YAML load/dump, `--set key=value` overrides and model presets.

The resolved `Config` is what a checkpoint carries, so a checkpoint alone is enough to rebuild the model.
Only the `build_*` functions read it; every class takes explicit arguments.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from tinyseg.errors import ConfigError

# Masks are trained and kept inside their box grown by this many input pixels (graph and host alike), so a box
# regressed a little too small does not clip its mask. Part of the graph's contract: the host cuts there.
MASK_MARGIN = 2.0
# The mask designs models/masks.py builds.
MASK_HEADS = ("prototypes", "condinst", "centermask")
COLOR_JITTER_MODES = ("image", "mid_grey")


@dataclass
class ModelConfig:
    """The defaults are the `nano` preset."""

    # Width multiplier of the MobileNetV2-style backbone: the main speed/accuracy knob.
    width: float = 0.5
    # Inverted-residual blocks per stage (strides 2, 4, 8, 16, 32). Few blocks: from-scratch training on a CPU
    # budget favours a shallow, wide-enough net over a deep thin one.
    depths: tuple[int, ...] = (1, 2, 2, 3, 2)
    # Expansion ratio of the inverted residuals (MobileNetV2 uses 6; 4 trains faster on a CPU at equal accuracy here).
    expand: int = 4
    # Stages 1..fused start with a Fused-MBConv block (one strided full 3x3 conv instead of 1x1 expand at the
    # higher resolution + strided depthwise): 1 spares the stride-4 stage its expansion at 160x160, the most
    # expensive map of a CPU training step.
    fused: int = 1
    # Channels of the fused stride-4 map that feeds every head.
    neck_channels: int = 48
    # Channels inside each head tower.
    head_channels: int = 32
    # Number of prototype masks K (YOLACT uses 32; 16 is plenty for simple shapes and keeps decode cheap).
    num_prototypes: int = 16
    # Which mask design sits on the detector: "prototypes" (YOLACT / YOLACT-Edge), "condinst" (CondInst's
    # dynamic convolutions) or "centermask" (CenterMask's local shape x global saliency).
    mask_head: str = "prototypes"
    # Number of classes; filled from the training data.
    num_classes: int = 1
    # Detections kept per image after the peak finder (top-K). Dense data (DSB2018) needs 500+.
    max_det: int = 100
    # Detections scoring below it are dropped before masks are assembled (K = the most above it in any image of
    # the batch; 0 keeps max_det). Also what the exported graph does.
    score_thresh: float = 0.05


@dataclass
class DataConfig:
    # COCO instances JSONs.
    train: str = ""
    val: str = ""
    # Or a YOLO-seg data.yaml (Ultralytics layout): its `train` and `val` splits replace train / val.
    data: str = ""
    # Image folders; empty means "the JSON's own folder".
    train_images: str = ""
    val_images: str = ""
    # Square letterbox size the network sees.
    imgsz: int = 320
    # Random scale range of the training augmentation (relative to the letterboxed size).
    scale_min: float = 0.75
    scale_max: float = 1.33
    flip_prob: float = 0.5
    # Class-name pairs a horizontal flip swaps, e.g. [[front_left_door, front_right_door]]; empty: found from the
    # names (left/right, l/r as words). See data/flips.py.
    flip_pairs: tuple[tuple[str, ...], ...] = ()
    # Find the pairs from the names when flip_pairs is empty; false: a flip keeps every label.
    auto_flip_pairs: bool = True
    # Strength of the brightness/contrast/colour jitter (0 disables).
    color_jitter: float = 0.3
    # "mid_grey": contrast about grey 128 and an additive brightness; "image": contrast about the image's own
    # mean, brightness as a gain, which keeps dim objects on dark images. mid_grey stays the default: image
    # trained no better on DSB2018 and worse on the demo set (issue 17, benchmarks/results/convergence.md).
    color_jitter_mode: str = "mid_grey"
    # true: a grey image (microscopy, X-ray, thermal) keeps its three channels equal under the jitter instead of
    # being tinted; colour images are jittered exactly as without it. Off: it trained no better on DSB2018.
    jitter_keeps_grey: bool = False
    # Photo-grade augmentation, off until a measurement says it pays (issue 17): the probability of pasting
    # objects from another training image (copy-paste), of a Gaussian blur, and the strength of pixel noise.
    copy_paste: float = 0.0
    blur_prob: float = 0.0
    noise: float = 0.0
    # Instances whose visible part after augmentation is smaller than this many pixels are dropped.
    min_instance_pixels: int = 6
    # Instances that the random crop cuts (or pasted objects cover) to less than this fraction of their area
    # become ignore regions, neither object nor background: a sliver of a door is no door to learn, yet it is
    # not background either. 0 keeps every cut object.
    min_visible: float = 0.0
    # At most this many instances per image get a mask loss (sampled): dense images would otherwise dominate.
    max_mask_instances: int = 64
    # Keep decoded training images in RAM (when they fit in 4 GB): decoding PNGs every epoch costs as much as
    # the forward pass on a 2-core laptop.
    cache_images: bool = True
    # A COCO file_name that leads outside the image folder (`../x.png`, an absolute path) is an error unless this
    # is true: a dataset from elsewhere must not read arbitrary files.
    allow_outside_images: bool = False


@dataclass
class TrainConfig:
    epochs: int = 30
    # Wall-clock budget in minutes; when > 0 it replaces `epochs` and the LR schedule is fitted to it.
    time: float = 0.0
    batch: int = 8
    lr: float = 0.02
    weight_decay: float = 0.05
    # Warm-up as a fraction of the whole run (linear from 0.1 x lr).
    warmup: float = 0.03
    # Final LR of the cosine decay, as a fraction of `lr`.
    final_lr: float = 0.02
    ema_decay: float = 0.998
    # The EMA decay ramps up as decay * (1 - exp(-updates / ema_ramp)), so the random init fades out quickly.
    ema_ramp: float = 200.0
    # AdamW's betas: beta2 0.99 (not 0.999) adapts faster to the quickly changing gradients of a short run.
    betas: tuple[float, ...] = (0.9, 0.99)
    grad_clip: float = 10.0
    workers: int = 1
    # Micro-batches per optimiser step: `batch` is the global batch, split over processes x accumulate.
    accumulate: int = 1
    # SyncBatchNorm across processes (CUDA only): BN statistics over the global batch, not each replica's part.
    sync_bn: bool = False
    # torch.compile the model (opt-in: compiling takes minutes and pays on long GPU runs).
    compile: bool = False
    # A collective that waits longer than this (minutes) ends a distributed run instead of hanging it.
    dist_timeout: float = 10.0
    seed: int = 0
    # Bit-identical runs: the same weights from the same seed, and a resumed run the very weights of one never
    # stopped. Off by default: some of oneDNN's and cuDNN's fastest kernels add up in whatever order their
    # threads finish (on a busy CPU too), and the deterministic ones are slower.
    deterministic: bool = False
    device: str = "cpu"
    # fp16 mixed precision on CUDA.
    amp: bool = True
    # bf16 autocast on CPUs with native bf16 (AVX512-BF16 / AMX; elsewhere training stays fp32): more steps in
    # the same minutes at no loss of accuracy (benchmarks/README.md).
    cpu_bf16: bool = True
    # Validate every N epochs (and always at the end).
    val_interval: int = 5
    out: str = "runs/train"
    # Width of each object's centre Gaussian: sigma = alpha * box size / 6 (TTFNet's 0.54). Larger spreads the
    # heatmap and box samples over more cells.
    gaussian_alpha: float = 0.54
    # Loss weights.
    heatmap_weight: float = 1.0
    class_weight: float = 1.0
    box_weight: float = 2.0
    mask_weight: float = 2.0


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["model"]["depths"] = list(d["model"]["depths"])
        d["train"]["betas"] = list(d["train"]["betas"])
        d["data"]["flip_pairs"] = [list(p) for p in d["data"]["flip_pairs"]]
        return d

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "config") -> Config:
        """A config from a mapping (YAML, a checkpoint): unknown keys, wrong types and values out of range are
        ConfigErrors naming `source` and the key."""
        if not isinstance(d, dict):
            raise ConfigError(f"{source}: expected a mapping with sections model/data/train")
        cfg = cls()
        _merge(cfg, d, source)
        return check_ranges(cfg, source)

    @classmethod
    def load(cls, path: str | Path) -> Config:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"{p}: config file not found")
        try:
            d = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{p}: not valid YAML ({e})") from None
        if not isinstance(d, dict):
            raise ConfigError(f"{p}: expected a mapping with sections model/data/train")
        return cls.from_dict(d, str(p))


# Presets: what differs from ModelConfig's defaults (= nano); the data and train sections keep theirs.
PRESETS: dict[str, dict[str, Any]] = {
    "nano": {},
    "small": dict(width=0.75, depths=(1, 2, 3, 4, 3), expand=6, neck_channels=64, head_channels=64, num_prototypes=24),
    # For a GPU, at 640 (--imgsz 640): full width, deeper stages, 32 prototypes as YOLACT.
    "medium": dict(width=1.0, depths=(1, 2, 3, 4, 3), expand=6, neck_channels=96, head_channels=64, num_prototypes=32),
}


def preset(name: str) -> ModelConfig:
    if name not in PRESETS:
        raise ConfigError(f"unknown model preset {name!r}; choose one of {', '.join(PRESETS)}")
    return ModelConfig(**PRESETS[name])


def _check_type(value: Any, tp: Any, where: str) -> Any:
    """Return `value` converted to `tp` where that is lossless (int -> float, list -> tuple), else raise."""
    origin = typing.get_origin(tp)
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        (item,) = typing.get_args(tp)[:1]
        return tuple(_check_type(v, item, where) for v in value)
    if origin in (typing.Union, types.UnionType):
        raise ConfigError(f"{where}: unsupported type {tp}")
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float, str, bool) and (type(value) is not tp):
        raise ConfigError(f"{where}: expected {tp.__name__}, got {type(value).__name__} {value!r}")
    return value


def _merge(obj: Any, d: dict[str, Any], source: str, prefix: str = "") -> None:
    hints = typing.get_type_hints(type(obj))
    names = {f.name for f in fields(obj)}
    for key, value in d.items():
        where = f"{source}: {prefix}{key}"
        if key not in names:
            raise ConfigError(f"{where}: unknown key (valid: {', '.join(sorted(names))})")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"{where}: expected a mapping")
            _merge(current, value, source, f"{prefix}{key}.")
        else:
            setattr(obj, key, _check_type(value, hints[key], where))


def _within(lo: float, hi: float, lo_open: bool = False, hi_open: bool = False) -> Callable[[Any], bool]:
    def ok(v: Any) -> bool:
        return (lo < v if lo_open else lo <= v) and (v < hi if hi_open else v <= hi)

    return ok


INF = float("inf")
DEVICE = re.compile(r"cpu|cuda(:\d+)?")
# (key, check, what it must be): checked whenever a config is built, before anything is read or written.
# NaN fails every check; limits keep a typo (imgsz 32000, batch 1e6) from running out of memory.
RANGE_CHECKS: list[tuple[str, Callable[[Any], bool], str]] = [
    ("model.width", _within(0, 4, lo_open=True), "in (0, 4]"),
    ("model.mask_head", lambda v: v in MASK_HEADS, f"one of {', '.join(MASK_HEADS)}"),
    ("model.depths", lambda v: len(v) == 5 and all(1 <= d <= 32 for d in v), "5 block counts in 1..32"),
    ("model.expand", _within(1, 16), "in 1..16"),
    ("model.fused", _within(0, 4), "in 0..4"),
    ("model.neck_channels", _within(1, 1024), "in 1..1024"),
    ("model.head_channels", _within(1, 1024), "in 1..1024"),
    ("model.num_prototypes", _within(1, 256), "in 1..256"),
    ("model.num_classes", _within(1, 10000), "in 1..10000"),
    ("model.max_det", _within(1, 10000), "in 1..10000"),
    ("model.score_thresh", _within(0, 1, hi_open=True), "in [0, 1)"),
    ("data.imgsz", lambda v: 32 <= v <= 4096 and v % 32 == 0, "a multiple of 32 in 32..4096"),
    ("data.scale_min", _within(0.05, 20), "in 0.05..20"),
    ("data.scale_max", _within(0.05, 20), "in 0.05..20 and >= data.scale_min"),
    ("data.flip_prob", _within(0, 1), "in [0, 1]"),
    ("data.color_jitter", _within(0, 1), "in [0, 1]"),
    ("data.color_jitter_mode", lambda v: v in COLOR_JITTER_MODES, f"one of {', '.join(COLOR_JITTER_MODES)}"),
    ("data.copy_paste", _within(0, 1), "in [0, 1]"),
    ("data.blur_prob", _within(0, 1), "in [0, 1]"),
    ("data.noise", _within(0, 64), "in 0..64 grey levels"),
    ("data.min_instance_pixels", _within(0, 10**6), "in 0..1000000"),
    ("data.max_mask_instances", _within(1, 10**5), "in 1..100000"),
    ("train.epochs", _within(1, 10**6), "in 1..1000000"),
    ("train.time", _within(0, INF, hi_open=True), ">= 0 minutes (0: train for train.epochs)"),
    ("train.batch", _within(1, 4096), "in 1..4096"),
    ("train.lr", _within(0, INF, lo_open=True, hi_open=True), "> 0 and finite"),
    ("train.weight_decay", _within(0, INF, hi_open=True), ">= 0 and finite"),
    ("train.warmup", _within(0, 1, hi_open=True), "in [0, 1)"),
    ("train.final_lr", _within(0, 1), "in [0, 1]"),
    ("train.ema_decay", _within(0, 1, hi_open=True), "in [0, 1)"),
    ("train.ema_ramp", _within(0, INF, lo_open=True, hi_open=True), "> 0 and finite"),
    ("train.gaussian_alpha", _within(0, 4, lo_open=True), "in (0, 4]"),
    ("train.betas", lambda v: len(v) == 2 and all(0 <= b < 1 for b in v), "two numbers in [0, 1)"),
    ("train.grad_clip", _within(0, INF, lo_open=True, hi_open=True), "> 0 and finite"),
    ("train.workers", _within(0, 64), "in 0..64"),
    ("train.accumulate", _within(1, 1024), "in 1..1024"),
    ("train.dist_timeout", _within(0.1, 1440), "in 0.1..1440 minutes"),
    ("train.device", lambda v: DEVICE.fullmatch(v) is not None, "cpu, cuda or cuda:N"),
    ("train.val_interval", _within(1, 10**6), "in 1..1000000"),
    ("train.heatmap_weight", _within(0, INF, hi_open=True), ">= 0 and finite"),
    ("train.class_weight", _within(0, INF, hi_open=True), ">= 0 and finite"),
    ("train.box_weight", _within(0, INF, hi_open=True), ">= 0 and finite"),
    ("train.mask_weight", _within(0, INF, hi_open=True), ">= 0 and finite"),
]


def check_ranges(cfg: Config, source: str = "config") -> Config:
    """Raise ConfigError naming the first key whose value is out of range (see RANGE_CHECKS)."""
    for key, ok, want in RANGE_CHECKS:
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if not ok(value):
            raise ConfigError(f"{source}: {key} = {value!r} is out of range: must be {want}")
    if cfg.data.scale_min > cfg.data.scale_max:
        raise ConfigError(f"{source}: data.scale_min {cfg.data.scale_min} > data.scale_max {cfg.data.scale_max}")
    return cfg


def apply_overrides(cfg: Config, overrides: list[str]) -> Config:
    """Apply `section.key=value` strings; values are parsed as YAML (`0.002`, `true`, `[1, 2, 3]`)."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key=value, e.g. train.lr=0.002")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            value = raw
        if value is None:
            value = raw
        nested: dict[str, Any] = value
        for part in reversed(key.strip().split(".")):
            nested = {part: nested}
        _merge(cfg, nested, "--set")
    return cfg
