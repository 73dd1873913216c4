"""Checkpoints on disk: atomic, checksummed, loadable with weights_only=True, pruned to the newest few.

A checkpoint is `step_00000400.pt`, one file holding one entry per named state (model,
optimizer, scaler, schedule, sampler, progress, RNG, tracking) plus `config`, `format` and
`checksum`; or, with checkpoint.sharded, a folder `step_00000400/` (sharded.py). It is
written as a temporary beside its name and renamed once durable, so a file or folder with a
checkpoint's name is always whole; `read` verifies it before anything uses it.
"""

import contextlib
import hashlib
import os
import re
import time
import zipfile
from pathlib import Path

import torch
import torch.distributed as dist

from .. import distributed
from ..errors import UserError
from ..files.durable import fsync_path
from ..files.replace import Kind, remove_own
from . import sharded
from .names import OLD_NAMES, renamed

# Format 3 names FeedForward's layers (ff.fc, ff.proj); format 2 called them by position
# (ff.layers.0, ff.layers.2) and keyed the optimizer's state by parameter name; format 1 keyed it
# by position. All three load.
FORMAT = "gptdist-checkpoint/3"
POSITIONAL_FORMATS = ("gptdist-checkpoint/1", "gptdist-checkpoint/2")
READABLE_FORMATS = (*POSITIONAL_FORMATS, FORMAT)
_NAME = re.compile(r"^step_(\d{8})(\.pt)?$")  # a file, or a sharded checkpoint's folder
_ZIP = b"PK\x03\x04"  # how every file torch.save writes begins (a zip archive), even a half-written one


def not_written_by_a_save(path: Path) -> list[str]:
    """[] for a checkpoint or its temporary as a save writes it (a torch file, or an empty one killed before
    its first byte; a folder of a sharded write's files only), else what in it a save never writes."""
    if path.is_dir():
        return sharded.files_not_written(path)
    with open(path, "rb") as f:
        return [] if f.read(len(_ZIP)) in (_ZIP, b"") else [path.name]


# What pruning and the cleanup of a killed save's temporaries may delete: nothing but that.
CHECKPOINT = Kind("a checkpoint", "a save", not_written_by_a_save)


def content_digest(obj) -> str:
    """sha256 over a checkpoint's content: tensors by dtype, shape and bytes; plain values by repr."""
    digest = hashlib.sha256()

    def feed(value) -> None:
        if isinstance(value, torch.Tensor):
            data = value.detach().cpu().contiguous().reshape(-1)
            digest.update(f"T{data.dtype}{tuple(data.shape)}".encode())
            # the tensor's memory: no copy
            digest.update(data.view(torch.uint8).numpy() if data.numel() else b"")
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
    """Load and verify one checkpoint (tensors and plain containers only: weights_only=True), with
    the parameter names of today's model.

    Of a sharded checkpoint, every file is verified but only the small states are loaded;
    `sharded` in the payload says so, and `Checkpointer.restore` loads the shards.
    """
    if path.is_dir() and sharded.is_sharded(path):
        sharded.verify(path)
        return {**_read_file(path / sharded.STATES), "sharded": str(path)}
    payload = _read_file(path)
    if payload["format"] in POSITIONAL_FORMATS:
        for name in ("model", "optimizer"):
            payload[name] = renamed(payload[name], OLD_NAMES)
    return payload


def _read_file(path: Path) -> dict:
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UserError(f"checkpoint {path} does not exist") from None
    except IsADirectoryError:
        raise UserError(f"checkpoint {path} is a folder but not a sharded checkpoint (it has no "
                        f"{sharded.CHECKSUMS}); give a checkpoint file or folder") from None
    # said in gptdist's words: torch's would suggest weights_only=False, never an option
    except Exception as err:
        if zipfile.is_zipfile(path):  # a whole torch file, refused by weights_only
            raise UserError(f"checkpoint {path} cannot be loaded: it holds objects other than tensors and "
                            "plain values, which gptdist never unpickles; it is not a gptdist "
                            "checkpoint") from None
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


def temporary(path: Path) -> Path:
    """Where a checkpoint is written before it is renamed to `path`."""
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
    tmp = temporary(path)
    try:
        with open(tmp, "wb") as f:
            _save_to(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_path(path.parent)  # make the rename itself durable
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise UserError(
            f"cannot write checkpoint {path}: {err.strerror or err}; older checkpoints in {path.parent} are "
            "intact"
        ) from None


def _sealed(payload: dict) -> dict:
    payload["checksum"] = content_digest(payload)
    return payload


def size_on_disk(path: Path) -> int:
    """A checkpoint's bytes: its file's, or all its folder's files'."""
    return sum(p.stat().st_size for p in path.iterdir()) if path.is_dir() else path.stat().st_size


def _prune(folder: Path, keep: int) -> None:
    """Delete the checkpoints before the newest `keep` (only once the new one is durable): a file or folder
    with a checkpoint's name that a save did not write, or a link, is left alone."""
    for old in checkpoint_paths(folder)[:-keep]:
        remove_own(old, CHECKPOINT)


def write(payload: dict, path: Path, keep: int) -> tuple[int, float]:
    """Digest, write atomically and prune (the background part of a save); returns (bytes, seconds)."""
    start = time.perf_counter()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_atomically(_sealed(payload), path)
        _prune(path.parent, keep)
        return path.stat().st_size, time.perf_counter() - start
    except OSError as err:
        raise UserError(f"cannot write checkpoints in {path.parent}: {err.strerror or err}") from None


def write_sharded(shards: dict, small: dict, path: Path, keep: int, group) -> tuple[int, float]:
    """Every rank: its shards into the folder `path`; rank 0 also the small states, then prunes."""
    from torch.distributed.checkpoint.api import CheckpointException

    start = time.perf_counter()
    tmp = temporary(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        sharded.write(shards, small, path, tmp, group,
                      lambda payload, file: _write_atomically(_sealed(payload), file))
        if dist.get_rank(group) != 0:
            return 0, time.perf_counter() - start
        _prune(path.parent, keep)
        return size_on_disk(path), time.perf_counter() - start
    except (OSError, CheckpointException) as err:
        if dist.get_rank(group) == 0:  # a partial folder is never a checkpoint
            with contextlib.suppress(OSError):
                remove_own(tmp, CHECKPOINT)
        raise UserError(f"cannot write checkpoint {path}: {getattr(err, 'strerror', None) or err}; "
                        f"older checkpoints in {path.parent} are intact") from None
