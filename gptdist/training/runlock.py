"""A run owns its run.out_dir while it trains, so that a second run into the same folder stops at once.

Rank 0 takes an advisory lock (flock) on `run.out_dir/.lock` before anything is written, and
writes who holds it there. The kernel drops the lock when the process ends, however it ends:
a lock can never outlive its run. What a killed run leaves is the text in the file, so a run
that finds the file unlocked but not empty takes it over and says whose it was. On release
the file is emptied, not deleted: a deleted file could be locked by two later runs at once
(one holding the old file, one a new one).
"""

import contextlib
import fcntl
import json
import os
import socket
import time
from pathlib import Path

from .. import distributed
from ..distributed import print0
from ..errors import UserError

LOCK_FILE = ".lock"


def _holder(text: str) -> str:
    try:
        who = json.loads(text)
        return f"process {who['pid']} on {who['host']}, started {who['started']}"
    except (ValueError, KeyError, TypeError):
        return "a process that left no record"


def unwritable(out_dir: Path, err: OSError, which: str = "") -> UserError:
    """The one line for a run.out_dir this run cannot write in (`which`: the file, where it matters)."""
    return UserError(f"cannot write in run.out_dir {out_dir}: {err.strerror or err}{which}; "
                     "choose a run.out_dir this user can write to")


def acquire(out_dir: Path):
    """Lock `out_dir` for this process; returns the open lock file (keep it open to hold the lock)."""
    path = out_dir / LOCK_FILE
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        file = open(path, "a+")
    except OSError as err:
        raise unwritable(out_dir, err) from None
    try:
        fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        file.seek(0)
        holder = _holder(file.read())
        file.close()
        raise UserError(f"run.out_dir {out_dir} is in use by another training ({holder}); "
                        "wait for it to end or choose another run.out_dir") from None
    file.seek(0)
    left = file.read()
    if left:
        print0(f"taking over {path}: the run that held it ({_holder(left)}) ended without releasing it")
    file.seek(0)
    file.truncate()
    file.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                           "started": time.strftime("%Y-%m-%d %H:%M:%S")}) + "\n")
    file.flush()
    probe = out_dir / f".write-test-{os.getpid()}"
    # a folder whose files are writable may still refuse new ones (checkpoints, plots): fail now, not later
    try:
        probe.touch()
        probe.unlink()
    except OSError as err:
        release(file)
        raise unwritable(out_dir, err) from None
    return file


def release(file) -> None:
    file.seek(0)
    file.truncate()
    file.flush()
    fcntl.flock(file, fcntl.LOCK_UN)
    file.close()


@contextlib.contextmanager
def owning(out_dir: str | Path, ctx: distributed.Dist):
    """Hold run.out_dir for the duration (rank 0 locks; every rank stops if it cannot)."""
    file, failure = None, None
    if ctx.is_main:
        try:
            file = acquire(Path(out_dir))
        except UserError as err:
            failure = err
    distributed.raise_together(failure, ctx)
    try:
        yield
    finally:
        if file is not None:
            release(file)
