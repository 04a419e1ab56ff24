"""How fast the default training converges on real and photo-like data, and what each augmentation is worth: mask
AP after 5, 10, 20 and 40 CPU minutes (`nano` at 320) on DSB2018 and on the generated photo-like set (`tinyseg
synth --style photo`: textured scenes, distractors, a 10x size range, left/right classes), two seeds each; and at
the ablation budget, the same with each augmentation switched off or on.

    .venv/bin/python benchmarks/convergence.py [--minutes 5,10,20,40] [--seeds 0,1] [--stage all]

Budgets are in steps, not wall time: each configuration's training images/s is measured first (3 epochs over 96
images, the last one counts), and a budget of M minutes is the number of epochs a dataset's rate fills in M
minutes. A run's result then does not depend on what else the machine did meanwhile (only its wall time does).
A dataset's rate is the median over its configurations: measured one by one, configurations with the very same
per-step work differed by up to 30%, more than the augmentations' own cost, so per-configuration budgets would
have measured the noise. Each configuration's own rate is still listed; another network (`small`) or batch size
is budgeted by the median times its rate over the baseline's, measured one after the other. Each run is a
separate training with its schedule fitted to its budget (what a user who picks that budget gets), not a
snapshot of a longer run; a run cut off by a stopped session continues from its last epoch.

Stages (each skips what an earlier call finished): rates (needs the machine to itself: a rate measured beside
another job is too low, and so would be the budget), train, table. Results: benchmarks/results/
convergence.{json,md,png}. Runs go to runs/convergence; DSB2018 is read from ../shared/data/dsb2018.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path
from statistics import median

from common import read_json, tinyseg, train_or_resume

from tinyseg.config import Config, apply_overrides
from tinyseg.data.coco import load_coco, read_record_image
from tinyseg.data.flips import flip_pairs
from tinyseg.data.transforms import is_grey
from tinyseg.training.trainer import amp_supported

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "convergence"
PHOTO_TRAIN, PHOTO_VAL = 1000, 200
# The defaults before sided classes and photo-grade augmentation (a flip kept every label), frozen, so that
# "baseline" keeps meaning the same training when the defaults change.
BASELINE = ["data.flip_prob=0.5", "data.auto_flip_pairs=false", "data.color_jitter=0.3",
            "data.color_jitter_mode=mid_grey", "data.jitter_keeps_grey=false", "data.scale_min=0.75",
            "data.scale_max=1.33", "data.copy_paste=0.0", "data.blur_prob=0.0", "data.noise=0.0",
            "data.min_visible=0.0", "train.lr=0.02", "train.warmup=0.03", "train.ema_decay=0.998",
            "train.batch=8"]  # fmt: skip
# Ablations, each a change to the baseline, run at the ablation budget only.
ABLATIONS = {
    "no_flip": ["data.flip_prob=0"],
    "flip_swaps_sides": ["data.auto_flip_pairs=true"],
    "no_color_jitter": ["data.color_jitter=0"],
    "no_scale_jitter": ["data.scale_min=1", "data.scale_max=1"],
    "copy_paste": ["data.copy_paste=0.5"],
    "blur_noise": ["data.blur_prob=0.3", "data.noise=8"],
    "min_visible": ["data.min_visible=0.3"],
}
# Training settings that may converge faster, and combinations of ablations, each a change to the baseline, run at
# the ablation budget when named in --ablations (not in the rate median: adding one keeps the budgets).
TUNING = {
    "lr_0.01": ["train.lr=0.01"],
    "lr_0.04": ["train.lr=0.04"],
    "warmup_0.1": ["train.warmup=0.1"],
    "ema_0.995": ["train.ema_decay=0.995"],
    "ema_0.999": ["train.ema_decay=0.999"],
    "batch_4": ["train.batch=4"],
    "batch_16": ["train.batch=16"],
    "gaussian_1.0": ["train.gaussian_alpha=1.0"],
    "mask_weight_4": ["train.mask_weight=4"],
    "wd_0.01": ["train.weight_decay=0.01"],
    "mask_instances_128": ["data.max_mask_instances=128"],
    "sides_no_color_jitter": ["data.auto_flip_pairs=true", "data.color_jitter=0"],
    "jitter_about_mean": ["data.color_jitter_mode=image"],
    "sides_jitter_about_mean": ["data.auto_flip_pairs=true", "data.color_jitter_mode=image"],
    "jitter_keeps_grey": ["data.jitter_keeps_grey=true"],
    "color_jitter_0.1": ["data.color_jitter=0.1"],
}
# Other networks (config name -> preset) at the baseline's settings.
NETWORKS = {"small": "small"}
# Configurations whose work per image differs from the baseline's (another network; a batch size, which changes the
# per-step overhead on 2 cores): each is budgeted by its dataset's median times its rate relative to the baseline's,
# both measured one after the other (so on the same machine: rates differ 3x between CPUs with and without bf16).
OWN_RATE = {"batch_4", "batch_16", *NETWORKS}


def datasets(a, work: Path) -> dict[str, dict]:
    photo = work / "photo"
    if not (photo / "val.json").is_file():
        tinyseg("synth", str(photo), "--style", "photo", "--train", str(PHOTO_TRAIN), "--val", str(PHOTO_VAL))
    dsb = Path(a.data)
    return {
        "dsb2018": {"train": str(dsb / "train.json"), "val": str(dsb / "val.json"), "max_det": 500},
        "photo": {"train": str(photo / "train.json"), "val": str(photo / "val.json"), "max_det": 100},
    }


def default_changes() -> list[str]:
    """Today's defaults where they differ from the baseline, as overrides of it."""
    now, base = Config().to_dict(), apply_overrides(Config(), BASELINE).to_dict()
    keys = [item.split("=")[0].split(".") for item in BASELINE]
    return [f"{s}.{k}={json.dumps(now[s][k])}" for s, k in keys if now[s][k] != base[s][k]]


def configs(names: list[str]) -> dict[str, list[str]]:
    """Name -> --set overrides: "default" is whatever the defaults are now, "baseline" the frozen ones (an empty
    name, as in `--curves ''`, is skipped)."""
    changes = {**ABLATIONS, **TUNING, **{k: [] for k in NETWORKS}}
    table = {"default": [], "baseline": BASELINE, **{k: BASELINE + v for k, v in changes.items()}}
    return {n: table[n] for n in names if n}


def relative_rate(work: Path, data: dict, dataset: str, name: str, overrides: list[str], median_rate: float) -> float:
    """The images/s that a configuration of another per-image cost would reach on the machine that measured the
    median: the median times its rate over the baseline's, measured beside it."""
    own = measure_rate(work, data, dataset, name, overrides)
    beside = measure_rate(work, data, dataset, "baseline", BASELINE, key=f"{dataset}/{name}:baseline")
    return median_rate * own / beside


def measure_rate(work: Path, data: dict, dataset: str, name: str, overrides: list[str], key: str = "") -> float:
    """Training images/s of one configuration on one dataset (96 images, 3 epochs, the last one counts)."""
    path = work / "rates.json"
    rates = read_json(path) or {}
    key = key or f"{dataset}/{name}"
    if key not in rates:
        subset = work / f"rate_{dataset}.json"
        if not subset.is_file():
            coco = json.loads(Path(data["train"]).read_text())
            keep = {im["id"] for im in coco["images"][:96]}
            coco["images"] = [im for im in coco["images"] if im["id"] in keep]
            coco["annotations"] = [x for x in coco["annotations"] if x["image_id"] in keep]
            subset.write_text(json.dumps(coco))
        out = work / f"rate_{key.replace('/', '_').replace(':', '_')}"
        images = str(Path(data["train"]).parent)
        tinyseg("train", "--train", str(subset), "--images", images, "--epochs", "3", "--out", str(out),
                "--model", NETWORKS.get(name, "nano"), "--set", *overrides, "train.val_interval=1000")  # fmt: skip
        rates[key] = float(list(csv.DictReader(open(out / "metrics.csv")))[-1]["images_per_s"])
        path.write_text(json.dumps(rates, indent=1))
        print(f"rate {key}: {rates[key]:.1f} images/s", flush=True)
    return rates[key]


def has_grey_image(train_json: str) -> bool:
    """Whether any training image has three equal channels (elsewhere data.jitter_keeps_grey changes nothing)."""
    return any(is_grey(read_record_image(rec)) for rec in load_coco(train_json).images)


def training(class_names: list[str], grey: bool, name: str, overrides: list[str]) -> tuple:
    """What a configuration trains on a dataset: its network and settings, with auto_flip_pairs settled when the
    dataset has no left/right classes and jitter_keeps_grey when it has no grey image (there they change nothing)."""
    cfg = apply_overrides(Config(), overrides)
    if not flip_pairs(class_names, cfg.data.flip_pairs):
        cfg.data.auto_flip_pairs = False
    if not grey:
        cfg.data.jitter_keeps_grey = False
    return NETWORKS.get(name, "nano"), json.dumps(cfg.to_dict(), sort_keys=True)


def still_alike(run: dict, twins: list[str] | None) -> bool:
    """False for a run reused from a configuration that no longer trains as the run's own does (the defaults
    changed). twins: the configurations that train alike (None: not known here, the run is kept)."""
    return twins is None or run.get("trained_as", run["config"]) in (run["config"], *twins)


def twin_result(work: Path, dataset: str, name: str, twins: list[str], minutes: float, seed: int) -> dict | None:
    """The result of a configuration that trains exactly as `name` does (same budget and seed), from this work
    folder or the committed results, relabelled as `name`'s: one training, not two."""
    runs = {(r["dataset"], r["config"], r["minutes"], r["seed"]): r for r in merged_results(work)[0]}
    for twin in twins:
        found = runs.get((dataset, twin, minutes, seed))
        if found and still_alike(found, twins):  # not reused in turn from a stale twin
            return {**found, "config": name, "trained_as": found.get("trained_as", twin)}
    return None


def train_run(work: Path, data: dict, dataset: str, name: str, overrides: list[str], minutes: float, seed: int,
              rate: float, twins: list[str]) -> dict:  # fmt: skip
    out = work / f"{dataset}_{name}_{minutes:g}min_s{seed}"
    done = read_json(out / "result.json")
    if done and still_alike(done, twins):
        return done
    if not (out / "last.pt").is_file() and (twin := twin_result(work, dataset, name, twins, minutes, seed)):
        out.mkdir(parents=True, exist_ok=True)
        (out / "result.json").write_text(json.dumps(twin, indent=1))
        print(f"{dataset} {name} {minutes:g} min seed {seed}: trains as {twin['trained_as']}", flush=True)
        return twin
    n_train = len(json.loads(Path(data["train"]).read_text())["images"])
    epochs = max(1, round(minutes * 60 * rate / n_train))
    overrides = [*overrides, f"model.max_det={data['max_det']}", "train.val_interval=1000"]
    train_or_resume(out, "--train", data["train"], "--val", data["val"], "--epochs", str(epochs), "--seed", str(seed),
                    "--model", NETWORKS.get(name, "nano"), "--set", *overrides)  # fmt: skip
    tinyseg("eval", "--weights", str(out / "best.pt"), "--val", data["val"], "--max-det", str(data["max_det"]),
            "--json", str(out / "metrics.json"))  # fmt: skip
    m = read_json(out / "metrics.json")
    result = {"dataset": dataset, "config": name, "minutes": minutes, "seed": seed, "epochs": epochs,
              "mask_ap": m["mask_ap"], "mask_ap50": m.get("mask_ap50"), "box_ap": m["box_ap"],
              "precision": "bf16" if amp_supported("cpu", cpu_bf16=True) else "fp32"}  # fmt: skip
    (out / "result.json").write_text(json.dumps(result, indent=1))
    print(f"{dataset} {name} {minutes:g} min seed {seed}: mask AP {m['mask_ap']:.3f}", flush=True)
    return result


def merged_results(work: Path) -> tuple[list[dict], dict]:
    """This work folder's runs and rates over the committed ones (a session cannot hold all runs; a rerun of a
    dataset x config x budget x seed replaces its row)."""
    old = read_json(RESULTS.with_suffix(".json")) or {}
    key = lambda r: (r["dataset"], r["config"], r["minutes"], r["seed"])  # noqa: E731
    runs = {key(r): r for r in old.get("runs", [])}
    runs.update({key(r): r for r in (read_json(f) for f in sorted(work.glob("*/result.json")))})
    return sorted(runs.values(), key=key), {**old.get("rates", {}), **(read_json(work / "rates.json") or {})}


def write_results(runs: list[dict], rates: dict, out: Path, ablation_minutes: float) -> None:
    """convergence.json (every run), .md (mean, gain over the baseline at the same budget, each seed's AP, what
    each configuration changes) and .png (AP against minutes)."""
    out.with_suffix(".json").write_text(json.dumps({"runs": runs, "rates": rates}, indent=1))
    cells: dict[tuple, dict[int, float]] = {}
    fp32 = set()
    for r in runs:
        cells.setdefault((r["dataset"], r["config"], r["minutes"]), {})[r["seed"]] = r["mask_ap"]
        if r.get("precision", "bf16") == "fp32":
            fp32.add((r["dataset"], r["config"], r["minutes"], r["seed"]))
    mean = {k: sum(v.values()) / len(v) for k, v in cells.items()}
    lines = ["| dataset | config | CPU min | mask AP (mean) | vs baseline | each seed |", "|---|---|---|---|---|---|"]
    for (dataset, config, minutes), by_seed in sorted(cells.items()):
        ap, base = mean[(dataset, config, minutes)], mean.get((dataset, "baseline", minutes))
        gain = f"{ap - base:+.3f}" if base is not None and config != "baseline" else ""
        mark = {s: "†" if (dataset, config, minutes, s) in fp32 else "" for s in by_seed}
        each = " / ".join(f"s{s} {v:.3f}{mark[s]}" for s, v in sorted(by_seed.items()))
        lines.append(f"| {dataset} | {config} | {minutes:g} | {ap:.3f} | {gain} | {each} |")
    if fp32:
        lines += ["", "†: trained in fp32 (a CPU without native bf16), the others under bf16 autocast; same steps."]
    twins = sorted({(r["dataset"], r["config"], r["trained_as"]) for r in runs if "trained_as" in r})
    lines += [""] * bool(twins) + [f"- {d} `{n}`: the runs of `{t}`, which trains alike on it" for d, n, t in twins]
    lines += [
        "",
        "`baseline`: the defaults before sided classes and photo-grade augmentation; `default`: today's",
        f"defaults ({', '.join(default_changes())}); the others: the baseline with",
        "",
    ]
    changes = {**ABLATIONS, **TUNING, **{k: [f"--model {v}"] for k, v in NETWORKS.items()}}
    lines += [f"- `{name}`: {', '.join(overrides)}" for name, overrides in changes.items()]
    own = ", ".join(sorted(OWN_RATE))
    note = (f"Training images/s (3 epochs over 96 images, the last one). Budgets: the median; {own}: the median "
            "times their rate over the baseline's measured beside it (`NAME:baseline`).")  # fmt: skip
    lines += ["", f"Baseline: {', '.join(BASELINE)}.", "", note, "", "| dataset/config | images/s |", "|---|---|"]
    lines += [f"| {k} | {v:.1f} |" for k, v in sorted(rates.items())]
    out.with_suffix(".md").write_text("# Convergence: mask AP against CPU minutes\n\n" + "\n".join(lines) + "\n")
    plot({k: list(v.values()) for k, v in cells.items()}, out.with_suffix(".png"), ablation_minutes)


def plot(cells: dict[tuple, list[float]], path: Path, ablation_minutes: float) -> None:
    """Per dataset: AP against minutes for the configurations run at several budgets (top), and each
    configuration's AP at the ablation budget as a bar with its seeds' range, the baseline as a line (bottom)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sets = sorted({k[0] for k in cells})
    fig, axes = plt.subplots(2, len(sets), figsize=(5.5 * len(sets), 8), squeeze=False)
    for top, bottom, dataset in zip(axes[0], axes[1], sets):
        for config in sorted({k[1] for k in cells if k[0] == dataset}):
            pts = sorted((k[2], v) for k, v in cells.items() if k[:2] == (dataset, config))
            xs = [p[0] for p in pts]
            top.plot(xs, [sum(v) / len(v) for _, v in pts], "o-", label=config)
            top.fill_between(xs, [min(v) for _, v in pts], [max(v) for _, v in pts], alpha=0.2)
        top.set(title=dataset, xlabel="CPU minutes (2 cores)", ylabel="mask AP", xscale="log")
        top.legend(fontsize=8)
        bars = sorted((k[1], v) for k, v in cells.items() if k[0] == dataset and k[2] == ablation_minutes)
        if not bars:
            continue
        means = [sum(v) / len(v) for _, v in bars]
        spread = [[m - min(v) for m, (_, v) in zip(means, bars)], [max(v) - m for m, (_, v) in zip(means, bars)]]
        bottom.barh([b[0] for b in bars], means, xerr=spread, color="tab:blue", alpha=0.7)
        if base := dict(bars).get("baseline"):
            bottom.axvline(sum(base) / len(base), color="k", lw=1, ls="--")
        lo, hi = min(min(v) for _, v in bars), max(max(v) for _, v in bars)
        bottom.set(xlim=(lo - 0.1 * (hi - lo) - 0.01, hi + 0.1 * (hi - lo) + 0.01),
                   xlabel=f"mask AP at {ablation_minutes:g} CPU minutes (bar: mean, line: seed range)")  # fmt: skip
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def alike(data: dict[str, dict]) -> dict[tuple[str, str], list[str]]:
    """(dataset, configuration) -> the other configurations that train exactly as it does on that dataset."""
    known = configs(["default", "baseline", *ABLATIONS, *TUNING, *NETWORKS])
    names = {d: [c["name"] for c in json.loads(Path(data[d]["train"]).read_text())["categories"]] for d in data}
    grey = {d: has_grey_image(data[d]["train"]) for d in data}
    same = {(d, n): training(names[d], grey[d], n, o) for d in data for n, o in known.items()}
    return {(d, n): [m for m in known if m != n and same[(d, m)] == same[(d, n)]] for d, n in same}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", default="5,10,20,40", help="budgets of the convergence curves (CPU minutes)")
    p.add_argument("--ablation-minutes", type=float, default=20.0, help="budget of the ablation runs")
    p.add_argument("--curves", default="default,baseline", help="configurations run at every budget")
    tuning = ", ".join(TUNING)
    p.add_argument("--ablations", default=",".join(ABLATIONS), help=f"run at the ablation budget; also {tuning}, small")
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--sets", default="dsb2018,photo")
    p.add_argument("--data", default=str(HERE.parent.parent / "shared" / "data" / "dsb2018"))
    p.add_argument("--stage", default="all", choices=["all", "rates", "train", "table"])
    p.add_argument("--work", default="runs/convergence")
    a = p.parse_args()
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    data = {k: v for k, v in datasets(a, work).items() if k in a.sets.split(",")}
    plan = [(n, o, float(m)) for n, o in configs(a.curves.split(",")).items() for m in a.minutes.split(",")]
    plan += [(n, o, a.ablation_minutes) for n, o in configs(a.ablations.split(",")).items()]
    if a.stage in ("all", "rates", "train"):
        every = configs(["default", "baseline", *ABLATIONS])  # always all, so a subset gets the same budgets
        medians = {d: median([measure_rate(work, data[d], d, n, o) for n, o in every.items()]) for d in data}
        rates = {(d, n): relative_rate(work, data[d], d, n, o, medians[d]) if n in OWN_RATE else medians[d]
                 for d in data for n, o, _ in plan}  # fmt: skip
    twins = alike(data)
    if a.stage in ("all", "train"):
        for seed in (int(s) for s in a.seeds.split(",")):
            for d in data:
                for name, overrides, minutes in plan:
                    train_run(work, data[d], d, name, overrides, minutes, seed, rates[(d, name)], twins[(d, name)])
    if a.stage in ("all", "table"):
        runs, rates = merged_results(work)
        current = [r for r in runs if still_alike(r, twins.get((r["dataset"], r["config"])))]
        write_results(current, rates, RESULTS, a.ablation_minutes)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
