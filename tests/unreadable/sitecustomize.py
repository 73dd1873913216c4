"""Imported at start-up by every Python process a test runs with this folder on PYTHONPATH.

A rank (RANK, as torchrun sets it) listed in GPTDIST_TEST_UNREADABLE_RANKS cannot open any file under
the folder GPTDIST_TEST_UNREADABLE, as if that folder's permissions kept it out; every rank appends
what it opened there to GPTDIST_TEST_OPENED/rank-N. Nothing happens where the variables are unset.
"""

import os
import sys

FOLDER = os.environ.get("GPTDIST_TEST_UNREADABLE")

if FOLDER:
    FOLDER = os.path.realpath(FOLDER)
    RANK = os.environ.get("RANK", "0")
    FORBIDDEN = RANK in os.environ.get("GPTDIST_TEST_UNREADABLE_RANKS", "").split(",")
    LOG = os.path.join(os.environ["GPTDIST_TEST_OPENED"], f"rank-{RANK}")

    def refuse_reading(event: str, args: tuple) -> None:
        if event != "open" or not isinstance(args[0], (str, bytes, os.PathLike)):
            return
        path = os.path.realpath(os.fsdecode(args[0]))
        if path.startswith(FOLDER + os.sep):
            with open(LOG, "a") as log:  # outside FOLDER: never refused
                log.write(path + "\n")
            if FORBIDDEN:
                raise PermissionError(13, "Permission denied", path)

    sys.addaudithook(refuse_reading)
