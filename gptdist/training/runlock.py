"""A run owns its run.out_dir while it trains, so that a second run into the same folder stops at once.

Rank 0 takes an advisory lock (flock) on `run.out_dir/.lock` before anything is written, and
writes who holds it there. The kernel drops the lock when the process ends, however it ends:
a lock can never outlive its run. What a killed run leaves is the text in the file, so a run
that finds the file unlocked but not empty takes it over and says whose it was. On release
the file is emptied, not deleted: a deleted file could be locked by two later runs at once
(one holding the old file, one a new one).

The lock file also marks the folder as a run's. A folder without one that holds a file a run
writes (config.yaml, metrics.jsonl, loss.png, checkpoints/) is not trained into: the run would
write over it. A `.lock` holding text no run wrote is not taken over either.
"""

import contextlib
import fcntl
import json
import os
import shutil
import socket
import tempfile
import time
from pathlib import Path

from .. import config, distributed
from ..config import Config
from ..distributed import print0
from ..errors import UserError
from ..files.replace import check_apart

LOCK_FILE = ".lock"
RUN_FILES = ("config.yaml", "metrics.jsonl", "loss.png", "checkpoints")  # what a run writes in run.out_dir


def _holder(text: str) -> str | None:
    """Who a lock file's record names, or None when the text is not a run's record."""
    try:
        who = json.loads(text)
        return f"process {who['pid']} on {who['host']}, started {who['started']}"
    except (ValueError, KeyError, TypeError):
        return None


def check_a_runs_folder(out_dir: Path) -> None:
    """Refuse a folder that is not a run's (no lock file) but holds what a run would write over."""
    if not out_dir.is_dir() or (out_dir / LOCK_FILE).exists():
        return
    taken = [name for name in RUN_FILES if (out_dir / name).exists() or (out_dir / name).is_symlink()]
    if taken:
        raise UserError(f"run.out_dir {out_dir} holds {taken[0]} but is not a gptdist run's folder (it has "
                        f"no {LOCK_FILE}): training would write over it; choose a new or empty run.out_dir")


def unwritable(out_dir: Path, err: OSError, which: str = "") -> UserError:
    """The one line for a run.out_dir this run cannot write in (`which`: the file, where it matters)."""
    return UserError(f"cannot write in run.out_dir {out_dir}: {err.strerror or err}{which}; "
                     "choose a run.out_dir this user can write to")


def check_apart_from_inputs(cfg: Config) -> None:
    """run.out_dir is never one of the run's INPUT paths (config.py declares them), inside one or holding
    one. A checkpoint.resume in run.out_dir's own checkpoints is that run going on (checkpoint/resume.py
    refuses it where later checkpoints follow); a path that does not exist is not written over."""
    own = (Path(cfg.run.out_dir) / "checkpoints").resolve()
    inputs = [(key, path) for key, path in config.path_keys(cfg, config.INPUT) if Path(path).exists()
              and not (key == "checkpoint.resume" and Path(path).resolve().parent == own)]
    check_apart(Path(cfg.run.out_dir), inputs, "run.out_dir")


def acquire(out_dir: Path):
    """Lock `out_dir` for this process; returns the open lock file (keep it open to hold the lock)."""
    path = out_dir / LOCK_FILE
    check_a_runs_folder(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        file = open(path, "a+")
    except OSError as err:
        raise unwritable(out_dir, err) from None
    try:
        fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        file.seek(0)
        holder = _holder(file.read()) or "a process that left no record"
        file.close()
        raise UserError(f"run.out_dir {out_dir} is in use by another training ({holder}); "
                        "wait for it to end or choose another run.out_dir") from None
    file.seek(0)
    left = file.read()
    if left and _holder(left) is None:
        file.close()
        raise UserError(f"{path} holds text that no gptdist run wrote; it is kept: move it away, or choose "
                        "another run.out_dir")
    if left:
        print0(f"taking over {path}: the run that held it ({_holder(left)}) ended without releasing it")
    file.seek(0)
    file.truncate()
    file.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                           "started": time.strftime("%Y-%m-%d %H:%M:%S")}) + "\n")
    file.flush()
    # a folder whose files are writable may still refuse new ones (checkpoints, plots): fail now, not
    # later, with a probe file of a name no other file has (mkstemp creates it anew)
    try:
        descriptor, probe = tempfile.mkstemp(prefix=".write-test-", dir=out_dir)
        os.close(descriptor)
        os.unlink(probe)
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
    """Hold run.out_dir for the duration (rank 0 locks; every rank stops if it cannot). A folder the run
    made is removed again if the run stops before writing anything but its lock: a run that failed at
    its start leaves nothing behind."""
    out_dir = Path(out_dir)
    made = ctx.is_main and not out_dir.exists()
    file = distributed.on_rank0(lambda: acquire(out_dir), ctx)
    try:
        yield
    except BaseException:
        if file is not None:
            release(file)
            file = None
            if made and [entry.name for entry in out_dir.iterdir()] == [LOCK_FILE]:
                shutil.rmtree(out_dir)
        raise
    finally:
        if file is not None:
            release(file)
