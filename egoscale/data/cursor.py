"""Where a reader is in its stream of frames, in sample numbers only: what lets a pretraining run
resume to exactly the run that was never stopped.

Each reader (one of a virtual rank's readers, served by one loader worker: `FrameStream`) walks
its own pieces epoch after epoch, pushes every sample into a shuffle buffer and, once the buffer
is full, emits one of them at random. That walk depends only on the pieces, the seed and the
reader's number, so a `Cursor` holds all of it: the epoch, the piece and the sample within it, the
buffer (as sample numbers) and the shuffle RNG. The worker's cursors read images as they go; the
training process keeps a twin of every reader's cursor that it advances without reading anything
(`ResumableBatches`), so that a checkpoint holds each reader's exact position at the step it was
saved.

The augmentation of the k-th sample a reader emits draws from its own RNG, seeded by (seed,
reader, k): how many numbers a crop draws depends on the image's size, which the twins never see.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator

import torch

from egoscale.errors import DataError

Sample = tuple[int, int]  # (piece number in the input's list of pieces, sample number within its shard)


class Cursor:
    """The sample stream of reader `unit` of `units` over `pieces` (each with a concrete end)."""

    def __init__(self, pieces: list, seed: int, unit: int, units: int, shuffle_buffer: int):
        if not pieces:
            raise DataError("no input pieces")
        self.pieces, self.seed, self.unit, self.units = pieces, seed, unit, units
        self.epoch, self.pos, self.off, self.emitted = 0, 0, 0, 0
        self.cap = shuffle_buffer
        self.buffer: list[Sample] = []
        self.rng = random.Random(f"{seed}-{unit}-shuffle")  # str seeds are hashed stably
        self._mine: tuple[int, list[int]] | None = None

    def _my_pieces(self) -> list[int]:
        """This reader's pieces in this epoch: its share of a seeded permutation of all of them."""
        if self._mine is None or self._mine[0] != self.epoch:
            order = list(range(len(self.pieces)))
            random.Random(f"{self.seed}-{self.epoch}-order").shuffle(order)
            n = max(len(order), self.units)  # fewer pieces than readers: pieces are shared round-robin
            self._mine = (self.epoch, [order[j % len(order)] for j in range(self.unit, n, self.units)])
        return self._mine[1]

    def next(self, on_push: Callable[[Sample], None] | None = None) -> Sample:
        """The next sample to emit; `on_push(sample)` is told of every sample entering the buffer."""
        while len(self.buffer) <= self.cap:
            mine = self._my_pieces()
            if self.pos == len(mine):
                self.epoch, self.pos, self.off = self.epoch + 1, 0, 0
                if self.epoch == 1:
                    if not self.buffer:
                        raise DataError("the input holds no images")
                    if len(self.buffer) <= self.cap:
                        # the input is smaller than the buffer: keep half in it so that the stream flows
                        self.cap = len(self.buffer) // 2
                continue
            piece = self.pieces[mine[self.pos]]
            if piece.start + self.off >= piece.end:
                self.pos, self.off = self.pos + 1, 0
                continue
            sample = (mine[self.pos], piece.start + self.off)
            self.off += 1
            self.buffer.append(sample)
            if on_push is not None:
                on_push(sample)
        j = self.rng.randrange(len(self.buffer))
        self.buffer[j], self.buffer[-1] = self.buffer[-1], self.buffer[j]
        self.emitted += 1
        return self.buffer.pop()

    def skip(self, n: int) -> None:
        for _ in range(n):
            self.next()

    def augment_rng(self) -> random.Random:
        """The RNG for the augmentation of the sample `next` returns next."""
        return random.Random(f"{self.seed}-{self.unit}-{self.emitted}")

    def state_dict(self) -> dict:
        version, internal, gauss = self.rng.getstate()
        return {"epoch": self.epoch, "pos": self.pos, "off": self.off, "cap": self.cap, "emitted": self.emitted,
                "buffer": torch.tensor(self.buffer, dtype=torch.int64).reshape(-1, 2),
                "rng": list(internal), "rng_gauss": gauss}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.pos, self.off = state["epoch"], state["pos"], state["off"]
        self.cap, self.emitted = state["cap"], state["emitted"]
        self.buffer = [(int(a), int(b)) for a, b in state["buffer"].tolist()]
        self.rng.setstate((3, tuple(state["rng"]), state["rng_gauss"]))
        self._mine = None


class ResumableBatches:
    """The loader's batches, counted, with the stream's position for a checkpoint.

    A DataLoader over an iterable dataset takes batches from its workers in turn, and the stream
    says which reader of which virtual rank made batch i (`FrameStream.place`), so the number of
    batches taken says how far each reader has gone. `state_dict` advances twin cursors, one per
    reader, to there and returns their states with what the stream needs to continue
    (`FrameStream(..., resume=state)`).
    """

    def __init__(self, loader, stream):
        self.loader, self.stream = loader, stream
        self.readers = max(1, loader.num_workers)
        self.twins = {(k, j): stream.cursor(k, j, self.readers)
                      for k in range(stream.accum_steps) for j in range(self.readers)}
        self.untaken = dict.fromkeys(self.twins, 0)  # samples taken from each reader, not yet applied to its twin
        self.taken = stream.start  # batches this process has taken, before a resume included
        self._it: Iterator | None = None
        self._peeked = None

    def layout(self) -> dict:
        return self.stream.layout(self.readers)

    def __iter__(self):
        return self

    def peek(self):
        """The next batch, which `next` then returns."""
        if self._peeked is None:
            self._peeked = self._take()
        return self._peeked

    def __next__(self):
        if self._peeked is not None:
            batch, self._peeked = self._peeked, None
            return batch
        return self._take()

    def _take(self):
        if self._it is None:
            self._it = iter(self.loader)
        batch = next(self._it)
        self.untaken[self.stream.place(self.taken, self.readers)] += len(batch)
        self.taken += 1
        return batch

    def state_dict(self) -> dict:
        for key, n in self.untaken.items():
            self.twins[key].skip(n)
        self.untaken = dict.fromkeys(self.twins, 0)
        return {**self.layout(), "seed": self.stream.seed, "batches": self.taken,
                "readers": {f"{k}/{j}": t.state_dict() for (k, j), t in self.twins.items()}}
