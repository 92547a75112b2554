"""A run folder has one owner and one identity.

- **One owner.** A stage that writes a folder (pretrain, finetune, probe, sweep) holds an
  exclusive lock on `FOLDER/.egoscale.lock` while it runs. A second process started on the
  same folder gets one line naming the holder (pid, host, since when) instead of becoming a
  second writer. The lock is an OS file lock (`flock`), so a process that dies, even by
  SIGKILL, releases it: a killed run never blocks the next one.
- **One identity.** A folder's `config.json` records the settings it was made with. Resuming
  with settings that change the model or the data (the stage's *identity* keys) is refused
  with one line naming each differing setting, old and new, and how to start over; settings
  that may change on resume (length, workers, intervals) are accepted, and each change is
  appended to `FOLDER/resumes.jsonl`.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from egoscale.errors import ConfigError
from egoscale.fileio import append_jsonl

LOCK = ".egoscale.lock"
CONFIG = "config.json"


class FolderLock:
    """Exclusive ownership of a run folder while the `with` block runs (see the module docstring)."""

    def __init__(self, folder: str | os.PathLike, what: str):
        self.folder, self.what, self._fd = Path(folder), what, None

    def __enter__(self) -> FolderLock:
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / LOCK
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder["since"])) if "since" in holder else "?"
            raise ConfigError(f"{self.folder}: in use by another {holder.get('what', 'egoscale')} process "
                              f"(pid {holder.get('pid', '?')} on {holder.get('host', '?')}, since {since}); "
                              "wait for it to finish or stop it, or write to another --out") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": time.time(),
                                  "what": self.what}).encode(), 0)
        self._fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing releases the flock; the file stays (harmless, reused)
            self._fd = None


def _read_holder(fd: int) -> dict:
    try:
        return json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    except (OSError, ValueError):
        return {}


def _same(a, b) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return float(a) == float(b)
    return a == b


def differences(old: dict, new: dict, keys: Iterable[str]) -> dict[str, tuple]:
    """{key: (old, new)} for the keys whose values differ (a key absent from `old` is not compared)."""
    return {k: (old.get(k), new.get(k)) for k in keys if k in old and not _same(old.get(k), new.get(k))}


def describe_differences(diff: dict[str, tuple]) -> str:
    """`key old -> new; ...` for the result of `differences`."""
    return "; ".join(f"{k.replace('_', '-')} {o!r} -> {n!r}" for k, (o, n) in diff.items())


def check_identity(folder: str | os.PathLike, new: dict, identity: Iterable[str], what: str,
                   resume: str = "auto", has_state: bool = True) -> dict[str, tuple]:
    """Compare a folder's recorded config with the one asked for, before anything is written.

    Raises ConfigError naming every differing identity setting; returns the other settings
    that changed (recorded by `record_config`). A folder without `config.json`, or without
    state to resume from (`has_state` False), or `resume="none"`, accepts anything.
    """
    path = Path(folder) / CONFIG
    if resume == "none" or not has_state or not path.is_file():
        return {}
    try:
        old = json.loads(path.read_text())
    except ValueError:
        raise ConfigError(f"{path}: not valid JSON; move the folder aside or use another --out") from None
    bad = differences(old, new, identity)
    if bad:
        listed = describe_differences(bad)
        raise ConfigError(f"{folder}: holds a {what} made with other settings ({listed}); resuming would mix "
                          f"them. Start over in another folder (--out NEW, or --resume none there), or repeat "
                          f"the folder's settings (its {CONFIG})")
    return differences(old, new, [k for k in new if k not in set(identity)])


# a stage's name, as its lock and its refusals call its folder
_STAGE_RUNS = {"pretrain": "pretraining run", "finetune": "finetuning run", "probe": "probe"}


@contextlib.contextmanager
def stage_folder(folder: str | os.PathLike, stage: str, record: dict, identity: Iterable[str], *,
                 has_state: bool, resume: str = "auto", lock: bool = True) -> Iterator[dict[str, tuple]]:
    """A stage's hold on its folder for the `with` block, the same for pretraining, finetuning and
    probing: the lock (taken by the process that writes the folder: `lock`), then the refusal of a
    folder made with other identity settings. Yields the other settings that changed, for
    `record_config` once the stage's state has loaded."""
    with FolderLock(folder, stage) if lock else contextlib.nullcontext():
        yield check_identity(folder, record, identity, _STAGE_RUNS[stage], resume, has_state)


def record_config(folder: str | os.PathLike, config: dict, changed: dict[str, tuple]) -> None:
    """Write the folder's config.json; a resumed run's changed settings go to resumes.jsonl."""
    from egoscale.fileio import write_json_atomic

    folder = Path(folder)
    if changed:
        append_jsonl(folder / "resumes.jsonl", {"time": time.time(), "changed": {k: list(v) for k, v in
                                                                                  changed.items()}})
    write_json_atomic(folder / CONFIG, config)
