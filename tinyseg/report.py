"""The evaluation report: one self-contained HTML page (pictures inline) people look at instead of reading JSON.

Metrics overall and per class, precision-recall curves per class, a confusion matrix, a TIDE-style breakdown of
the errors, and galleries of the worst images (ground truth beside prediction) and of the most confident false
positives. `tinyseg eval --report DIR` writes it for any model; a training run writes it for its last evaluation,
with the training curves.
"""

from __future__ import annotations

import base64
import html
import io
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pycocotools.mask as mask_util

from tinyseg.data.coco import CocoData, read_record_image
from tinyseg.data.rle import decode_masks
from tinyseg.errors import DataError
from tinyseg.evaluation import ground_truth, precision_table
from tinyseg.io import write_text
from tinyseg.viz import draw_instances

MATCH_IOU = 0.5  # a detection is right where its mask IoU with a same-class object reaches this
BACKGROUND_IOU = 0.1  # below this with every object, a detection is background (TIDE's threshold)
REPORT_CONF = 0.3  # the detections the confusion matrix, the breakdown and the galleries look at
GALLERY = 8
THUMB = 560  # px, the longer side of gallery pictures (ground truth and prediction side by side)
ERRORS = ("correct", "class", "location", "both", "duplicate", "background")


def match_image(dets: list[dict], gts: list[dict]) -> tuple[list[str], list[int], set[int]]:
    """TIDE-style: each detection (highest score first) -> its error type, the object it is about (-1: none),
    and the set of objects found correctly. correct: IoU >= MATCH_IOU with an unclaimed object of its class;
    duplicate: that object was claimed already; class: IoU >= MATCH_IOU with an object of another class;
    location: BACKGROUND_IOU <= IoU < MATCH_IOU with its class; both: that, with another class; background:
    IoU < BACKGROUND_IOU with everything."""
    order = sorted(range(len(dets)), key=lambda i: -dets[i]["score"])
    kinds, objects, found = [""] * len(dets), [-1] * len(dets), set()
    ious = _ious(dets, gts)
    for i in order:
        same = np.array([g["category_id"] == dets[i]["category_id"] for g in gts], bool)
        iou = ious[i] if len(gts) else np.zeros(0)
        kinds[i], objects[i] = _classify(iou, same, found)
        if kinds[i] == "correct":
            found.add(objects[i])
    return kinds, objects, found


def _ious(dets: list[dict], gts: list[dict]) -> np.ndarray:
    if not dets or not gts:
        return np.zeros((len(dets), len(gts)))
    return np.asarray(
        mask_util.iou([d["segmentation"] for d in dets], [g["segmentation"] for g in gts], [0] * len(gts))
    )


def _classify(iou: np.ndarray, same: np.ndarray, found: set[int]) -> tuple[str, int]:
    if not len(iou) or iou.max() < BACKGROUND_IOU:
        return "background", -1
    best_same = int(np.where(same, iou, -1).argmax()) if same.any() else -1
    if best_same >= 0 and iou[best_same] >= MATCH_IOU:
        return ("duplicate" if best_same in found else "correct"), best_same
    best = int(iou.argmax())
    if iou[best] >= MATCH_IOU:
        return "class", best
    return ("location", best_same) if best_same >= 0 and iou[best_same] >= BACKGROUND_IOU else ("both", best)


def analyse(data: CocoData, results: list[dict], gt: dict | None = None, conf: float = REPORT_CONF) -> dict:
    """Per image: the detections >= conf classified (match_image); overall: error counts, missed objects,
    a confusion matrix [C + 1, C + 1] (rows: true class or background, columns: predicted or missed)."""
    gt = gt or ground_truth(data)
    by_image: dict[int, list[dict]] = {}
    for r in results:
        if r["score"] >= conf:
            by_image.setdefault(r["image_id"], []).append(r)
    objects: dict[int, list[dict]] = {}
    for a in gt["annotations"]:
        if not a["iscrowd"]:
            objects.setdefault(a["image_id"], []).append(a)
    col = {c: i for i, c in enumerate(data.cat_ids)}
    c = len(data.cat_ids)
    confusion, counts, per_image = np.zeros((c + 1, c + 1), int), Counter(), []
    for rec in data.images:
        dets, gts = by_image.get(rec.id, []), objects.get(rec.id, [])
        kinds, targets, found = match_image(dets, gts)
        counts.update(kinds)
        for d, kind, t in zip(dets, kinds, targets):
            row = col[gts[t]["category_id"]] if t >= 0 and kind in ("correct", "class") else c
            confusion[row, col[d["category_id"]]] += 1
        missed = [g for k, g in enumerate(gts) if k not in found]
        for g in missed:
            confusion[col[g["category_id"]], c] += 1
        counts["missed"] += len(missed)
        f1 = 2 * len(found) / max(len(dets) + len(gts), 1) if dets or gts else 1.0
        per_image.append({"record": rec, "dets": dets, "kinds": kinds, "f1": f1, "missed": len(missed)})
    return {"counts": dict(counts), "confusion": confusion, "per_image": per_image}


def write_report(
    folder: str | Path, data: CocoData, results: list[dict], metrics: dict, curves_png: Path | None = None
) -> Path:
    """Write folder/index.html; -> its path."""
    gt = ground_truth(data)
    a = analyse(data, results, gt)
    names = data.class_names
    parts = [_HEAD, f"<h1>tinyseg evaluation: {html.escape(str(data.path))}</h1>", _metrics_table(metrics)]
    if curves_png is not None and curves_png.is_file():
        parts.append(f"<h2>Training</h2>{_img(curves_png.read_bytes())}")
    parts.append(
        f"<h2>Precision-recall per class (mask IoU {MATCH_IOU})</h2>{_img(_pr_curves(data, gt, results, metrics))}"
    )
    parts.append(
        f"<h2>Confusion matrix (detections &ge; {REPORT_CONF})</h2>{_img(_confusion_png(a['confusion'], names))}"
    )
    parts.append(_errors_section(a["counts"]))
    parts.append(_gallery_worst(data, a["per_image"]))
    parts.append(_gallery_false_positives(data, a["per_image"]))
    parts.append("</body></html>")
    path = Path(folder) / "index.html"
    write_text("\n".join(parts), path)
    return path


_HEAD = """<!doctype html><html><head><meta charset="utf-8"><title>tinyseg report</title><style>
body{font-family:system-ui,sans-serif;margin:24px;max-width:1200px;color:#222}
table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}
th{background:#f3f3f3}.g{display:flex;flex-wrap:wrap;gap:12px}.g figure{margin:0}figcaption{font-size:13px}
img{max-width:100%}</style></head><body>"""


def _img(png: bytes) -> str:
    return f'<img src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def _metrics_table(m: dict) -> str:
    kinds = [k for k in ("mask", "box", "boundary") if f"{k}_ap" in m]
    keys = ("", "50", "75", "_small", "_medium", "_large")
    head = "<tr><th></th>" + "".join(f"<th>{h}</th>" for h in ("AP", "AP50", "AP75", "APs", "APm", "APl")) + "</tr>"
    rows = "".join(
        f"<tr><th>{k}</th>" + "".join(f"<td>{m[f'{k}_ap{x}']:.3f}</td>" for x in keys) + "</tr>" for k in kinds
    )
    per = "<tr><th>class</th>" + "".join(f"<th>{k} AP</th>" for k in kinds) + "</tr>"
    for name, v in m.get("per_class", {}).items():
        per += (
            f"<tr><th>{html.escape(name)}</th>"
            + "".join(f"<td>{v.get(f'{k}_ap', 0):.3f}</td>" for k in kinds)
            + "</tr>"
        )
    note = f"{m['num_images']} images, {m.get('num_objects', '?')} objects, maxDets {m['max_dets']}"
    note += f", {m.get('evaluator', '')}"
    return f"<h2>Metrics</h2><table>{head}{rows}</table><p>{note}</p><table>{per}</table>"


def _figure_png(fig) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    return buf.getvalue()


def _pr_curves(data: CocoData, gt: dict, results: list[dict], metrics: dict) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    res = [r for r in results if "segmentation" in r]
    if res:
        ids = [r.id for r in data.images]
        p = precision_table(gt, res, "segm", ids, metrics["max_dets"], metrics.get("evaluator", "pycocotools"))
        recall = np.linspace(0, 1, p.shape[1])
        for k, name in enumerate(data.class_names):
            curve = p[0, :, k, 0, -1]
            ax.plot(recall, np.where(curve < 0, np.nan, curve), label=f"{name} ({_mean(curve):.2f})")
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    return _figure_png(fig)


def _mean(curve: np.ndarray) -> float:
    valid = curve[curve > -1]
    return float(valid.mean()) if valid.size else 0.0


def _confusion_png(confusion: np.ndarray, names: list[str]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(names) + 1
    fig, ax = plt.subplots(figsize=(1 + 0.6 * n, 0.8 + 0.5 * n))
    ax.imshow(np.log1p(confusion), cmap="Blues")
    for (i, j), v in np.ndenumerate(confusion):
        if v:
            ax.text(j, i, str(v), ha="center", va="center", fontsize=8)
    ax.set_xticks(range(n), [*names, "missed"], rotation=45, ha="right")
    ax.set_yticks(range(n), [*names, "background"])
    ax.set(xlabel="predicted", ylabel="true")
    return _figure_png(fig)


def _errors_section(counts: dict) -> str:
    total = sum(counts.get(k, 0) for k in ERRORS)
    rows = "".join(
        f"<tr><th>{k}</th><td>{counts.get(k, 0)}</td><td>{counts.get(k, 0) / max(total, 1):.1%}</td></tr>"
        for k in ERRORS
    )
    return (
        f"<h2>Errors (TIDE-style, detections &ge; {REPORT_CONF}, mask IoU)</h2><table><tr><th>kind</th><th>count</th>"
        f"<th>of detections</th></tr>{rows}<tr><th>missed objects</th><td>{counts.get('missed', 0)}</td><td></td></tr>"
        "</table><p>class: right place, wrong class; location: right class, IoU 0.1-0.5; both: neither; duplicate: "
        "a second detection of a found object; background: nothing there.</p>"
    )


def _thumb(image: np.ndarray) -> bytes:
    s = THUMB / max(image.shape[:2])
    if s < 1:
        image = cv2.resize(image, (round(image.shape[1] * s), round(image.shape[0] * s)), interpolation=cv2.INTER_AREA)
    ok, png = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    return png.tobytes() if ok else b""


def _drawn(data: CocoData, rec, dets: list[dict]) -> tuple[np.ndarray, np.ndarray] | None:
    """(ground truth drawn, detections drawn) on the image of `rec`; None if it cannot be read."""
    try:
        image = read_record_image(rec)
    except DataError:
        return None
    masks = decode_masks(rec.rles, rec.height, rec.width).astype(bool)
    boxes = (
        np.array([[x, y, x + w, y + h] for x, y, w, h in mask_util.toBbox(rec.rles)]) if rec.rles else np.zeros((0, 4))
    )
    truth = draw_instances(image, boxes, np.array(rec.labels), masks, data.class_names)
    label = {c: i for i, c in enumerate(data.cat_ids)}
    dmasks = np.stack([mask_util.decode(d["segmentation"]) for d in dets]).astype(bool) if dets else None
    dboxes = np.array([[x, y, x + w, y + h] for x, y, w, h in (d["bbox"] for d in dets)]).reshape(-1, 4)
    classes, scores = np.array([label[d["category_id"]] for d in dets]), np.array([d["score"] for d in dets])
    return truth, draw_instances(image, dboxes, classes, dmasks, data.class_names, scores)


def _gallery_worst(data: CocoData, per_image: list[dict]) -> str:
    worst = sorted(per_image, key=lambda p: (p["f1"], -p["missed"]))[:GALLERY]
    items = []
    for p in worst:
        drawn = _drawn(data, p["record"], p["dets"])
        if drawn is not None:
            name = html.escape(p["record"].file.name)
            cap = f"{name}: F1 {p['f1']:.2f}, {p['missed']} missed"
            items.append(f"<figure>{_img(_thumb(np.concatenate(drawn, 1)))}<figcaption>{cap}</figcaption></figure>")
    return "<h2>Worst images (ground truth | prediction)</h2><div class='g'>" + "".join(items) + "</div>"


def _gallery_false_positives(data: CocoData, per_image: list[dict]) -> str:
    wrong = [(d, k, p) for p in per_image for d, k in zip(p["dets"], p["kinds"]) if k not in ("correct", "")]
    wrong.sort(key=lambda t: -t[0]["score"])
    items = []
    for d, kind, p in wrong[:GALLERY]:
        drawn = _drawn(data, p["record"], [d])
        if drawn is not None:
            x, y, w, h = (int(v) for v in d["bbox"])
            pad = max(w, h) // 2 + 8
            crop = drawn[1][max(y - pad, 0) : y + h + pad, max(x - pad, 0) : x + w + pad]
            crop = crop if crop.size else drawn[1]
            names = dict(zip(data.cat_ids, data.class_names))
            where = html.escape(p["record"].file.name)
            cap = f"{html.escape(names[d['category_id']])} {d['score']:.2f}: {kind} ({where})"
            items.append(f"<figure>{_img(_thumb(crop))}<figcaption>{cap}</figcaption></figure>")
    return "<h2>Most confident false positives</h2><div class='g'>" + "".join(items) + "</div>"
