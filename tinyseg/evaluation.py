"""Evaluation: any graph-like predictor over a dataset -> COCO results JSON -> pycocotools COCOeval for `bbox`
and `segm`. The same evaluator serves PyTorch (models.detector.graph_runner) and every exported format.

pycocotools' `summarize()` always scores its first AP line at maxDets=100, whatever `params.maxDets` says, so
AP is read here straight from `eval["precision"]` at the largest maxDets (dense data such as DSB2018 needs 500).
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import io
from collections.abc import Callable

import numpy as np
import pycocotools.mask as mask_util
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torch.utils.data import DataLoader
from tqdm import tqdm

from tinyseg.data.coco import CocoData
from tinyseg.data.dataset import CocoDataset, collate_images
from tinyseg.data.transforms import Letterbox
from tinyseg.deploy.results import to_detections

GraphRunner = Callable[[np.ndarray], dict[str, np.ndarray]]


def ground_truth(data: CocoData) -> dict:
    """A COCO instances dict of the validated dataset (what was skipped at load is not scored)."""
    images, anns = [], []
    for rec in data.images:
        images.append({"id": rec.id, "height": rec.height, "width": rec.width, "file_name": str(rec.file)})
        for crowd, labels, rles in ((0, rec.labels, rec.rles), (1, rec.crowd_labels, rec.crowd_rles)):
            for label, rle in zip(labels, rles):
                counts = rle["counts"].decode("ascii") if isinstance(rle["counts"], bytes) else rle["counts"]
                anns.append(
                    {
                        "id": len(anns) + 1,
                        "image_id": rec.id,
                        "category_id": data.cat_ids[label],
                        "segmentation": {"size": rle["size"], "counts": counts},
                        "area": float(mask_util.area(rle)),
                        "bbox": mask_util.toBbox(rle).tolist(),
                        "iscrowd": crowd,
                    }
                )
    categories = [{"id": c, "name": n} for c, n in zip(data.cat_ids, data.class_names)]
    return {"images": images, "annotations": anns, "categories": categories}


def faster_available() -> bool:
    return importlib.util.find_spec("faster_coco_eval") is not None


def precision_table(gt: dict, results: list[dict], iou_type: str, image_ids: list[int], max_dets: int, evaluator: str):
    """COCOeval's precision table [T iou, R recall, K class, A area, M maxDets] for one IoU type."""
    if evaluator == "faster":
        from faster_coco_eval import COCO as FasterCOCO
        from faster_coco_eval import COCOeval_faster as Eval

        coco = FasterCOCO
    else:
        coco, Eval = COCO, COCOeval
    with contextlib.redirect_stdout(io.StringIO()):
        g = coco()
        g.dataset = copy.deepcopy(gt)  # loadRes and the evaluators add fields to what they are given
        g.createIndex()
        ev = Eval(g, g.loadRes(copy.deepcopy(results)), iou_type)
        ev.params.imgIds = image_ids
        ev.params.maxDets = [1, 10, max_dets]
        ev.evaluate()
        ev.accumulate()
    return ev.eval["precision"]


def _ap(precision: np.ndarray) -> float:
    p = precision[precision > -1]
    return float(p.mean()) if p.size else 0.0


def coco_evaluate(
    gt: dict,
    results: list[dict],
    max_dets: int = 100,
    image_ids: list[int] | None = None,
    class_names: list[str] | None = None,
    evaluator: str = "auto",
) -> dict:
    """Score results with COCOeval (`evaluator`: pycocotools, the reference, or faster-coco-eval, the fast path
    that agrees with it; auto = faster where installed). Returns mask_ap, mask_ap50, mask_ap75,
    mask_ap_small/medium/large, the same for box_*, boundary_ap / _ap50 / _ap75 (Boundary IoU, Cheng et al.
    2021: mask quality at the edges; faster-coco-eval only), per-class AP, num_images, num_objects, max_dets."""
    evaluator = ("faster" if faster_available() else "pycocotools") if evaluator == "auto" else evaluator
    image_ids = sorted(image_ids if image_ids is not None else [im["id"] for im in gt["images"]])
    ids = set(image_ids)
    out: dict = {"num_images": len(image_ids), "max_dets": max_dets, "num_detections": len(results)}
    out["num_objects"] = sum(1 for a in gt["annotations"] if a["image_id"] in ids and not a["iscrowd"])
    out["evaluator"] = evaluator
    names = class_names or [c["name"] for c in sorted(gt["categories"], key=lambda c: c["id"])]
    per_class: dict[str, dict] = {n: {} for n in names}
    kinds = [("segm", "mask"), ("bbox", "box")] + ([("boundary", "boundary")] if evaluator == "faster" else [])
    for iou_type, prefix in kinds:
        res = [r for r in results if iou_type == "bbox" or "segmentation" in r]
        p = precision_table(gt, res, iou_type, image_ids, max_dets, evaluator) if res else None
        for key, sel in (("", np.s_[:, :, :, 0, -1]), ("50", np.s_[0, :, :, 0, -1]), ("75", np.s_[5, :, :, 0, -1])):
            out[f"{prefix}_ap{key}"] = _ap(p[sel]) if p is not None else 0.0
        for a, name in ((1, "small"), (2, "medium"), (3, "large")):
            out[f"{prefix}_ap_{name}"] = _ap(p[:, :, :, a, -1]) if p is not None else 0.0
        for k, n in enumerate(names):
            per_class[n][f"{prefix}_ap"] = _ap(p[:, :, k, 0, -1]) if p is not None else 0.0
    out["per_class"] = per_class
    return out


def format_table(metrics: dict) -> str:
    if metrics.get("num_objects") == 0:
        return f"no ground-truth objects in the {metrics['num_images']} images: AP is undefined (reported as 0)"
    rows = [("", "AP", "AP50", "AP75", "APs", "APm", "APl")]
    for prefix, label in (("mask", "mask"), ("box", "box"), ("boundary", "boundary")):
        if f"{prefix}_ap" not in metrics:
            continue
        rows.append(
            (label, *(f"{metrics[f'{prefix}_ap{k}']:.3f}" for k in ("", "50", "75", "_small", "_medium", "_large")))
        )
    lines = ["  ".join(f"{c:>7}" for c in r) for r in rows]
    if metrics.get("per_class"):
        lines.append("")
        lines.append(f"{'class':>16}  {'mask AP':>7}  {'box AP':>7}")
        for n, v in metrics["per_class"].items():
            lines.append(f"{n:>16}  {v.get('mask_ap', 0):7.3f}  {v.get('box_ap', 0):7.3f}")
    lines.append(f"({metrics['num_images']} images, maxDets={metrics['max_dets']}, {metrics.get('evaluator', '')})")
    return "\n".join(lines)


def predict_dataset(
    run: GraphRunner, dataset: CocoDataset, batch: int = 8, conf: float = 0.02, show_progress: bool = True
) -> list[dict]:
    """Run a graph-like callable (letterboxed uint8 [B, 3, S, S] -> detections, e.g. graph_runner() or
    EdgeSegmenter.run) over an eval dataset -> COCO results (masks RLE-encoded at the original resolution)."""
    loader = DataLoader(dataset, batch_size=batch, shuffle=False, collate_fn=collate_images, num_workers=0)
    results: list[dict] = []
    names, cat_ids = dataset.data.class_names, dataset.data.cat_ids
    for images, meta in tqdm(loader, desc="eval", disable=not show_progress, leave=False):
        out = run(np.ascontiguousarray(images.numpy()))  # graphs take planar NCHW
        for i, (image_id, (h, w), m) in enumerate(zip(meta["image_id"], meta["orig_size"], meta["matrix"])):
            det = [out[k][i] for k in ("boxes", "scores", "classes", "masks")]
            d = to_detections(*det, Letterbox.from_matrix(m.numpy()), h, w, dataset.imgsz, conf, names)
            results += d.to_coco(image_id, cat_ids)
    return results


def evaluate(
    run: GraphRunner,
    dataset: CocoDataset,
    max_det: int = 100,
    conf: float = 0.02,
    batch: int = 8,
    show_progress: bool = True,
    evaluator: str = "auto",
) -> tuple[dict, list[dict]]:
    """COCO mask, box and boundary AP of a graph-like callable on an eval dataset. Returns (metrics, results)."""
    results = predict_dataset(run, dataset, batch, conf, show_progress)
    data = dataset.data
    image_ids = [r.id for r in data.images]
    metrics = coco_evaluate(ground_truth(data), results, max_det, image_ids, data.class_names, evaluator)
    return metrics, results
