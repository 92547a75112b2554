"""Pretraining input: an endless, shuffled stream of augmented frames from shards or a subset.

Work is cut into pieces (a range of samples of one shard); every (rank, loader worker) takes
its own pieces, so no two read the same frames in an epoch. Pieces are read by seeking to the
images' offsets, from the index beside each shard (`egoscale.data.shards`), so a small subset
inside a large shard costs only its own bytes (WebDataset reads shards front to back, which a
0.01% subset cannot afford). Where each reader is in its stream is a `cursor.Cursor`, which a
checkpoint saves, so that a resumed run continues the stream exactly.

Speed: a frame's size is read from its JPEG header (`jpeg_size`) to place the crop; JPEGs are
decoded with libjpeg's DCT scaling (PIL `draft`) when the crop is much smaller than the frame,
otherwise by torchvision with its fast uint8 resize; samples stay uint8 until
the batch reaches the training device, where `normalize_batch` makes floats (4x less data
through the loader).
"""

from __future__ import annotations

import functools
import io
import itertools
import math
import random
import warnings
from dataclasses import dataclass
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import IterableDataset, get_worker_info
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2.functional import resized_crop

from egoscale.constants import IMAGENET_MEAN, IMAGENET_STD, INTERPOLATION
from egoscale.data.cursor import Cursor, ResumableBatches, Sample
from egoscale.data.shards import load_index
from egoscale.errors import DataError


try:
    # torchvision's decoder writes (3, H, W) uint8 straight from libjpeg-turbo, faster than PIL's
    # decode + numpy conversion (benchmarks/loader_vs_webdataset.py). torchvision deprecates it in
    # favour of TorchCodec (not a dependency here); PIL takes over when it is gone.
    from torchvision.io import ImageReadMode, decode_image
except ImportError:  # pragma: no cover - future torchvision
    decode_image = None


def decode_rgb(data: bytes) -> torch.Tensor:
    """Image bytes -> uint8 (3, H, W)."""
    if decode_image is not None:
        with warnings.catch_warnings():  # its deprecation notice, at every call; silenced here only
            warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities of "
                                    "TorchVision", category=DeprecationWarning)
            return decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
    return torch.from_numpy(np.array(Image.open(io.BytesIO(data)).convert("RGB"))).permute(2, 0, 1)


@dataclass(frozen=True)
class Piece:
    shard: str  # absolute path
    start: int  # sample range [start, end) within the shard
    end: int


def resolve_pieces(data: str | Path, subset: str | Path | None = None,
                   piece_size: int = 256) -> tuple[list[Piece], int]:
    """Pieces of the input and its number of frames."""
    from egoscale.data.subset import load_manifest, load_subset

    data = Path(data)
    if subset is not None:
        sub = load_subset(subset)
        root = data if data.is_dir() else Path(sub.get("frames_dir", "."))
        ranges = [(str(root / r["shard"]), r["start"], r["end"]) for r in sub["shards"]]
        missing = sorted({s for s, _, _ in ranges if not Path(s).is_file()})
        if missing:
            raise DataError(f"{subset}: shards not found under {root}, e.g. {missing[0]}")
        total = sub["frames"]
    elif (data / "manifest.json").is_file():
        man = load_manifest(data)
        ranges = [(str(data / s["name"]), 0, s["frames"]) for s in man["shards"] if s["frames"]]
        total = sum(s["frames"] for s in man["shards"])
    else:
        shards = sorted(data.glob("*.tar")) if data.is_dir() else ([data] if data.suffix == ".tar" else [])
        if not shards:
            raise DataError(f"{data}: no shards found (*.tar, or an ingest folder with manifest.json)")
        # shards egoscale did not write: their lengths from their indexes (or tar headers)
        ranges = [(str(s), 0, len(load_index(s))) for s in shards]
        total = sum(b for _, _, b in ranges)
    if total == 0 or not ranges:
        raise DataError(f"{subset or data}: no frames to train on")
    pieces = []
    for shard, a, b in ranges:
        for s in range(a, b, piece_size):
            pieces.append(Piece(shard, s, min(b, s + piece_size)))
    return pieces, total


def read_piece(piece: Piece, index_cache: dict) -> list[bytes]:
    """Image bytes of the samples in a piece, in order. `index_cache` keeps each shard's index
    (memory-mapped from its index file) for the pieces that follow."""
    index = index_cache.get(piece.shard)
    if index is None:
        index = index_cache[piece.shard] = load_index(piece.shard)
    out = []
    with open(piece.shard, "rb") as f:
        for off, size in index[piece.start:piece.end].tolist():
            f.seek(off)
            out.append(f.read(size))
    return out


def random_resized_crop_box(w: int, h: int, rng: random.Random, scale=(0.2, 1.0), ratio=(3 / 4, 4 / 3)):
    """torchvision's RandomResizedCrop box sampling (same distribution), on plain numbers."""
    area = w * h
    log_r = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        ar = math.exp(rng.uniform(*log_r))
        cw, ch = int(round(math.sqrt(target * ar))), int(round(math.sqrt(target / ar)))
        if 0 < cw <= w and 0 < ch <= h:
            return rng.randint(0, w - cw), rng.randint(0, h - ch), cw, ch
    # fallback: central crop at the nearest allowed ratio
    in_ratio = w / h
    if in_ratio < ratio[0]:
        cw, ch = w, int(round(w / ratio[0]))
    elif in_ratio > ratio[1]:
        ch, cw = h, int(round(h * ratio[1]))
    else:
        cw, ch = w, h
    return (w - cw) // 2, (h - ch) // 2, cw, ch


# JPEG's start-of-frame markers (baseline, progressive, lossless, ...): C0-CF but C4 (Huffman tables),
# C8 (reserved) and CC (arithmetic-coding conditioning)
_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def jpeg_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a JPEG's start-of-frame segment, or None where `data` is not a JPEG whose
    header says so. PIL's `Image.open` reads the same two numbers but parses every header segment
    in Python on the way, about a third of a small frame's whole augmentation (benchmarks/README.md,
    "The demo"); the decode route needs nothing else from PIL."""
    if data[:2] != b"\xff\xd8":
        return None
    i, n = 2, len(data)
    while i + 9 <= n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte before a marker
            i += 1
        elif marker == 0x01 or 0xD0 <= marker <= 0xD8:  # markers without a length
            i += 2
        elif marker in _SOF:
            return int.from_bytes(data[i + 7:i + 9], "big"), int.from_bytes(data[i + 5:i + 7], "big")
        else:
            i += 2 + int.from_bytes(data[i + 2:i + 4], "big")
    return None


def augment(data: bytes, size: int, rng: random.Random, scale=(0.2, 1.0), flip: bool = True,
            interpolation: str = INTERPOLATION) -> torch.Tensor:
    """Image bytes -> RandomResizedCrop(size, scale) + horizontal flip, uint8 (3, H, W).

    Two routes, both libjpeg-turbo: when the crop is at least twice the output, PIL decodes the
    JPEG at a reduced DCT scale (`draft`), which skips most of the decoding work, and resizes the
    crop (PIL's filters are antialiased); otherwise the whole frame is decoded (`decode_rgb`) and
    the crop resized with torchvision's antialiased kernel. `interpolation`: bicubic (the paper's)
    or bilinear.
    """
    img, wh = None, jpeg_size(data)
    if wh is None:
        img = Image.open(io.BytesIO(data))  # reads the header only
        wh = img.size
    w, h = wh
    x, y, cw, ch = random_resized_crop_box(w, h, rng, scale)
    if (img is None or img.format == "JPEG") and min(cw, ch) >= 2 * size:
        img = img or Image.open(io.BytesIO(data))
        factor = min(cw, ch) / size
        img.draft("RGB", (max(1, int(w / factor)), max(1, int(h / factor))))
        sx, sy = img.size[0] / w, img.size[1] / h
        box = (x * sx, y * sy, (x + cw) * sx, (y + ch) * sy)
        if img.mode != "RGB":
            img = img.convert("RGB")
        out = torch.from_numpy(np.asarray(img.resize((size, size), _PIL_FILTERS[interpolation], box=box)).copy())
        out = out.permute(2, 0, 1)
    else:
        out = resized_crop(decode_rgb(data), y, x, ch, cw, [size, size], InterpolationMode(interpolation),
                           antialias=True)
    if flip and rng.random() < 0.5:
        out = out.flip(-1)
    return out


_PIL_FILTERS = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR}


def normalize_batch(batch: torch.Tensor, device=None, dtype=torch.float32) -> torch.Tensor:
    """uint8 (B, 3, H, W) -> normalised float (B, 3, H, W) on the device."""
    x = batch.to(device, non_blocking=True).to(dtype)
    scale, shift = _normalization(x.device, dtype)
    return x.mul_(scale).sub_(shift)


@functools.cache
def _normalization(device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    # made once per device: a fresh tensor from a Python list every step is a host-to-device copy
    std = torch.tensor(IMAGENET_STD, dtype=dtype).view(3, 1, 1)
    mean = torch.tensor(IMAGENET_MEAN, dtype=dtype).view(3, 1, 1)
    return (1.0 / (255.0 * std)).to(device), (mean / std).to(device)


class FrameStream(IterableDataset):
    """Endless stream of augmented frames (uint8 (3, H, W) tensors), one per batch slot of the run.

    The run's data is split by *virtual rank*: each micro-batch of each process (rank r's k-th
    micro-step of an optimizer step, of `accum_steps`) is its own virtual rank, v = r * accum_steps
    + k, with `readers` (the loader's workers) readers of its own, each a `cursor.Cursor` over the
    pieces. So a run over W processes with accumulation A sees exactly the data of one over W * A
    processes, or of one process accumulating W * A micro-batches: only the global batch's make-up
    counts. Batch i of this process is micro-step k = i mod A, taken by reader j = (i div A) mod
    readers, which is the loader worker i mod readers (DataLoader takes batches from its workers in
    turn). The stream is a function of the pieces, the seed and these numbers, so it can be
    continued exactly.

    Args:
        pieces: from `resolve_pieces`.
        img_size: output side in px.
        seed: stream seed.
        rank, world_size: this process among the run's.
        shuffle_buffer: samples mixed across pieces before they are emitted.
        batch_size, accum_steps: images per micro-batch, micro-batches per optimizer step.
        resume: a `ResumableBatches.state_dict()` of the same layout: where every reader continues.
        interpolation: how crops are resized (`augment`).
    """

    def __init__(self, pieces: list[Piece], img_size: int, seed: int = 0, rank: int = 0, world_size: int = 1,
                 shuffle_buffer: int = 1000, scale=(0.2, 1.0), resume: dict | None = None, batch_size: int = 1,
                 accum_steps: int = 1, interpolation: str = INTERPOLATION):
        if not pieces:
            raise DataError("no input pieces")
        self.pieces, self.img_size, self.seed = pieces, img_size, seed
        self.rank, self.world_size = rank, world_size
        self.shuffle_buffer, self.scale, self.interpolation = shuffle_buffer, scale, interpolation
        self.batch_size, self.accum_steps = batch_size, accum_steps
        self.resume = resume
        self.start = resume["batches"] if resume else 0  # batches this process took before

    def layout(self, readers: int) -> dict:
        """What a saved position depends on, beside the input: a resume with another layout starts afresh."""
        return {"world_size": self.world_size, "accum_steps": self.accum_steps, "workers": readers,
                "shuffle_buffer": self.shuffle_buffer, "batch_size": self.batch_size}

    def place(self, i: int, readers: int) -> tuple[int, int]:
        """(micro-step, reader) of this process's batch i."""
        return i % self.accum_steps, (i // self.accum_steps) % readers

    def cursor(self, k: int, j: int, readers: int) -> Cursor:
        """Reader j of this process's k-th virtual rank, at the resumed position."""
        v = self.rank * self.accum_steps + k
        c = Cursor(self.pieces, self.seed, v * readers + j, self.world_size * self.accum_steps * readers,
                   self.shuffle_buffer)
        if self.resume:
            c.load_state_dict(self.resume["readers"][f"{k}/{j}"])
        return c

    def __iter__(self):
        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info else (0, 1)
        reader = _Reader(self.pieces)
        streams: dict[tuple[int, int], Iterator] = {}
        for t in itertools.count():
            i = self.start + wid + t * nw  # the loader's batch this worker makes next
            k, j = self.place(i, nw)
            if (k, j) not in streams:
                streams[(k, j)] = self._frames(self.cursor(k, j, nw), reader)
            for _ in range(self.batch_size):
                yield next(streams[(k, j)])

    def _frames(self, cursor: Cursor, reader: _Reader) -> Iterator[torch.Tensor]:
        held: dict[Sample, list] = {}  # the buffer's images: sample -> [bytes, copies in the buffer]

        def hold(sample: Sample) -> None:
            if sample in held:  # a small input can hold one sample twice (two epochs in the buffer)
                held[sample][1] += 1
            else:
                held[sample] = [reader.read(sample), 1]

        for sample in cursor.buffer:  # a resumed stream's buffer
            hold(sample)
        while True:
            rng = cursor.augment_rng()
            sample = cursor.next(hold)
            entry = held[sample]
            entry[1] -= 1
            if not entry[1]:
                del held[sample]
            yield augment(entry[0], self.img_size, rng, self.scale, interpolation=self.interpolation)


class _Reader:
    """Image bytes of one sample, by seeking in its shard (the shards' indexes memory-mapped, a
    few shards kept open)."""

    def __init__(self, pieces: list[Piece], open_files: int = 4):
        self.pieces, self.open_files = pieces, open_files
        self.index: dict = {}
        self.files: dict = {}

    def read(self, sample: Sample) -> bytes:
        shard = self.pieces[sample[0]].shard
        index = self.index.get(shard)
        if index is None:
            index = self.index[shard] = load_index(shard)
        f = self.files.get(shard)
        if f is None:
            if len(self.files) >= self.open_files:
                self.files.pop(next(iter(self.files))).close()
            f = self.files[shard] = open(shard, "rb")
        off, size = index[sample[1]].tolist()
        f.seek(off)
        return f.read(size)


def collate_uint8(samples: list[torch.Tensor]) -> torch.Tensor:
    return torch.stack(samples)


def make_loader(stream: FrameStream, batch_size: int, workers: int = 2, pin_memory: bool = False
                ) -> ResumableBatches:
    """Batches of the stream, from `workers` processes, with their position for a checkpoint."""
    # its own generator: making the loader's iterator must not draw from the global RNG, which a
    # resumed run restores to the saved step's state (it draws the MAE's masks)
    stream.batch_size = batch_size  # the stream switches readers batch by batch, as the loader cuts them
    loader = torch.utils.data.DataLoader(stream, batch_size=batch_size, num_workers=workers,
                                         collate_fn=collate_uint8, pin_memory=pin_memory,
                                         persistent_workers=workers > 0, prefetch_factor=4 if workers > 0 else None,
                                         generator=torch.Generator().manual_seed(stream.seed))
    return ResumableBatches(loader, stream)
