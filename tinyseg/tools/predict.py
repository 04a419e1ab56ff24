"""`tinyseg predict` on image files: overlays, COCO results (RLE or polygons) and YOLO-seg label files, written
for each readable image; unreadable ones are skipped and counted. numpy + OpenCV only (the edge install runs it)."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from tinyseg.deploy.results import Detections
from tinyseg.errors import DataError, UsageError
from tinyseg.io import IMAGE_SUFFIXES, image_files, read_image, write_json, write_text
from tinyseg.viz import draw_instances, write_rgb


def list_images(source: str) -> list[Path]:
    """An image file, or the image files (regular files with an image suffix) of a folder, sorted."""
    p = Path(source)
    if p.is_dir():
        files = image_files(p)
        if not files:
            raise DataError(f"{p}: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in this folder")
        return files
    if p.is_file():
        return [p]
    raise DataError(f"{p}: no such file or folder" if not p.exists() else f"{p}: not a regular file or folder")


@dataclass
class ImageOutputs:
    """Where the results of `files` go: an overlay PNG each in `out` (NAME.png, or NAME_SUFFIX.png where two
    inputs share a name), COCO results in `json` (masks as `fmt`: rle or polygons), YOLO-seg lines in
    out/labels/NAME.txt (`save_txt`). Refuses overlays that would overwrite an input."""

    files: list[Path]
    out: Path
    json: Path | None = None
    fmt: str = "rle"
    save_txt: bool = False
    results: list[dict] = field(default_factory=list)

    def __post_init__(self):
        stems = [f.stem for f in self.files]
        self.names = [f.stem if stems.count(f.stem) == 1 else f"{f.stem}_{f.suffix[1:]}" for f in self.files]
        inputs = {f.resolve() for f in self.files}
        clash = next((i for i in range(len(self.files)) if self.overlay(i).resolve() in inputs), None)
        if clash is not None:
            raise UsageError(f"--out {self.out}: {self.overlay(clash).name} would overwrite an input image")

    def overlay(self, i: int) -> Path:
        return self.out / f"{self.names[i]}.png"

    @property
    def labels(self) -> Path:
        return self.out / "labels"

    def write(self, i: int, image, det: Detections, cat_ids: list[int]) -> None:
        """The outputs of file i (its image id in the COCO results is i + 1)."""
        overlay = draw_instances(image, det.boxes, det.classes, det.masks, det.class_names, det.scores)
        write_rgb(self.overlay(i), overlay)
        if self.json:
            self.results += det.to_coco(i + 1, cat_ids, self.fmt)
        if self.save_txt:
            write_text(yolo_lines(det, *image.shape[:2]), self.labels / f"{self.names[i]}.txt")

    def finish(self) -> None:
        if self.json:
            write_json(self.results, self.json)


def yolo_lines(det: Detections, height: int, width: int) -> str:
    """YOLO-seg label lines: `class x1 y1 ...` normalised, one exact polygon per detection."""
    lines = []
    for label, poly in zip(det.classes, det.to_polygons()):
        if poly:
            xy = [f"{v / (width if k % 2 == 0 else height):.6f}" for k, v in enumerate(poly)]
            lines.append(f"{int(label)} " + " ".join(xy))
    return "".join(line + "\n" for line in lines)


def predict_images(pred, files: list[Path], outputs: ImageOutputs, conf: float) -> tuple[int, int]:
    """Predict every file and write its outputs; -> (detections, unreadable files). Raises DataError when no
    file could be read."""
    total, skipped = 0, 0
    for i, f in enumerate(tqdm(files, desc="predict", unit="img")):
        try:
            image = read_image(f)
        except DataError as e:
            print(f"skipped: {e}", file=sys.stderr)
            skipped += 1
            continue
        det = pred.predict(image, conf=conf)
        outputs.write(i, image, det, pred.cat_ids)
        total += len(det)
    if skipped == len(files):
        raise DataError(
            f"{files[0].parent if len(files) > 1 else files[0]}: none of the {len(files)} images could be read"
        )
    outputs.finish()
    return total, skipped
