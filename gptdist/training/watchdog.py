"""Each rank's watchdog: a thread that knows which phase its rank is in and since when (phases.py), and
turns a phase that lasts too long into a named hang and a restart.

Every second it writes a heartbeat (its phase, step, time in phase, host, pid and a count) to the
rendezvous store, a channel apart from the process groups, so that a collective that never ends
cannot silence it. When its rank's phase passes its limit (`Phases.limit`), it declares a hang in the
store; the first rank to do so reports it. Every rank that can still act writes the Python stacks of
all its threads (and NCCL's flight recorder on CUDA) to RUN/hangs/step_S/rank_R.txt; the reporter
compares the heartbeats twice, a few seconds apart, and names the culprit in one line: a rank whose
watchdog stopped answering (a frozen or dead process: the others can still say it is missing), else
the rank furthest behind (in an earlier step, or an earlier phase of it: the one that did not reach
the collective the others wait in). A silent rank on this host is killed, so that the restart need
not wait for it. Then every rank exits with HANG_EXIT: `torchrun --max-restarts` restarts the group,
which resumes from the newest checkpoint; one that fails the same way again and again stops
(attempts.py).

`kill -USR2` to a rank writes its stacks to RUN/stacks/ and the run goes on: the signal wakes this
thread (signal.set_wakeup_fd), even while the training thread is inside a collective that would hold
off a Python handler.

The watchdog reads the phase the training thread sets, and nothing else of it.
"""

import json
import os
import select
import signal
import socket
import sys
import threading
import time
import traceback
from datetime import timedelta
from pathlib import Path

import torch

from ..distributed import Dist
from ..errors import exit_now
from . import attempts
from .phases import STEP_PHASES, Phases

HANG_EXIT = 75  # a hang was named: restart (torchrun --max-restarts) and resume
BEAT_S = 1.0  # between heartbeats, and between looks at the phase
WATCH_S = 3.0  # the reporter's wait between its two readings of the heartbeats
STACKS_WAIT_S = 10.0  # how long the reporter waits for the other ranks' stacks


def _stacks_text(header: str) -> str:
    names = {thread.ident: thread.name for thread in threading.enumerate()}
    parts = [header]
    for ident, frame in sys._current_frames().items():
        parts.append(f"\nThread {names.get(ident, ident)} (most recent call last):\n")
        parts.extend(traceback.format_stack(frame))
    return "".join(parts)


class Watchdog:
    def __init__(self, phases: Phases, ctx: Dist, run_dir: Path, enabled: bool = True):
        self.phases, self.ctx, self.run_dir, self.enabled = phases, ctx, Path(run_dir), enabled
        self.host, self.pid = socket.gethostname(), os.getpid()
        self.store = None
        self.stopped = threading.Event()
        self.seq = 0
        self._thread: threading.Thread | None = None
        self._wakeup: tuple[int, int] | None = None

    # --- the training thread ---------------------------------------------------------------------

    def start(self) -> None:
        if not self.enabled:
            return
        if self.ctx.enabled and self.ctx.store is not None:
            self.store = self.ctx.store.clone()  # a client of its own: the training thread uses the other
            self.store.set_timeout(timedelta(seconds=30))
        self._wakeup = os.pipe()
        os.set_blocking(self._wakeup[1], False)
        signal.signal(signal.SIGUSR2, lambda signum, frame: None)  # stacks on demand: see `_run`
        signal.set_wakeup_fd(self._wakeup[1], warn_on_full_buffer=False)
        self._thread = threading.Thread(target=self._run, name="gptdist-watchdog", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """At the run's end: a last heartbeat says so, then the thread ends."""
        if self._thread is None:
            return
        self.stopped.set()
        os.write(self._wakeup[1], b"\0")
        self._thread.join(timeout=10)
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGUSR2, signal.SIG_DFL)
        for fd in self._wakeup:
            os.close(fd)
        self._thread = None

    # --- the watchdog's thread -------------------------------------------------------------------

    def _run(self) -> None:
        while not self.stopped.is_set():
            ready, _, _ = select.select([self._wakeup[0]], [], [], BEAT_S)
            if ready and signal.SIGUSR2 in os.read(self._wakeup[0], 512):
                self._stacks_on_demand()
            if self.stopped.is_set():
                break
            phase, step, since = self.phases.now
            in_phase = time.monotonic() - since
            self._beat(phase, step, in_phase)
            declared = self._declared()
            if declared is not None:
                self._join_hang(declared)
            elif in_phase > self.phases.limit(phase):
                self._declare(phase, step, in_phase)
        self._beat("finished", self.phases.now[1], 0.0)

    def _beat(self, phase: str, step: int, in_phase: float) -> None:
        if self.store is None:
            return
        self.seq += 1
        beat = {"seq": self.seq, "phase": phase, "step": step, "in_phase_s": round(in_phase, 1),
                "host": self.host, "pid": self.pid, "time": time.time()}
        try:
            self.store.set(f"beat/{self.ctx.rank}", json.dumps(beat))
        except Exception:  # the store's host is gone: the run is ending anyway
            pass

    def _declared(self) -> dict | None:
        try:
            if self.store is not None and self.store.check(["hang"]):
                return json.loads(self.store.get("hang"))
        except Exception:
            pass
        return None

    def _declare(self, phase: str, step: int, in_phase: float) -> None:
        hang = json.dumps({"rank": self.ctx.rank, "step": step, "phase": phase,
                           "in_phase_s": round(in_phase, 1)})
        if self.store is not None:
            try:
                hang = self.store.compare_set("hang", "", hang).decode()
            except Exception:
                pass
        declared = json.loads(hang)
        if declared["rank"] != self.ctx.rank:
            self._join_hang(declared)
        self._report(declared)

    def _folder(self, step: int) -> Path:
        folder = self.run_dir / "hangs" / f"step_{step}"
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def _write_stacks(self, folder: Path, name: str) -> Path:
        phase, step, since = self.phases.now
        header = (f"rank {self.ctx.rank} on {self.host}, pid {self.pid}, at "
                  f"{time.strftime('%Y-%m-%d %H:%M:%S')}: in {phase} of step {step} for "
                  f"{time.monotonic() - since:.1f} s\n")
        path = folder / f"{name}.txt"
        path.write_text(_stacks_text(header))
        if self.ctx.device.type == "cuda":  # what NCCL was doing: its flight recorder (torchfrtrace reads it)
            try:
                (folder / f"{name}.nccl-trace.pkl").write_bytes(torch._C._distributed_c10d._dump_fr_trace())
            except Exception:
                pass
        return path

    def _stacks_on_demand(self) -> None:
        folder = self.run_dir / "stacks"
        folder.mkdir(parents=True, exist_ok=True)
        path = self._write_stacks(folder, f"rank_{self.ctx.rank}-{time.strftime('%Y%m%d-%H%M%S')}")
        print(f"rank {self.ctx.rank}: stacks written to {path} (SIGUSR2); training goes on", flush=True)

    def _join_hang(self, declared: dict) -> None:
        """Another rank declared a hang: write this rank's stacks, wait for the report (beating on: this
        rank is no culprit for having stopped to answer), exit."""
        self._write_stacks(self._folder(declared["step"]), f"rank_{self.ctx.rank}")
        self._set(f"done/{self.ctx.rank}")
        deadline = time.monotonic() + STACKS_WAIT_S + 2 * WATCH_S
        while time.monotonic() < deadline and not self._check("reported"):
            phase, step, since = self.phases.now
            self._beat(phase, step, time.monotonic() - since)
            time.sleep(BEAT_S / 2)
        exit_now(HANG_EXIT)

    def _report(self, declared: dict) -> None:
        step = declared["step"]
        folder = self._folder(step)
        self._write_stacks(folder, f"rank_{self.ctx.rank}")
        first = self._beats()
        time.sleep(WATCH_S)
        last = self._beats()
        silent = [rank for rank in range(self.ctx.world_size) if rank != self.ctx.rank
                  and (rank not in last or first.get(rank, {}).get("seq") == last[rank]["seq"])]
        answering = [rank for rank in range(self.ctx.world_size)
                     if rank not in silent and rank != self.ctx.rank]
        deadline = time.monotonic() + STACKS_WAIT_S
        while time.monotonic() < deadline and not all(self._check(f"done/{rank}") for rank in answering):
            time.sleep(0.2)
        line = self._verdict(declared, silent, last, folder)
        self._kill_silent_here(silent, last)
        (folder / "hang.json").write_text(json.dumps({"declared": declared, "silent": silent, "beats": last},
                                                     indent=1) + "\n")
        code, verdict = attempts.record_failure(self.run_dir, step, "hang", HANG_EXIT)
        print(line, flush=True)
        if verdict:
            print(verdict, flush=True)
        self._set("reported")
        exit_now(code)

    def _verdict(self, declared: dict, silent: list[int], beats: dict[int, dict], folder: Path) -> str:
        """One line: the rank that held the others up, what it was doing and for how long, its host, and
        where the stacks are."""
        mine = {"phase": declared["phase"], "step": declared["step"], "in_phase_s": declared["in_phase_s"],
                "host": self.host}
        beats = {**beats, self.ctx.rank: {**beats.get(self.ctx.rank, {}), **mine}}
        culprit = _silent(silent[0], beats.get(silent[0])) if silent else _behind(beats)
        return (f"hang at step {declared['step']}: {culprit}; stacks in {folder}; exiting with code "
                f"{HANG_EXIT} so that torchrun --max-restarts resumes from the newest checkpoint")

    def _kill_silent_here(self, silent: list[int], beats: dict[int, dict]) -> None:
        """A silent rank on this host (a stopped or stuck process) is killed: torchrun would wait for it."""
        for rank in silent:
            beat = beats.get(rank)
            if beat is not None and beat["host"] == self.host:
                try:
                    os.kill(beat["pid"], signal.SIGKILL)
                except OSError:
                    pass

    def _beats(self) -> dict[int, dict]:
        if self.store is None:
            return {}
        keys = [f"beat/{rank}" for rank in range(self.ctx.world_size)]
        beats = {}
        for rank, key in enumerate(keys):
            try:
                if self.store.check([key]):
                    beats[rank] = json.loads(self.store.get(key))
            except Exception:
                pass
        return beats

    def _check(self, key: str) -> bool:
        try:
            return self.store is None or self.store.check([key])
        except Exception:
            return True  # the store is gone: nobody is left to wait for

    def _set(self, key: str) -> None:
        try:
            if self.store is not None:
                self.store.set(key, "1")
        except Exception:
            pass


def _silent(rank: int, beat: dict | None) -> str:
    """A rank whose watchdog stopped answering: frozen or dead, it cannot speak for itself."""
    if beat is None:
        return f"rank {rank} never answered its watchdog (it did not start, or froze at once)"
    quiet = max(0.0, time.time() - beat["time"])
    return (f"rank {rank} ({beat['host']}, pid {beat['pid']}) stopped answering {quiet:.0f} s ago, in "
            f"{beat['phase']} of step {beat['step']} (frozen or dead: no stacks of its own)")


def _behind(beats: dict[int, dict]) -> str:
    """Among ranks that answer, the one furthest behind: an earlier step, or an earlier phase of it."""

    def progress(rank: int) -> tuple[int, int]:
        phase = beats[rank]["phase"]
        return beats[rank]["step"], STEP_PHASES.index(phase) if phase in STEP_PHASES else len(STEP_PHASES)

    ranks = sorted(beats, key=progress)
    rank, beat = ranks[0], beats[ranks[0]]
    doing = f"in {beat['phase']} of step {beat['step']} for {beat['in_phase_s']:.0f} s"
    if len(ranks) == 1:
        return f"rank {rank} ({beat['host']}) has been {doing}"
    if progress(rank) == progress(ranks[-1]):
        return (f"every rank has been {doing} or so, none behind another (a collective none of them can "
                "finish, or work slower than its limit)")
    others = ", ".join(sorted({beats[other]["phase"] for other in ranks[1:]}))
    return f"rank {rank} ({beat['host']}) has been {doing} while the others wait in {others}"
