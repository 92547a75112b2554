"""Read the history rows of an offline W&B run file (`run-ID.wandb`) without the W&B service.

The file is a 7-byte header (":W&B", magic, version) followed by LevelDB-log-style records in
32 KiB blocks (each chunk: CRC32 (4 bytes), length (2, little-endian), type (1): full, first,
middle, last), each record a serialised `wandb_internal_pb2.Record`."""

from __future__ import annotations

import json
import struct
from pathlib import Path

BLOCK = 32768


def records(path: Path):
    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", "not a W&B run file"
    pos, pending = 7, b""
    while pos + 7 <= len(data):
        left = BLOCK - pos % BLOCK
        if left < 7:  # a block's tail too short for a chunk header is padding
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk = data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind == 0 and length == 0:
            continue
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            yield pending
            pending = b""


def history(path: Path) -> list[dict]:
    """Each `run.log` call's values, with `_step`."""
    from wandb.proto import wandb_internal_pb2 as pb

    rows = []
    for raw in records(path):
        r = pb.Record()
        r.ParseFromString(raw)
        if r.WhichOneof("record_type") == "history":
            rows.append({(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in r.history.item})
    return rows
