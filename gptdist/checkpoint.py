"""Rank-0 checkpoints: atomic, checksummed, loadable with weights_only=True, pruned to the newest few.

The checkpointer is a loop over named states: every stateful piece (model, optimizer,
scaler, schedule, sampler, progress, RNG) has state_dict()/load_state_dict(), and a
checkpoint holds one entry per name plus `config`, `format` and `checksum`.

A save stops training only to copy the state into host memory (snapshot.py); rank 0 then
digests, serialises, writes, syncs, renames and prunes in a background thread while
training goes on. One write is in flight at most: the next save waits for it. A write
that fails is reported at the next step boundary (`poll`) or save (`wait`) and stops the run.
"""

import hashlib
import os
import re
import time
import zipfile
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch

from . import distributed
from .errors import UserError
from .snapshot import HostSnapshot

# Tests set this to hold a write open before its rename, making "killed during a write" certain.
TEST_WRITE_DELAY_S = float(os.environ.get("GPTDIST_TEST_CHECKPOINT_WRITE_DELAY_S", 0))

FORMAT = "gptdist-checkpoint/1"
_NAME = re.compile(r"^step_(\d{8})\.pt$")


class Stateful(Protocol):
    def state_dict(self) -> dict: ...
    def load_state_dict(self, state: dict) -> None: ...


def content_digest(obj) -> str:
    """sha256 over a checkpoint's content: tensors by dtype, shape and bytes; plain values by repr."""
    digest = hashlib.sha256()

    def feed(value) -> None:
        if isinstance(value, torch.Tensor):
            data = value.detach().cpu().contiguous().reshape(-1)
            digest.update(f"T{data.dtype}{tuple(data.shape)}".encode())
            digest.update(data.view(torch.uint8).numpy() if data.numel() else b"")  # the tensor's memory: no copy
        elif isinstance(value, dict):
            digest.update(b"{")
            for key in sorted(value, key=repr):
                digest.update(repr(key).encode())
                feed(value[key])
            digest.update(b"}")
        elif isinstance(value, (list, tuple)):
            digest.update(b"[")
            for item in value:
                feed(item)
            digest.update(b"]")
        else:
            digest.update(repr(value).encode())

    feed(obj)
    return digest.hexdigest()


def checkpoint_paths(folder: Path) -> list[Path]:
    """The checkpoints in `folder`, oldest first."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if _NAME.match(p.name))


def step_of(path: Path) -> int:
    return int(_NAME.match(path.name).group(1))


def read(path: Path) -> dict:
    """Load and verify one checkpoint (tensors and plain containers only: weights_only=True)."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UserError(f"checkpoint {path} does not exist") from None
    except IsADirectoryError:
        raise UserError(f"checkpoint {path} is a folder, not a checkpoint file") from None
    except Exception as err:  # said in gptdist's words: torch's would suggest weights_only=False, never an option
        if zipfile.is_zipfile(path):  # a whole torch file, refused by weights_only
            raise UserError(f"checkpoint {path} cannot be loaded: it holds objects other than tensors and plain "
                            "values, which gptdist never unpickles; it is not a gptdist checkpoint") from None
        raise UserError(f"checkpoint {path} cannot be loaded: it is not a readable torch file "
                        f"(truncated, damaged or of another kind: {type(err).__name__})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise UserError(f"{path} is not a gptdist checkpoint (format {FORMAT})")
    checksum = payload.pop("checksum", None)
    if checksum != content_digest(payload):
        raise UserError(f"checkpoint {path} fails its checksum: it is damaged")
    return payload


def newest_good(folder: Path, report=distributed.print0) -> dict | None:
    """The newest checkpoint in `folder` that loads and verifies; damaged newer ones are reported."""
    for path in reversed(checkpoint_paths(folder)):
        try:
            payload = read(path)
        except UserError as err:
            report(f"warning: {err}; trying the previous checkpoint")
            continue
        payload["path"] = str(path)
        return payload
    return None


def _temporary(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp")


class _WriteErrorKept:
    """A file for torch.save that keeps the OSError of a failed write: torch reports it as an
    unrelated RuntimeError ("unexpected pos"), and the user needs the cause (a full disk)."""

    def __init__(self, file):
        self.file, self.error = file, None

    def write(self, data) -> int:
        return self._keeping_error(self.file.write, data)

    def flush(self) -> None:
        self._keeping_error(self.file.flush)

    def _keeping_error(self, call, *args):
        try:
            return call(*args)
        except OSError as err:
            self.error = err
            raise


def _save_to(payload: dict, file) -> None:
    kept = _WriteErrorKept(file)
    try:
        torch.save(payload, kept)
    except RuntimeError:
        if kept.error is None:
            raise
        raise kept.error from None


def _write_atomically(payload: dict, path: Path) -> None:
    tmp = _temporary(path)
    try:
        with open(tmp, "wb") as f:
            _save_to(payload, f)
            f.flush()
            time.sleep(TEST_WRITE_DELAY_S)
            os.fsync(f.fileno())
        os.replace(tmp, path)
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)  # make the rename itself durable
        finally:
            os.close(directory)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise UserError(
            f"cannot write checkpoint {path}: {err.strerror or err}; older checkpoints in {path.parent} are intact"
        ) from None


@dataclass
class Saved:
    """A checkpoint on disk, and what it cost: training stopped for stall_s, the background took write_s."""

    step: int
    path: Path
    bytes: int
    stall_s: float
    write_s: float


def _write(payload: dict, path: Path, keep: int) -> tuple[int, float]:
    """Digest, write atomically and prune (the background part of a save); returns (bytes, seconds)."""
    start = time.perf_counter()
    payload["checksum"] = content_digest(payload)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_atomically(payload, path)
        for old in checkpoint_paths(path.parent)[:-keep]:  # only once the new one is durable
            old.unlink()
        return path.stat().st_size, time.perf_counter() - start
    except OSError as err:
        raise UserError(f"cannot write checkpoints in {path.parent}: {err.strerror or err}") from None


class Checkpointer:
    def __init__(self, folder: Path, keep: int, ctx: distributed.Dist, background: bool = True):
        self.folder, self.keep, self.ctx, self.background = Path(folder), keep, ctx, background
        self.snapshot = HostSnapshot(ctx.device)
        self.writer = ThreadPoolExecutor(1, thread_name_prefix="gptdist-checkpoint") if ctx.is_main else None
        self.in_flight: tuple[Future, int, Path, float] | None = None  # (write, step, path, stall_s)
        if ctx.is_main and self.folder.is_dir():  # a killed run's half-written file: never a checkpoint
            for stale in self.folder.glob(_temporary(self.folder / "step_*.pt").name):
                stale.unlink()

    def save(self, step: int, states: dict[str, Stateful], config: dict, summary: dict) -> Saved | None:
        """Called on every rank at the same step boundary (states may gather from all ranks).

        Returns once training may go on: with background writes, after the snapshot (None);
        otherwise once the checkpoint is durable (what `wait` returns). `summary` adds plain
        top-level values for readers (step, epoch, tokens_seen).
        """
        start = time.perf_counter()
        finished = self.wait()  # the snapshot's buffers are the previous write's
        payload = self.snapshot.take({name: state.state_dict() for name, state in states.items()})
        path = self.folder / f"step_{step:08d}.pt"
        if self.ctx.is_main:
            payload.update(summary, format=FORMAT, config=config)
            self.in_flight = (self.writer.submit(_write, payload, path, self.keep), step, path,
                              time.perf_counter() - start)
        if self.background:
            return finished
        saved = self.wait()
        if saved is not None:  # all of it stopped training
            saved.stall_s = round(time.perf_counter() - start, 4)
        return saved

    def poll(self) -> Saved | None:
        """Rank 0, at any step boundary: the write that finished since, if any (raises its failure)."""
        if self.in_flight is None or not self.in_flight[0].done():
            return None
        return self._finish()

    def wait(self) -> Saved | None:
        """Every rank: wait for the write in flight; if it failed, every rank stops (rank 0 with its error)."""
        finished, failure = None, None
        if self.in_flight is not None:
            try:
                finished = self._finish()
            except UserError as err:
                failure = err
        distributed.raise_together(failure, self.ctx)
        return finished

    def _finish(self) -> Saved:
        write, step, path, stall_s = self.in_flight
        self.in_flight = None
        size, write_s = write.result()
        return Saved(step, path, size, round(stall_s, 4), round(write_s, 4))

    def close(self) -> Saved | None:
        """On any exit, on this rank alone: the write in flight completes (or reports why not)."""
        try:
            return self._finish() if self.in_flight is not None else None
        finally:
            if self.writer is not None:
                self.writer.shutdown()

    @staticmethod
    def restore(payload: dict, states: dict[str, Stateful]) -> None:
        for name, state in states.items():
            state.load_state_dict(payload[name])
