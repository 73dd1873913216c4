"""The checkpointer: a loop over named states, saved in the background while training goes on.

Every stateful piece (model, optimizer, scaler, schedule, sampler, progress, RNG, tracking)
has state_dict()/load_state_dict(), and a checkpoint holds one entry per name (store.py).
With checkpoint.sharded the model and optimizer go into a torch.distributed.checkpoint folder
instead, every rank writing its shards (sharded.py), and the rest beside them.

A save stops training only to copy the state into host memory (snapshot.py); rank 0 then
digests, serialises, writes, syncs, renames and prunes in a background thread while
training goes on. Only the ranks that write take a copy: under ddp rank 0 alone (the others'
state is the same), under checkpoint.sharded every rank its own shards. One write is in
flight at most: the next save waits for it, and says so once. A write that fails is
reported at the next step boundary (`poll`) or save (`wait`) and stops the run.
"""

import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch.distributed as dist

from .. import distributed
from ..files.replace import remove_own
from . import sharded, store
from .snapshot import HostSnapshot


class Stateful(Protocol):
    def state_dict(self) -> dict: ...
    def load_state_dict(self, state: dict) -> None: ...


@dataclass
class Saved:
    """A checkpoint on disk, and what it cost: training stopped for stall_s, of which waited_s waiting for the
    previous write and snapshot_s copying the state to host memory; the background took write_s."""

    step: int
    path: Path
    bytes: int
    stall_s: float
    write_s: float
    snapshot_s: float = 0.0
    waited_s: float = 0.0


class Checkpointer:
    def __init__(self, folder: Path, keep: int, ctx: distributed.Dist, background: bool = True,
                 sharded: bool = False, interval: int | None = None):
        self.folder, self.keep, self.ctx, self.background = Path(folder), keep, ctx, background
        self.sharded = sharded and ctx.enabled  # alone, a sharded checkpoint is the whole state: one file
        self.interval = interval  # checkpoint.interval, named when saves outpace writes
        # Under checkpoint.sharded every rank writes, in a thread of its own whose collectives need
        # a group of their own: two threads taking turns on one group would mismatch their calls.
        self.group = dist.new_group(backend="gloo") if self.sharded else None
        writes = ctx.is_main or self.sharded
        self.writer = ThreadPoolExecutor(1, thread_name_prefix="gptdist-checkpoint") if writes else None
        # host buffers on the ranks that write, and nowhere else
        self.snapshot = HostSnapshot(ctx.device) if writes else None
        self.in_flight: tuple[Future, Saved] | None = None  # the write and its row, bytes and write_s to come
        self.outpaced = False  # whether a save has waited for the previous write yet
        # a killed run's half-written file or folder: never a checkpoint (only what a save writes goes)
        if ctx.is_main and self.folder.is_dir():
            for stale in self.folder.glob(store.temporary(self.folder / "step_*").name):
                remove_own(stale, store.CHECKPOINT)

    def save(self, step: int, states: dict[str, Stateful], config: dict, summary: dict) -> Saved | None:
        """Called on every rank at the same step boundary (states may gather from all ranks).

        Returns once training may go on: with background writes, after the snapshot (None);
        otherwise once the checkpoint is durable (what `wait` returns). `summary` adds plain
        top-level values for readers (step, epoch, tokens_seen).
        """
        start = time.perf_counter()
        outpaced = self.in_flight is not None and not self.in_flight[0].done()
        finished = self.wait()  # the snapshot's buffers are the previous write's
        waited_s = time.perf_counter() - start
        if outpaced:
            self._say_outpaced(waited_s)
        # every rank takes part in the state dicts (they may gather); the ranks that write copy them
        state_dicts = self._state_dicts(states)
        if self.writer is not None:  # every rank under checkpoint.sharded, else rank 0 alone
            copying = time.perf_counter()
            staged = self.snapshot.take(state_dicts)
            if self.ctx.is_main:
                staged["small"].update(summary, format=store.FORMAT, config=config)
            if self.sharded:
                path = self.folder / f"step_{step:08d}"
                write = self.writer.submit(store.write_sharded, staged["shards"], staged["small"], path,
                                           self.keep, self.group)
            else:
                path = self.folder / f"step_{step:08d}.pt"
                write = self.writer.submit(store.write, staged["small"], path, self.keep)
            self.in_flight = (write, Saved(step, path, bytes=0, stall_s=round(time.perf_counter() - start, 4),
                                           write_s=0.0, snapshot_s=round(time.perf_counter() - copying, 4),
                                           waited_s=round(waited_s, 4)))
        if self.background:
            return finished
        saved = self.wait()
        if saved is not None:  # all of it stopped training
            saved.stall_s = round(time.perf_counter() - start, 4)
        return saved

    def reserve(self, states: dict[str, Stateful]) -> None:
        """Every rank, before the first save is due (after the first step, when the optimizer's state
        exists): on CUDA, the snapshot's pinned buffers allocated now (pinning is slow), so that the
        first save only copies. On a CPU an allocation costs nothing until it is written: no work here."""
        if self.ctx.device.type != "cuda":
            return
        state_dicts = self._state_dicts(states)
        if self.snapshot is not None:
            self.snapshot.reserve(state_dicts)

    def _state_dicts(self, states: dict[str, Stateful]) -> dict:
        shards = {name: states[name].sharded_state_dict() for name in sharded.SHARDED_STATES
                  } if self.sharded else {}
        return {"shards": shards,
                "small": {name: state.state_dict() for name, state in states.items() if name not in shards}}

    def _say_outpaced(self, waited_s: float) -> None:
        if not self.outpaced:
            self.outpaced = True
            every = f" (checkpoint.interval {self.interval})" if self.interval else ""
            distributed.print0(f"a save waited {waited_s:.2f} s for the previous write to finish: saves come "
                               f"faster than writes{every}; a longer checkpoint.interval keeps training from "
                               "waiting")

    def newest(self) -> Path | None:
        """The newest checkpoint on disk, if any."""
        paths = store.checkpoint_paths(self.folder)
        return paths[-1] if paths else None

    def poll(self) -> Saved | None:
        """Every rank that writes, at any step boundary: the write that finished since, if any (raises its
        failure)."""
        if self.in_flight is None or not self.in_flight[0].done():
            return None
        return self._finish()

    def wait(self) -> Saved | None:
        """Every rank: wait for the write in flight; if it failed, every rank stops (the failing one with its
        error)."""
        return distributed.stop_together(self._finish, self.ctx, runs_here=self.in_flight is not None)

    def _finish(self) -> Saved:
        write, saved = self.in_flight
        self.in_flight = None
        saved.bytes, saved.write_s = write.result()
        saved.write_s = round(saved.write_s, 4)
        return saved

    def close(self) -> Saved | None:
        """On any exit, on this rank alone: the write in flight completes (or reports why not)."""
        try:
            return self._finish() if self.in_flight is not None else None
        finally:
            if self.writer is not None:
                self.writer.shutdown()

    @staticmethod
    def restore(payload: dict, states: dict[str, Stateful]) -> None:
        """Every rank: load the checkpoint `resume.resume_payload` gave into `states`. A sharded one's shards
        come from its folder (each rank reads its own); a file's model and optimizer are rank 0's alone,
        which the states broadcast to the others as they load."""
        if payload.get("sharded"):
            sharded.load(Path(payload["sharded"]), states)
        for name, state in states.items():
            if name in payload:  # of a sharded checkpoint: all but the model and optimizer
                state.load_state_dict(payload[name])
            elif name in sharded.SHARDED_STATES and not payload.get("sharded"):
                state.load_state_dict({})  # a rank other than 0: receives rank 0's
