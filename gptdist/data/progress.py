"""A prepare that resumes: where a killed `python -m gptdist.prepare` had got to, kept beside its output.

The shards are written into `.NAME.partial` beside the output folder, and every PROGRESS_SECONDS the
point reached is recorded there (`progress.json`, written whole or not at all): the documents done, each
split's finished shards and how much of its open one is written, and the summary's counts so far. Run
again with the same arguments and inputs (their fingerprint says so), a prepare truncates the open shards
to that point, hashes what they hold again and goes on from the next document, so that its output is
byte for byte that of an uninterrupted one. Other arguments or inputs start afresh. The folder is
moved into place as the output once complete (files/replace.py).
"""

import fcntl
import hashlib
import json
import os
import time
from pathlib import Path

from ..errors import UserError

PROGRESS = "progress.json"
PROGRESS_SECONDS = 10.0  # at most this much work is done again after a kill (and every finished shard)
_HELD_LOCKS: set[int] = set()  # the descriptors this process holds a partial folder's lock by


def _drop_inherited_locks() -> None:
    """In a forked child (a tokenizer worker): close the copies of the locks' descriptors. A flock lasts
    while any copy is open, so a worker still finishing its task would keep a killed prepare's folder
    locked, and the same command run again at once would be refused."""
    for descriptor in _HELD_LOCKS:
        os.close(descriptor)
    _HELD_LOCKS.clear()


os.register_at_fork(after_in_child=_drop_inherited_locks)


def partial_folder(out: Path) -> Path:
    return out.with_name(f".{out.name}.partial")


def fingerprint(options: dict, refs) -> str:
    """What the output depends on: the options, and for files each one's path, size and modification
    time (a streamed dataset: its name and options, in `options`)."""
    files = [(str(p), *_size_and_time(p)) for p in refs] if isinstance(refs, list) else []
    text = json.dumps({"options": options, "files": files}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _size_and_time(path: Path) -> tuple[int, int]:
    status = path.stat()
    return status.st_size, status.st_mtime_ns


class PrepareProgress:
    """The progress record of one partial folder, held under an exclusive lock while a prepare writes it."""

    def __init__(self, folder: Path, key: str):
        self.folder, self.key = folder, key
        self.path = folder / PROGRESS
        self._lock = os.open(folder, os.O_RDONLY)
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock)
            raise UserError(f"another prepare is writing {folder} (the same --out) now; wait for it to end") \
                from None
        _HELD_LOCKS.add(self._lock)
        self._saved_at, self._shards = time.monotonic(), 0

    def resumable(self) -> dict | None:
        """The recorded point, if there is one that these arguments and inputs made; else None (and the
        folder emptied of what another run left)."""
        try:
            state = json.loads(self.path.read_text())
        except (OSError, ValueError):
            state = None
        if state is not None and state.get("key") == self.key:
            return state
        self.clear()  # shards of another run, or of one killed before any record
        return None

    def clear(self) -> None:
        for entry in self.folder.iterdir():
            entry.unlink()

    def due(self, shards: int) -> bool:
        """Whether to record now: PROGRESS_SECONDS since the last record, or a shard finished since (the
        shards there are, `shards`)."""
        return shards != self._shards or time.monotonic() - self._saved_at >= PROGRESS_SECONDS

    def save(self, state: dict, shards: int) -> None:
        """Record `state` (the writers flushed to disk first: the record never runs ahead of the shards)."""
        temporary = self.path.with_suffix(".tmp")
        temporary.write_text(json.dumps({"key": self.key, **state}))
        os.replace(temporary, self.path)
        self._saved_at, self._shards = time.monotonic(), shards

    def finish(self) -> None:
        """The prepare is complete: the record goes (the folder becomes the output) and the lock with it."""
        self.path.unlink(missing_ok=True)
        _HELD_LOCKS.discard(self._lock)
        os.close(self._lock)
