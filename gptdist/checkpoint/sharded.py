"""Sharded checkpoints (checkpoint.sharded): a torch.distributed.checkpoint folder per save.

For models whose full state should not pass through one host, every rank writes its own
shards of the model and optimizer; torch.distributed.checkpoint records where each piece of
each tensor went, so any world size, under ddp or fsdp, reads it back. A folder holds:

    step_00000400/
        __0_0.distcp, __1_0.distcp, ...  model and optimizer, one file per rank
        .metadata                         the index of those files
        states.pt                         the small states (sampler, RNG, schedule, ...), config, summary
        checksums.json                    sha256 of every file above, written last

It is written as `.step_00000400.tmp/` and renamed once every rank's files are durable and
checksummed: a folder with the checkpoint's name is always complete. Each rank hashes the
files it wrote; rank 0 collects them. All of it runs in each rank's background writer, with
a process group of its own, so its collectives never meet the training loop's.
"""

import json
import os
import re
import warnings
from pathlib import Path

import torch
import torch.distributed as dist

from ..errors import UserError
from ..files.durable import fsync_path, sha256_of
from .names import OLD_NAMES, renamed

CHECKSUMS = "checksums.json"
STATES = "states.pt"
SHARDED_STATES = ("model", "optimizer")  # the states each rank saves its shards of
# What a sharded write puts in its folder, finished or not (torch.distributed.checkpoint writes
# .metadata through .metadata.tmp; states.pt is written through .states.pt.tmp).
_WRITTEN = re.compile(r"^(__\d+_\d+\.distcp|\.metadata(\.tmp)?|\.?states\.pt(\.tmp)?|checksums\.json)$")


def is_sharded(path: Path) -> bool:
    return (path / CHECKSUMS).is_file()


def files_not_written(folder: Path) -> list[str]:
    """The entries of `folder` that a sharded write never makes."""
    return sorted(e.name for e in folder.iterdir() if not (_WRITTEN.match(e.name) and e.is_file()))


def write(shards: dict, small: dict, path: Path, tmp: Path, group, save_small) -> None:
    """On every rank at once: `shards` (SHARDED_STATES, this rank's part) and, from rank 0, `small`
    (written by `save_small(payload, file)`) into the folder `tmp`, renamed to `path` when complete.
    A killed run's `tmp` is removed when the next run starts (Checkpointer), a failed write's by the
    caller."""
    import torch.distributed.checkpoint as dcp  # here: its import takes seconds, and most runs never shard

    rank = dist.get_rank(group)
    dcp.save(shards, storage_writer=dcp.FileSystemWriter(tmp, sync_files=True), process_group=group)
    written = {p.name: sha256_of(p) for p in tmp.glob(f"__{rank}_*.distcp")}
    gathered = [None] * dist.get_world_size(group)
    dist.all_gather_object(gathered, written, group=group)
    if rank != 0:
        return
    save_small(small, tmp / STATES)
    checksums = {name: digest for part in gathered for name, digest in part.items()}
    checksums.update({name: sha256_of(tmp / name) for name in (".metadata", STATES)})
    (tmp / CHECKSUMS).write_text(json.dumps(checksums, indent=1, sort_keys=True) + "\n")
    for name in (".metadata", CHECKSUMS):
        fsync_path(tmp / name)
    fsync_path(tmp)
    os.replace(tmp, path)
    fsync_path(path.parent)


def verify(path: Path) -> None:
    """Every file of the folder against checksums.json (a damaged or missing one is a UserError)."""
    try:
        checksums = json.loads((path / CHECKSUMS).read_text())
    except (OSError, ValueError):
        raise UserError(f"checkpoint {path}: {CHECKSUMS} cannot be read; the checkpoint is damaged") from None
    for name, expected in checksums.items():
        file = path / name
        if not file.is_file():
            raise UserError(f"checkpoint {path} is incomplete: {name} is missing")
        if sha256_of(file) != expected:
            raise UserError(f"checkpoint {path} fails its checksum: {name} is damaged")


def _load_renamed(targets: dict, path: Path, **options) -> dict:
    """dcp.load into `targets`' tensors (in place), each found under the name the folder gives it: an
    older format's (names.py) where the folder's index has those. Returns the loaded states."""
    import torch.distributed.checkpoint as dcp

    saved = dcp.FileSystemReader(path).read_metadata().state_dict_metadata
    older = any(old in key for key in saved for old in OLD_NAMES)
    loaded = renamed(targets, {today: old for old, today in OLD_NAMES.items()}) if older else targets
    dcp.load(loaded, checkpoint_id=path, **options)
    return renamed(loaded, OLD_NAMES) if older else loaded


def load(path: Path, states: dict) -> None:
    """Load SHARDED_STATES from the folder into `states`, resharded to this run's ranks."""
    targets = {name: states[name].sharded_state_dict() for name in SHARDED_STATES}
    loaded = _load_renamed(targets, path)
    for name in SHARDED_STATES:
        states[name].load_sharded_state_dict(loaded[name])


def load_model(path: Path, model: torch.nn.Module) -> None:
    """The model's weights alone, in one process (generate, evaluate)."""
    with warnings.catch_warnings():  # that there is no process group: none is meant
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        loaded = _load_renamed({"model": model.state_dict()}, path, no_dist=True)
    model.load_state_dict(loaded["model"])
