"""Process setup from torchrun's environment, rank-0 printing and cross-rank reductions.

One code path for one CPU process, one GPU and many: without torchrun there is no
process group and every collective below is the identity.
"""

import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import TypeVar

import torch
import torch.distributed as dist

from .errors import UserError

T = TypeVar("T")


@dataclass
class Dist:
    rank: int
    local_rank: int
    world_size: int
    device: torch.device
    # a gloo group for CPU flags: checking them never syncs a GPU or meets DDP's traffic
    control_group: object = None
    # the rendezvous store (this round's namespace): a channel beside the process groups (the watchdog's)
    store: object = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return dist.is_available() and dist.is_initialized()


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def pick_device(requested: str, local_rank: int, option: str = "train.device") -> torch.device:
    """`option` names where the request came from, for the error (a config key or a flag)."""
    if requested == "cpu" or (requested == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise UserError(f"{option} is cuda but this machine has no CUDA device (or this torch has no CUDA); "
                        "use cpu or auto")
    return torch.device("cuda", local_rank)


def setup(device_request: str = "auto", option: str = "train.device", timeout_s: float = 600.0) -> Dist:
    """Join the process group torchrun describes (NCCL on CUDA, gloo on CPU), or run alone; its
    collectives time out after `timeout_s` (training shortens it after the first step:
    training/timeouts.py)."""
    rank = int(os.environ.get("RANK", 0))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    device = pick_device(device_request, local_rank, option)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not launched_by_torchrun():
        return Dist(0, 0, 1, device)
    # Workers that torchrun restarts after a failure reuse the agent's store, where the
    # previous round's keys (the dead workers' addresses) still sit: namespace ours by
    # the restart count so that every round meets afresh.
    store, rank, world_size = next(dist.rendezvous("env://"))
    store = dist.PrefixStore(f"gptdist/round{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}", store)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if backend == "nccl":  # NCCL's flight recorder: what each rank's collectives were, written at a hang
        os.environ.setdefault("TORCH_FR_BUFFER_SIZE", "2000")
    timeout = timedelta(seconds=timeout_s)
    dist.init_process_group(backend, store=store, rank=rank, world_size=world_size, timeout=timeout)
    return Dist(rank, local_rank, world_size, device, dist.new_group(backend="gloo", timeout=timeout), store)


def rank() -> int:
    return int(os.environ.get("RANK", 0))


def print0(*args, **kwargs) -> None:
    """Print on rank 0 only: the one place where console output is decided."""
    if rank() == 0:
        print(*args, **kwargs, flush=True)


def _all_reduced(value: torch.Tensor, op) -> torch.Tensor:
    """`value` reduced over ranks with `op` (a new tensor; `value` itself when running alone)."""
    if dist.is_available() and dist.is_initialized():
        value = value.clone()
        dist.all_reduce(value, op=op)
    return value


def all_reduce_sum(value: torch.Tensor) -> torch.Tensor:
    return _all_reduced(value, dist.ReduceOp.SUM)


def all_reduce_min(value: torch.Tensor) -> torch.Tensor:
    return _all_reduced(value, dist.ReduceOp.MIN)


def all_reduce_max(value: torch.Tensor) -> torch.Tensor:
    """The elementwise maximum over ranks."""
    return _all_reduced(value, dist.ReduceOp.MAX)


def all_reduce_mean(value: torch.Tensor) -> torch.Tensor:
    world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    return all_reduce_sum(value) / world


def any_rank(flag: bool, ctx: Dist) -> bool:
    """True on every rank if `flag` is true on any (a CPU all-reduce: no GPU sync)."""
    if not ctx.enabled:
        return flag
    tensor = torch.tensor([int(flag)], dtype=torch.int32)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX, group=ctx.control_group)
    return bool(tensor.item())


def stop_together(work: Callable[[], T], ctx: Dist, runs_here: bool = True) -> T | None:
    """`work()` on the ranks where `runs_here` (None elsewhere); if it raises a UserError on any rank,
    every rank stops: that rank with its error, the others quietly.

    A rank that failed alone would leave the others waiting forever in their next collective.
    """
    result, failure = None, None
    if runs_here:
        try:
            result = work()
        except UserError as err:
            failure = err
    if any_rank(failure is not None, ctx):
        if failure is not None:
            raise failure
        raise SystemExit(2)  # the failing rank says why, in one line
    return result


def on_rank0(work: Callable[[], T], ctx: Dist) -> T | None:
    """`work()` on rank 0 alone (None on the others); a UserError it raises stops every rank."""
    return stop_together(work, ctx, ctx.is_main)


def all_gather_objects(obj) -> list:
    """Every rank's `obj` (on every rank); [obj] when running alone."""
    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj, group=None)
    return gathered


def broadcast_object(obj):
    """Rank 0's `obj` on every rank (pickled: for small objects); `obj` itself when running alone."""
    if not (dist.is_available() and dist.is_initialized()):
        return obj
    carried = [obj]
    dist.broadcast_object_list(carried, src=0)
    return carried[0]


# torch.distributed.tensor is imported where it is used: it takes a second and a half to import, and
# a command that never shards (prepare, generate, export) need not wait for it.


def local_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """This rank's part of a tensor: the local shard of an FSDP parameter, any other tensor itself."""
    from torch.distributed.tensor import DTensor

    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


def own_part(full: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """This rank's part of the whole tensor `full` (the same on every rank), laid out as `like` (an
    fsdp shard): taken, not sent; `full` itself when `like` is no shard."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    if not isinstance(like, DTensor):
        return full
    return distribute_tensor(full, like.device_mesh, like.placements, src_data_rank=None).to_local()


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
