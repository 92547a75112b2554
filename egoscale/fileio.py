"""Atomic file writes: write to a temporary file in the same folder, fsync, rename.

A reader (or a resumed run after SIGKILL) therefore sees either the old file or the complete
new one, never a half-written one."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any
from collections.abc import Iterator


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    umask = os.umask(0)  # mkstemp makes 0600 files; give the final file the usual permissions
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    try:
        yield tmp
        with open(tmp, "rb") as f:  # flush the data to disk before the rename makes it visible
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def remove_stale_temps(path: str | os.PathLike) -> list[Path]:
    """Delete temporary files that `atomic_path(path)` left behind when a process was killed
    mid-write (SIGKILL skips its cleanup); call it only where no other writer is active."""
    path = Path(path)
    stale = list(path.parent.glob(f".{path.name}.*.tmp"))
    for f in stale:
        f.unlink(missing_ok=True)
    return stale


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def append_jsonl(path: str | os.PathLike, record: dict) -> None:
    """Append one JSON line (metrics logs). A line is written with one `write` call."""
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
