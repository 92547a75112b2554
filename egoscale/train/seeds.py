"""How one run's seed becomes the seeds of its parts, each rule written once.

A run has one `--seed`; its processes, its virtual ranks' mask generators and its data stream each
need a seed of their own that no other part of this run, and no part of a run with another seed,
shares. Each rule multiplies the run's seed by a prime larger than any count it adds (ranks, steps),
so two different (seed, part) pairs never give one number: seed s, rank r and seed s', rank r'
collide only if (s - s') x 7919 = r' - r, impossible with fewer than 7919 ranks.
"""

from __future__ import annotations

RANK_STRIDE = 7919  # > any number of processes or virtual ranks
RESUME_STRIDE = 104729  # > any number of steps a run takes between two resumes on another layout
DATA_STRIDE = 1_000_003  # > any step count: a stream restarted at `data_seed + step` stays this seed's


def rank_seed(seed: int, rank: int) -> int:
    """torch's global RNG in process `rank` (dropout, drop-path), and, with the virtual rank in
    place of the process rank, that virtual rank's mask generator."""
    return seed * RANK_STRIDE + rank


def relayout_seed(seed: int, rank: int, step: int) -> int:
    """torch's global RNG of process `rank` in a run resumed at `step` on another number of
    processes, whose saved RNG states do not map onto the new ranks: fresh, but deterministic."""
    return seed * RANK_STRIDE + rank * RESUME_STRIDE + step


def data_seed(seed: int) -> int:
    """The frame stream's seed (a stream that cannot continue from its checkpoint restarts at this
    plus the step)."""
    return seed * DATA_STRIDE
