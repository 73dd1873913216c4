"""Rank-0 checkpoints: atomic, checksummed, loadable with weights_only=True, pruned to the newest few.

The checkpointer is a loop over named states: every stateful piece (model, optimizer,
scaler, schedule, sampler, progress, RNG) has state_dict()/load_state_dict(), and a
checkpoint holds one entry per name plus `config`, `format` and `checksum`. With
checkpoint.sharded the model and optimizer go into a torch.distributed.checkpoint folder
instead, every rank writing its shards (sharded_checkpoint.py), and the rest beside them.

A save stops training only to copy the state into host memory (snapshot.py); rank 0 then
digests, serialises, writes, syncs, renames and prunes in a background thread while
training goes on. One write is in flight at most: the next save waits for it. A write
that fails is reported at the next step boundary (`poll`) or save (`wait`) and stops the run.
"""

import hashlib
import os
import re
import shutil
import time
import zipfile
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.api import CheckpointException

from . import distributed, sharded_checkpoint
from .errors import UserError
from .snapshot import HostSnapshot

# Tests set this to hold a write open before its rename, making "killed during a write" certain.
TEST_WRITE_DELAY_S = float(os.environ.get("GPTDIST_TEST_CHECKPOINT_WRITE_DELAY_S", 0))

# Format 2 keys the optimizer's state by parameter name (format 1: by position); both load.
FORMAT = "gptdist-checkpoint/2"
READABLE_FORMATS = ("gptdist-checkpoint/1", FORMAT)
_NAME = re.compile(r"^step_(\d{8})(\.pt)?$")  # a file, or a sharded checkpoint's folder


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
    """The checkpoints in `folder` (files and sharded folders), oldest first."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if _NAME.match(p.name))


def step_of(path: Path) -> int:
    return int(_NAME.match(path.name).group(1))


def read(path: Path) -> dict:
    """Load and verify one checkpoint (tensors and plain containers only: weights_only=True).

    Of a sharded checkpoint, every file is verified but only the small states are loaded;
    `sharded` in the payload says so, and `restore` loads the shards.
    """
    if path.is_dir() and sharded_checkpoint.is_sharded(path):
        sharded_checkpoint.verify(path)
        return {**_read_file(path / sharded_checkpoint.STATES), "sharded": str(path)}
    return _read_file(path)


def _read_file(path: Path) -> dict:
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UserError(f"checkpoint {path} does not exist") from None
    except IsADirectoryError:
        raise UserError(f"checkpoint {path} is a folder but not a sharded checkpoint (it has no "
                        f"{sharded_checkpoint.CHECKSUMS}); give a checkpoint file or folder") from None
    except Exception as err:  # said in gptdist's words: torch's would suggest weights_only=False, never an option
        if zipfile.is_zipfile(path):  # a whole torch file, refused by weights_only
            raise UserError(f"checkpoint {path} cannot be loaded: it holds objects other than tensors and plain "
                            "values, which gptdist never unpickles; it is not a gptdist checkpoint") from None
        raise UserError(f"checkpoint {path} cannot be loaded: it is not a readable torch file "
                        f"(truncated, damaged or of another kind: {type(err).__name__})") from None
    if not isinstance(payload, dict) or payload.get("format") not in READABLE_FORMATS:
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
        sharded_checkpoint.fsync_path(path.parent)  # make the rename itself durable
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


def _sealed(payload: dict) -> dict:
    payload["checksum"] = content_digest(payload)
    return payload


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.iterdir()) if path.is_dir() else path.stat().st_size


def _prune(folder: Path, keep: int) -> None:
    for old in checkpoint_paths(folder)[:-keep]:  # only once the new one is durable
        if old.is_dir():
            shutil.rmtree(old)
        else:
            old.unlink()


def _write(payload: dict, path: Path, keep: int) -> tuple[int, float]:
    """Digest, write atomically and prune (the background part of a save); returns (bytes, seconds)."""
    start = time.perf_counter()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_atomically(_sealed(payload), path)
        _prune(path.parent, keep)
        return path.stat().st_size, time.perf_counter() - start
    except OSError as err:
        raise UserError(f"cannot write checkpoints in {path.parent}: {err.strerror or err}") from None


def _write_sharded(shards: dict, small: dict, path: Path, keep: int, group) -> tuple[int, float]:
    """Every rank: its shards into the folder `path`; rank 0 also the small states, then prunes."""
    start = time.perf_counter()
    tmp = _temporary(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        sharded_checkpoint.write(shards, small, path, tmp, group,
                                 lambda payload, file: _write_atomically(_sealed(payload), file))
        if dist.get_rank(group) != 0:
            return 0, time.perf_counter() - start
        _prune(path.parent, keep)
        return _size(path), time.perf_counter() - start
    except (OSError, CheckpointException) as err:
        if dist.get_rank(group) == 0:  # a partial folder is never a checkpoint
            shutil.rmtree(tmp, ignore_errors=True)
        raise UserError(f"cannot write checkpoint {path}: {getattr(err, 'strerror', None) or err}; "
                        f"older checkpoints in {path.parent} are intact") from None


class Checkpointer:
    def __init__(self, folder: Path, keep: int, ctx: distributed.Dist, background: bool = True,
                 sharded: bool = False):
        self.folder, self.keep, self.ctx, self.background = Path(folder), keep, ctx, background
        self.sharded = sharded and ctx.enabled  # alone, a sharded checkpoint is the whole state: one file
        self.snapshot = HostSnapshot(ctx.device)
        # Under checkpoint.sharded every rank writes, in a thread of its own whose collectives need
        # a group of their own: two threads taking turns on one group would mismatch their calls.
        self.group = dist.new_group(backend="gloo") if self.sharded else None
        writes = ctx.is_main or self.sharded
        self.writer = ThreadPoolExecutor(1, thread_name_prefix="gptdist-checkpoint") if writes else None
        self.in_flight: tuple[Future, int, Path, float] | None = None  # (write, step, path, stall_s)
        if ctx.is_main and self.folder.is_dir():  # a killed run's half-written file or folder: never a checkpoint
            for stale in self.folder.glob(_temporary(self.folder / "step_*").name):
                shutil.rmtree(stale) if stale.is_dir() else stale.unlink()

    def save(self, step: int, states: dict[str, Stateful], config: dict, summary: dict) -> Saved | None:
        """Called on every rank at the same step boundary (states may gather from all ranks).

        Returns once training may go on: with background writes, after the snapshot (None);
        otherwise once the checkpoint is durable (what `wait` returns). `summary` adds plain
        top-level values for readers (step, epoch, tokens_seen).
        """
        start = time.perf_counter()
        finished = self.wait()  # the snapshot's buffers are the previous write's
        shards = {name: states[name].sharded_state_dict() for name in sharded_checkpoint.SHARDED_STATES
                  } if self.sharded else {}
        small = {name: state.state_dict() for name, state in states.items() if name not in shards}
        staged = self.snapshot.take({"shards": shards, "small": small})
        if self.ctx.is_main:
            staged["small"].update(summary, format=FORMAT, config=config)
        if self.sharded:
            path = self.folder / f"step_{step:08d}"
            write = self.writer.submit(_write_sharded, staged["shards"], staged["small"], path, self.keep, self.group)
        elif self.ctx.is_main:
            path = self.folder / f"step_{step:08d}.pt"
            write = self.writer.submit(_write, staged["small"], path, self.keep)
        if self.writer is not None:
            self.in_flight = (write, step, path, time.perf_counter() - start)
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
        if payload.get("sharded"):
            sharded_checkpoint.load(Path(payload["sharded"]), states)
        for name, state in states.items():
            if name in payload:  # of a sharded checkpoint: all but the model and optimizer
                state.load_state_dict(payload[name])
