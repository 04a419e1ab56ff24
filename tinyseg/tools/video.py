"""Frame-by-frame prediction on a video file or a camera, with the FPS drawn on each frame.
numpy + OpenCV only (runs with the torch-free edge install)."""

from __future__ import annotations

import contextlib
import os
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from tinyseg.errors import VideoError
from tinyseg.io import atomic_write
from tinyseg.viz import draw_instances

DEFAULT_FPS = 25.0  # for a source that does not say its frame rate (cameras, some containers)
MAX_BAD_FRAMES = 30  # consecutive unreadable frames before a file counts as ended


def _can_show() -> str | None:
    """None if a window can open, else why not."""
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return "no display here (DISPLAY is not set)"
    try:
        cv2.namedWindow("tinyseg")
    except cv2.error:
        return "this OpenCV build has no GUI (opencv-python-headless); pip install opencv-python"
    return None


def run_video(
    pred, source: str, conf: float = 0.3, show: bool = False, save: str | None = None, max_frames: int | None = None
) -> dict:
    """Predict every frame of `source` (a video path or a camera index), drawing the FPS on each. Unreadable
    frames are skipped and counted. Returns {"frames", "skipped", "fps", "seconds"}."""
    if show and (why := _can_show()):
        raise VideoError(f"--show: {why}; use --save-video OUT.mp4 instead")
    cap, camera = _open(source)
    stats = {"frames": 0, "skipped": 0, "fps": 0.0}
    t_start = time.perf_counter()
    with contextlib.ExitStack() as stack:
        stack.callback(cap.release)
        if show:
            stack.callback(cv2.destroyAllWindows)
        writer = _VideoWriter(stack.enter_context(atomic_write(save)), cap) if save else None
        for frame in _frames(cap, camera, max_frames, stats):
            t0 = time.perf_counter()
            out = _annotate(pred, frame, conf, stats["fps"])
            dt = time.perf_counter() - t0
            stats["fps"] = 1 / dt if stats["fps"] == 0 else 0.9 * stats["fps"] + 0.1 / dt
            if writer is not None:
                writer.write(out)
            stats["frames"] += 1
            if show:
                cv2.imshow("tinyseg", out)
                if cv2.waitKey(1) & 0xFF in (27, ord("q")):
                    break
        if writer is not None:
            writer.close(source, stats["frames"])
    if stats["skipped"]:
        print(f"skipped {stats['skipped']} unreadable frames of {source}", file=sys.stderr)
    print(
        f"{stats['frames']} frames from {source} at {stats['fps']:.1f} FPS (model + drawing)"
        + (f"; video written to {save}" if save else "")
    )
    return {**stats, "seconds": time.perf_counter() - t_start}


def _open(source: str) -> tuple[cv2.VideoCapture, bool]:
    camera = source.isdigit()
    if not camera and not Path(source).is_file():
        raise VideoError(f"{source}: video file not found")
    cap = cv2.VideoCapture(int(source) if camera else source)
    if not cap.isOpened():
        raise VideoError(f"camera {source} could not be opened" if camera else f"{source}: not a readable video")
    return cap, camera


def _frames(cap: cv2.VideoCapture, camera: bool, max_frames: int | None, stats: dict):
    """Yield BGR frames. A failed read before the end of a file is a damaged frame: skipped and counted in
    stats["skipped"]; the end, MAX_BAD_FRAMES misses in a row, or max_frames yielded stops."""
    total = 0 if camera else int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    yielded, misses = 0, 0
    while max_frames is None or yielded < max_frames:
        ok, frame = cap.read()
        if ok and frame is not None:
            misses, yielded = 0, yielded + 1
            yield frame
            continue
        pos = int(cap.get(cv2.CAP_PROP_POS_FRAMES))
        if camera or pos >= total or misses >= MAX_BAD_FRAMES:
            return
        stats["skipped"], misses = stats["skipped"] + 1, misses + 1
        cap.set(cv2.CAP_PROP_POS_FRAMES, pos + 1)


def _annotate(pred, frame: np.ndarray, conf: float, fps: float) -> np.ndarray:
    """BGR frame -> BGR frame with the predictions and the FPS so far drawn on it."""
    rgb = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
    det = pred.predict(rgb, conf=conf)
    vis = draw_instances(rgb, det.boxes, det.classes, det.masks, det.class_names, det.scores)
    label = f"{fps:.1f} FPS  {len(det)} objects"
    cv2.putText(vis, label, (8, 22), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (255, 255, 255), 2, cv2.LINE_AA)
    return cv2.cvtColor(vis, cv2.COLOR_RGB2BGR)


class _VideoWriter:
    """An mp4 writer opened at the first frame (its size is known then), at the source's frame rate."""

    def __init__(self, path: Path, cap: cv2.VideoCapture):
        self.path, self.fps, self.writer = path, cap.get(cv2.CAP_PROP_FPS) or DEFAULT_FPS, None

    def write(self, frame: np.ndarray) -> None:
        if self.writer is None:
            self.writer = cv2.VideoWriter(str(self.path), cv2.VideoWriter_fourcc(*"mp4v"), self.fps, frame.shape[1::-1])
            if not self.writer.isOpened():
                raise VideoError(f"{self.path.parent}: cannot write a video there")
        self.writer.write(frame)

    def close(self, source: str, frames: int) -> None:
        if self.writer is not None:
            self.writer.release()
        if not frames:
            raise VideoError(f"{source}: no frame could be read; no video written")
