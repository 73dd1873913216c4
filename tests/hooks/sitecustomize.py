"""Imported at start-up by every Python process a test runs with this folder on PYTHONPATH: faults and holds
made from outside gptdist, through Python's audit hooks (nothing in gptdist knows of them). Nothing happens
where their variables are unset.

Unreadable files: a rank (RANK, as torchrun sets it) listed in GPTDIST_TESTS_UNREADABLE_RANKS cannot open
any file under the folder GPTDIST_TESTS_UNREADABLE, as if that folder's permissions kept it out; every rank
appends what it opened there to GPTDIST_TESTS_OPENED/rank-N.

Held checkpoint writes: with GPTDIST_TESTS_GATE a folder, a checkpoint's rename into place (`step_N.pt`,
written whole beside its name first) waits until the test releases it: the process marks `GATE/NAME.held`,
then `GATE/NAME.awaited` once its training thread waits for that write (the next save came first), and
goes on when `GATE/NAME` or `GATE/all` exists. "Killed during a write" and "a save that waits for the
previous write" become certain.
"""

import os
import re
import sys
import threading
import time

UNREADABLE = os.environ.get("GPTDIST_TESTS_UNREADABLE")
GATE = os.environ.get("GPTDIST_TESTS_GATE")
CHECKPOINT_NAME = re.compile(r"^step_\d{8}(\.pt)?$")
CHECKPOINTER = os.path.join("gptdist", "checkpoint", "checkpointer.py")


def _refuse_reading(folder: str, forbidden: bool, log_path: str):
    def hook(event: str, args: tuple) -> None:
        if event != "open" or not isinstance(args[0], (str, bytes, os.PathLike)):
            return
        path = os.path.realpath(os.fsdecode(args[0]))
        if path.startswith(folder + os.sep):
            with open(log_path, "a") as log:  # outside the folder: never refused
                log.write(path + "\n")
            if forbidden:
                raise PermissionError(13, "Permission denied", path)

    return hook


def _training_thread_waits_for_a_write() -> bool:
    """Whether the main thread is in the checkpointer's wait for the write in flight, called by a save."""
    frame = sys._current_frames().get(threading.main_thread().ident)
    while frame is not None:
        code = frame.f_code
        if code.co_name == "wait" and code.co_filename.endswith(CHECKPOINTER):
            return frame.f_back is not None and frame.f_back.f_code.co_name == "save"
        frame = frame.f_back
    return False


def _hold_checkpoint_renames(gate: str):
    def mark(name: str) -> None:
        with open(os.path.join(gate, name), "w"):
            pass

    def hook(event: str, args: tuple) -> None:
        if event != "os.rename" or not isinstance(args[1], (str, bytes, os.PathLike)):
            return
        name = os.path.basename(os.fsdecode(args[1]))
        if not CHECKPOINT_NAME.match(name):
            return
        mark(f"{name}.held")
        awaited = False
        while not (os.path.exists(os.path.join(gate, name)) or os.path.exists(os.path.join(gate, "all"))):
            if not awaited and _training_thread_waits_for_a_write():
                awaited = True
                mark(f"{name}.awaited")
            time.sleep(0.01)

    return hook


if UNREADABLE:
    rank = os.environ.get("RANK", "0")
    sys.addaudithook(_refuse_reading(
        os.path.realpath(UNREADABLE), rank in os.environ.get("GPTDIST_TESTS_UNREADABLE_RANKS", "").split(","),
        os.path.join(os.environ["GPTDIST_TESTS_OPENED"], f"rank-{rank}")))
if GATE:
    sys.addaudithook(_hold_checkpoint_renames(GATE))
