"""WebDataset shards: atomic writing, and reading samples back in the manifest's order.

A shard is written under a temporary name and renamed when complete, so a shard file that
exists is always whole. Tar headers carry a fixed mtime, so the same frames give the same
bytes (a resumed ingest reproduces an uninterrupted one exactly).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path

import webdataset as wds

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 1e3, "kb": 1e3, "kib": 1024, "m": 1e6, "mb": 1e6, "mib": 1024 ** 2,
          "g": 1e9, "gb": 1e9, "gib": 1024 ** 3, "t": 1e12, "tb": 1e12, "tib": 1024 ** 4}
TAR_OVERHEAD = 1024  # bytes per member (header + padding), for shard size accounting


def parse_size(text: str | int) -> int:
    """'512MB', '1GiB', '2e6' (bytes) -> bytes."""
    if isinstance(text, int):
        return text
    m = _SIZE.match(str(text))
    if not m or (m.group(2) or "").lower() not in _UNITS:
        raise ValueError(f"not a size: {text!r} (e.g. 512MB, 1GB)")
    return int(float(m.group(1)) * _UNITS[(m.group(2) or "").lower()])


class ShardWriter:
    """Writes samples into shards of at most `max_bytes` (and `max_frames`), atomically.

    `on_close(name, frames, nbytes)` is called after each shard is renamed into place.
    """

    def __init__(self, out_dir: str | Path, name_fmt: str, start_shard: int, max_bytes: int,
                 max_frames: int | None, on_close):
        self.out_dir = Path(out_dir)
        self.name_fmt = name_fmt
        self.shard = start_shard
        self.max_bytes = max_bytes
        self.max_frames = max_frames
        self.on_close = on_close
        self._tar = None
        self._tmp: Path | None = None
        self.frames = 0
        self.nbytes = 0

    @property
    def current_name(self) -> str:
        return self.name_fmt.format(self.shard)

    def write(self, key: str, files: dict[str, bytes]) -> None:
        size = sum(len(v) + TAR_OVERHEAD for v in files.values())
        if self._tar is not None and (self.nbytes + size > self.max_bytes
                                      or (self.max_frames and self.frames >= self.max_frames)):
            self.close()
        if self._tar is None:
            self._tmp = self.out_dir / f".{self.current_name}.tmp"
            self._tar = wds.TarWriter(str(self._tmp), mtime=0.0, user="egoscale", group="egoscale",
                                      mode=0o444)
            self.frames, self.nbytes = 0, 0
        self._tar.write({"__key__": key, **files})
        self.frames += 1
        self.nbytes += size

    def close(self) -> None:
        if self._tar is None:
            return
        self._tar.close()
        with open(self._tmp, "rb") as f:
            os.fsync(f.fileno())
        final = self.out_dir / self.current_name
        os.replace(self._tmp, final)
        self._tar = None
        self.on_close(final.name, self.frames, final.stat().st_size)
        self.shard += 1


def iter_shard(path: str | Path) -> Iterator[dict]:
    """Samples of one shard in order: {'__key__', 'jpg' (bytes), 'json' (dict)}."""
    ds = wds.WebDataset(str(path), shardshuffle=False, empty_check=False)
    for sample in ds:
        if "json" in sample:
            sample["json"] = json.loads(sample["json"])
        yield sample
