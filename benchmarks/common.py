"""What the benchmark scripts share: running the tinyseg CLI and reading the JSON it wrote."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def tinyseg(*args: str) -> None:
    """Run `python -m tinyseg ARGS`; on failure stop with the end of its error output."""
    res = subprocess.run([sys.executable, "-m", "tinyseg", *args], capture_output=True, text=True)
    if res.returncode:
        raise SystemExit(f"tinyseg {args[0]} failed:\n{res.stderr[-3000:]}")


def train_or_resume(out: Path, *args: str) -> None:
    """`tinyseg train ARGS --out OUT`, or, when OUT holds a run cut off by a stopped session, its exact
    continuation from last.pt."""
    if (out / "last.pt").is_file():
        tinyseg("train", "--resume", str(out))
    else:
        tinyseg("train", *args, "--out", str(out))


def read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None
