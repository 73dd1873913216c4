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

Bad data, a stuck read: gptdist's data loader (`StepLoader.next`) is wrapped once its module is loaded.
With GPTDIST_TESTS_STALL=R:S, rank R's read of step S's batch never returns (a file system that hangs);
with GPTDIST_TESTS_SPIKE=S, every rank's batch for step S is uniformly random tokens (a corrupt stretch
of data: its loss spikes).
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


def _step_being_made(loader) -> int:
    """The step whose batch `loader.next()` is about to read: a plain order's position says it."""
    sampler = loader.sampler
    epoch, done = sampler.epoch, sampler.position // sampler.global_batch
    if sampler.epoch_done():
        epoch, done = epoch + 1, 0
    return epoch * sampler.steps_per_epoch + done + 1


def _wrap_loader(module) -> None:
    stall, spike = os.environ.get("GPTDIST_TESTS_STALL"), os.environ.get("GPTDIST_TESTS_SPIKE")
    stall_rank, stall_step = map(int, stall.split(":")) if stall else (None, None)
    read = module.StepLoader.next

    def next_batches(self):
        step = _step_being_made(self)
        if stall_rank == int(os.environ.get("RANK", "0")) and step == stall_step:
            while True:  # the read never returns
                time.sleep(1)
        batches = read(self)
        if spike and step == int(spike):
            import torch

            generator = torch.Generator().manual_seed(step)
            batches = [torch.randint(0, 50257, b.shape, generator=generator).to(b.device) for b in batches]
        return batches

    module.StepLoader.next = next_batches


class _AfterImport:
    """A finder that lets `name` load as usual, then hands the module to `then`."""

    def __init__(self, name, then):
        self.name, self.then = name, then

    def find_spec(self, fullname, path, target=None):
        if fullname != self.name:
            return None
        import importlib.machinery

        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None:
            return None
        execute, then = spec.loader.exec_module, self.then

        def exec_module(module):
            execute(module)
            then(module)

        spec.loader.exec_module = exec_module
        return spec


def _when_imported(name, then) -> None:
    if name in sys.modules:  # a process forked from one that imported it already (tests/preloaded.py)
        then(sys.modules[name])
    else:
        sys.meta_path.insert(0, _AfterImport(name, then))


if UNREADABLE:
    rank = os.environ.get("RANK", "0")
    sys.addaudithook(_refuse_reading(
        os.path.realpath(UNREADABLE), rank in os.environ.get("GPTDIST_TESTS_UNREADABLE_RANKS", "").split(","),
        os.path.join(os.environ["GPTDIST_TESTS_OPENED"], f"rank-{rank}")))
if GATE:
    sys.addaudithook(_hold_checkpoint_renames(GATE))
if os.environ.get("GPTDIST_TESTS_STALL") or os.environ.get("GPTDIST_TESTS_SPIKE"):
    _when_imported("gptdist.data.loader", _wrap_loader)
