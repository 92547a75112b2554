"""WebDataset shards: atomic writing, their image index, and reading samples back in order.

A shard is written under a temporary name and renamed when complete, so a shard file that
exists is always whole. Tar headers carry a fixed mtime, so the same frames give the same
bytes (a resumed ingest reproduces an uninterrupted one exactly).

Beside each shard lies its index, `NAME.tar.idx.npy`: the byte offset and size of every sample's
image, in sample order (int64, two columns). The loader seeks to a sample with it. Without it,
every loader worker would read all of a shard's tar headers before its first image: for a 1 GB
shard of 256-px frames, seconds of Python per worker, repeated by each worker that reads a piece
of that shard (benchmarks/README.md, "The loader at scale").
"""

from __future__ import annotations

import json
import os
import re
import tarfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from egoscale.errors import DataError

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 1e3, "kb": 1e3, "kib": 1024, "m": 1e6, "mb": 1e6, "mib": 1024 ** 2,
          "g": 1e9, "gb": 1e9, "gib": 1024 ** 3, "t": 1e12, "tb": 1e12, "tib": 1024 ** 4}
TAR_OVERHEAD = 1024  # bytes per member (header + padding), for shard size accounting
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".webp")
INDEX_SUFFIX = ".idx.npy"


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
            import webdataset as wds  # here, not at the top: it loads torch, which `ingest --help` does not need

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
        # the index first: a shard that exists has its index (an index without its shard, left by a
        # kill between the two renames, is rewritten with the shard on resume)
        write_index(final, scan_index(self._tmp))
        os.replace(self._tmp, final)
        self._tar = None
        self.on_close(final.name, self.frames, final.stat().st_size)
        self.shard += 1


def index_path(shard: str | Path) -> Path:
    return Path(f"{shard}{INDEX_SUFFIX}")


def scan_index(shard: str | Path) -> np.ndarray:
    """(offset, size) of each sample's image member, in sample order, read from the tar headers
    (one image per sample: the keys are unique per sample)."""
    with tarfile.open(shard, "r:") as tf:
        rows = [(m.offset_data, m.size) for m in tf if m.isfile() and m.name.lower().endswith(IMAGE_EXTS)]
    return np.array(rows, dtype=np.int64).reshape(-1, 2)


def write_index(shard: str | Path, index: np.ndarray) -> None:
    path = index_path(shard)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        np.save(f, index)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_index(shard: str | Path) -> np.ndarray:
    """The shard's image index: its index file, memory-mapped, when there is one that fits the
    shard; else read from the tar headers (shards that egoscale did not write)."""
    path = index_path(shard)
    if path.is_file():
        try:
            index = np.load(path, mmap_mode="r")
        except (OSError, ValueError):
            index = None  # unreadable (e.g. cut short): the headers say the same, slower
        # an index is only used if it is the right shape and points inside the shard
        if (index is not None and index.ndim == 2 and index.shape[1] == 2 and index.dtype == np.int64
                and (len(index) == 0 or int(index[-1].sum()) <= os.path.getsize(shard))):
            return index
    return scan_index(shard)


def ensure_indexes(folder: str | Path, names: list[str], log=print) -> int:
    """Write the index of each named shard that lacks one (shards ingested before indexes
    existed); returns how many were written."""
    missing = [n for n in names if not index_path(Path(folder) / n).is_file()]
    gone = [n for n in missing if not (Path(folder) / n).is_file()]
    if gone:
        raise DataError(f"{folder}: {len(gone)} shard(s) that the ingest wrote are missing, e.g. {gone[0]}")
    for n in missing:
        write_index(Path(folder) / n, scan_index(Path(folder) / n))
    if missing:
        log(f"wrote the loader's index of {len(missing)} shard(s) that had none")
    return len(missing)


def iter_shard(path: str | Path) -> Iterator[dict]:
    """Samples of one shard in order: {'__key__', 'jpg' (bytes), 'json' (dict)}."""
    import webdataset as wds

    ds = wds.WebDataset(str(path), shardshuffle=False, empty_check=False)
    for sample in ds:
        if "json" in sample:
            sample["json"] = json.loads(sample["json"])
        yield sample
