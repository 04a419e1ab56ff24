"""Frame-by-frame prediction on a video file or a camera, with the FPS drawn on each frame.
numpy + OpenCV only (runs with the torch-free edge install)."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import cv2

from tinyseg.viz import draw_instances


class VideoError(ValueError):
    """A video or camera that cannot be opened, or a window that cannot be shown."""


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
    """Predict every frame of `source` (a video path or a camera index). Unreadable frames are skipped and
    counted. Returns {"frames", "skipped", "fps"}."""
    if show and (why := _can_show()):
        raise VideoError(f"--show: {why}; use --save-video OUT.mp4 instead")
    camera = source.isdigit()
    if not camera and not Path(source).is_file():
        raise VideoError(f"{source}: video file not found")
    cap = cv2.VideoCapture(int(source) if camera else source)
    if not cap.isOpened():
        raise VideoError(f"camera {source} could not be opened" if camera else f"{source}: not a readable video")
    total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) if not camera else 0
    fps_in = cap.get(cv2.CAP_PROP_FPS) or 25.0
    writer, frames, skipped, misses, fps = None, 0, 0, 0, 0.0
    tmp = None
    t_start = time.perf_counter()
    try:
        while max_frames is None or frames < max_frames:
            ok, frame = cap.read()
            if not ok or frame is None:
                pos = int(cap.get(cv2.CAP_PROP_POS_FRAMES))
                # A failed read before the end is a damaged frame: skip it; the end (or 30 misses) stops.
                if camera or pos >= total or misses >= 30:
                    break
                skipped += 1
                misses += 1
                cap.set(cv2.CAP_PROP_POS_FRAMES, pos + 1)
                continue
            misses = 0
            t0 = time.perf_counter()
            rgb = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
            det = pred.predict(rgb, conf=conf)
            vis = draw_instances(rgb, det.boxes, det.classes, det.masks, det.class_names, det.scores)
            dt = time.perf_counter() - t0
            fps = 1 / dt if fps == 0 else 0.9 * fps + 0.1 / dt
            cv2.putText(
                vis,
                f"{fps:.1f} FPS  {len(det)} objects",
                (8, 22),
                cv2.FONT_HERSHEY_SIMPLEX,
                0.6,
                (255, 255, 255),
                2,
                cv2.LINE_AA,
            )
            out = cv2.cvtColor(vis, cv2.COLOR_RGB2BGR)
            if save:
                if writer is None:
                    Path(save).parent.mkdir(parents=True, exist_ok=True)
                    tmp = str(Path(save).with_name(".tmp-" + Path(save).name))
                    writer = cv2.VideoWriter(tmp, cv2.VideoWriter_fourcc(*"mp4v"), fps_in, out.shape[1::-1])
                    if not writer.isOpened():
                        raise VideoError(f"{save}: cannot write a video there")
                writer.write(out)
            if show:
                cv2.imshow("tinyseg", out)
                if cv2.waitKey(1) & 0xFF in (27, ord("q")):
                    break
            frames += 1
    finally:
        cap.release()
        if writer is not None:
            writer.release()
            if frames:
                os.replace(tmp, save)
        if show:
            cv2.destroyAllWindows()
    wall = time.perf_counter() - t_start
    if skipped:
        print(f"skipped {skipped} unreadable frames of {source}", file=sys.stderr)
    print(
        f"{frames} frames from {source} at {fps:.1f} FPS (model + drawing)"
        + (f"; video written to {save}" if save and frames else "")
    )
    return {"frames": frames, "skipped": skipped, "fps": fps, "seconds": wall}
