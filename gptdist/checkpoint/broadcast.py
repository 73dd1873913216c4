"""A checkpoint file's model and optimizer, read by rank 0 alone, reaching every rank at a resume.

Under fsdp torch.distributed.checkpoint's `broadcast_from_rank0` does it: each whole tensor crosses
once and every rank keeps only its shard of it. Under ddp every rank holds the whole state, and
that option would keep each tensor it receives beside the rank's own until all had arrived: a
second copy of the state on every rank. Here rank 0 loads the file as one process would, then
sends each tensor straight into the others' own tensors, in place and one at a time.
"""

from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.fsdp import FSDPModule

from .. import distributed


def replicated(model: nn.Module) -> bool:
    """Whether every rank holds the whole model (ddp, or one process under torchrun)."""
    return dist.is_initialized() and not isinstance(model, FSDPModule)


def into_place(tensors: Iterable[torch.Tensor]) -> None:
    """Every rank: rank 0's values into its own tensors of the same shapes (in the same order)."""
    for tensor in tensors:
        dist.broadcast(tensor, src=0)


@dataclass(frozen=True)
class _Layout:
    """A tensor of an optimizer's state, without its values."""

    shape: tuple
    dtype: torch.dtype


def _state_tensors(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    """The optimizer's state tensors (its own, not copies) in an order every rank agrees on."""
    state = optimizer.state_dict()["state"]
    return [state[index][key] for index in sorted(state) for key in sorted(state[index])
            if isinstance(state[index][key], torch.Tensor)]


def optimizer_from_rank0(optimizer: torch.optim.Optimizer, device: torch.device) -> None:
    """Every rank, once rank 0's optimizer is loaded: the others take its layout (their state
    allocated once, as a first step would allocate it) and then its values."""
    def layout(value):
        if isinstance(value, torch.Tensor):
            return _Layout(tuple(value.shape), value.dtype)
        if isinstance(value, dict):
            return {key: layout(item) for key, item in value.items()}
        return value

    shape = distributed.broadcast_object(layout(optimizer.state_dict()) if dist.get_rank() == 0 else None)
    if dist.get_rank() != 0:
        state = {index: {key: torch.empty(v.shape, dtype=v.dtype, device=device) if isinstance(v, _Layout)
                         else v for key, v in values.items()}
                 for index, values in shape["state"].items()}
        optimizer.load_state_dict({"state": state, "param_groups": shape["param_groups"]})
    into_place(_state_tensors(optimizer))
