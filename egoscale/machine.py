"""What this process may run on."""

from __future__ import annotations

import os


def usable_cores() -> int:
    """The cores this process may run on: its CPU affinity (`taskset`, a SLURM or container CPU
    set), not the machine's count, which would put two workers' threads on one allowed core."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # no affinity call on this platform (macOS)
        return os.cpu_count() or 1
