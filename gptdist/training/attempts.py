"""Restarts that go nowhere stop: a run that fails at the same step, with no new checkpoint in between,
three attempts in a row (it failed, and both restarts after it failed the same way) stops with one line
and NO_PROGRESS_EXIT, which slurm/train.sbatch and launch/*.sh read as "do not requeue, do not restart".

Each failure the run names (a hang, an error in the loop) is one line of RUN/failures.jsonl: the
attempt (torchrun's restart count, or SLURM's requeue count), the step being made, the newest
checkpoint then, and why. A restarted attempt that finds the verdict already given exits at once
(torchrun may still have restarts left: each costs seconds, not an allocation).
"""

import json
import os
import time
from pathlib import Path

from ..checkpoint import store
from . import outcome

NO_PROGRESS_EXIT = 79
FAILURES = "failures.jsonl"
IN_A_ROW = 3  # the failure, then two restarts that failed the same way


def attempt() -> int:
    """Which attempt this process belongs to: torchrun's restarts and SLURM's requeues counted."""
    return sum(int(os.environ.get(name, 0)) for name in ("TORCHELASTIC_RESTART_COUNT", "SLURM_RESTART_COUNT"))


def _attempt_id() -> str:
    """This attempt, told apart from every other: a new torchrun (its rendezvous id), a requeued job, a
    restart."""
    names = ("TORCHELASTIC_RUN_ID", "SLURM_JOB_ID", "SLURM_RESTART_COUNT", "TORCHELASTIC_RESTART_COUNT")
    return "/".join(os.environ.get(name, "") for name in names)


def _records(run_dir: Path) -> list[dict]:
    path = run_dir / FAILURES
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:  # a line a kill cut short
            continue
    return rows


def _newest_checkpoint(run_dir: Path) -> int | None:
    paths = store.checkpoint_paths(run_dir / "checkpoints")
    return store.step_of(paths[-1]) if paths else None


def _going_nowhere(records: list[dict]) -> bool:
    last = records[-IN_A_ROW:]
    return (len(last) == IN_A_ROW and len({(r["step"], r["checkpoint"]) for r in last}) == 1
            and len({r.get("attempt_id", r["attempt"]) for r in last}) == IN_A_ROW)


def _verdict(records: list[dict], run_dir: Path) -> str:
    last = records[-1]
    since = f"step {last['checkpoint']}" if last["checkpoint"] is not None else "no checkpoint"
    return (f"no progress: the run failed at step {last['step']} in {IN_A_ROW} attempts in a row "
            f"({last['why']}), never past its newest checkpoint ({since}); not restarting again (exit code "
            f"{NO_PROGRESS_EXIT}): see {run_dir / 'hangs'} and {run_dir / FAILURES}, mend the cause, then "
            "run the same command")


def record_failure(run_dir: Path, step: int, why: str, code: int) -> tuple[int, str | None]:
    """One rank, as its run fails at `step`: the failure recorded, once an attempt (a hang named first,
    then the collectives it breaks on the other ranks: the hang is the failure); returns the exit code
    (`code`, or NO_PROGRESS_EXIT) and, when the run is going nowhere, the line that says so."""
    records = _records(run_dir)
    if not records or records[-1].get("attempt_id") != _attempt_id():
        row = {"attempt": attempt(), "attempt_id": _attempt_id(), "step": step,
               "checkpoint": _newest_checkpoint(run_dir), "why": why,
               "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
        run_dir.mkdir(parents=True, exist_ok=True)
        with open(run_dir / FAILURES, "a") as f:
            f.write(json.dumps(row) + "\n")
        records.append(row)
    if not _going_nowhere(records):
        return code, None
    outcome.write("no progress", step)
    return NO_PROGRESS_EXIT, _verdict(records, run_dir)


def refused_restart(run_dir: Path) -> str | None:
    """At a restarted attempt's start: the no-progress line if the run was found going nowhere (and no
    checkpoint came since), else None."""
    if attempt() == 0:
        return None
    records = _records(run_dir)
    if not _going_nowhere(records) or records[-1]["checkpoint"] != _newest_checkpoint(run_dir):
        return None
    outcome.write("no progress", records[-1]["step"])
    return _verdict(records, run_dir)
