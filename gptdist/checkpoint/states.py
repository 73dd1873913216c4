"""The states a checkpoint holds beside the sampler, schedule, scaler and tracker: model, optimizer,
progress and every rank's RNG.

Model and optimizer are the same states under ddp and fsdp. Under fsdp each rank holds a shard
of every parameter and of its AdamW moments; a checkpoint must not depend on how the state was
split. torch.distributed.checkpoint's state-dict helpers give it in two forms:

- full (`state_dict`): whole tensors, keyed as `GPTModel.state_dict()` keys them; the optimizer's
  state keyed by parameter name, not by position. Under fsdp the shards are gathered into rank
  0's host memory (the other ranks get nothing), so the single checkpoint file is the same
  whatever the parallelism and world size, and it loads into either.
- sharded (`sharded_state_dict`): this rank's shards, for a torch.distributed.checkpoint
  folder that every rank writes its part of and that any world size reads back.
"""

import random
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.fsdp import FSDPModule

from .. import distributed
from . import broadcast

# activation checkpointing's module, absent from state dict keys
_WRAPPER_PREFIX = "_checkpoint_wrapped_module."


def _from_rank0() -> StateDictOptions:
    # Only rank 0 reads a checkpoint file (resume.py): under fsdp the others pass {} and receive each
    # whole tensor in turn, keeping their shard of it (broadcast.py does it for ddp).
    return StateDictOptions(full_state_dict=True, broadcast_from_rank0=dist.is_initialized())


def _full(model: nn.Module) -> StateDictOptions:
    # cpu_offload under fsdp: the gathered tensors go to rank 0's host memory, one at a time, and
    # never stay whole on any GPU; unsharded, the tensors are the model's own (the snapshot copies them).
    return StateDictOptions(full_state_dict=True, cpu_offload=isinstance(model, FSDPModule))


class ModelState:
    def __init__(self, model: nn.Module):
        self.model = model

    def state_dict(self) -> dict:
        return get_model_state_dict(self.model, options=_full(self.model))

    def load_state_dict(self, state: dict) -> None:
        """Every rank at once: rank 0's `state` (whole tensors) into every rank's model."""
        if not broadcast.replicated(self.model):  # one process, or fsdp
            set_model_state_dict(self.model, state, options=_from_rank0())
            return
        if dist.get_rank() == 0:
            set_model_state_dict(self.model, state, options=StateDictOptions(full_state_dict=True))
        broadcast.into_place(self.model.state_dict().values())

    def sharded_state_dict(self) -> dict:
        return get_model_state_dict(self.model)

    def load_sharded_state_dict(self, state: dict) -> None:
        set_model_state_dict(self.model, state)


class OptimizerState:
    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer):
        self.model, self.optimizer = model, optimizer

    def state_dict(self) -> dict:
        return get_optimizer_state_dict(self.model, self.optimizer, options=_full(self.model))

    def load_state_dict(self, state: dict) -> None:
        """Every rank at once: rank 0's `state` (whole tensors) into every rank's optimizer."""
        if state and not isinstance(next(iter(state["param_groups"][0]["params"]), ""), str):
            state = self._keyed_by_name(state)
        if not broadcast.replicated(self.model):  # one process, or fsdp
            set_optimizer_state_dict(self.model, self.optimizer, state, options=_from_rank0())
            return
        if dist.get_rank() == 0:
            set_optimizer_state_dict(self.model, self.optimizer, state,
                                     options=StateDictOptions(full_state_dict=True))
        broadcast.optimizer_from_rank0(self.optimizer, next(self.model.parameters()).device)

    def sharded_state_dict(self) -> dict:
        return get_optimizer_state_dict(self.model, self.optimizer)

    def load_sharded_state_dict(self, state: dict) -> None:
        set_optimizer_state_dict(self.model, self.optimizer, state)

    def _keyed_by_name(self, state: dict) -> dict:
        """A torch.optim state dict (checkpoint format 1: parameters numbered in the order of the
        param groups) keyed by parameter name instead, as the loader expects."""
        names = {param: name.replace(_WRAPPER_PREFIX, "") for name, param in self.model.named_parameters()}
        ordered = [names[param] for group in self.optimizer.param_groups for param in group["params"]]
        return {
            "state": {ordered[index]: values for index, values in state["state"].items()},
            "param_groups": [{**group, "params": [ordered[index] for index in group["params"]]}
                             for group in state["param_groups"]],
        }


@dataclass
class Progress:
    """Where the run is: optimizer steps done, tokens trained on, and the global batch it uses."""

    step: int = 0
    tokens_seen: int = 0
    global_batch: int = 0

    def state_dict(self) -> dict:
        return {"step": self.step, "tokens_seen": self.tokens_seen, "global_batch": self.global_batch}

    def load_state_dict(self, state: dict) -> None:
        self.step, self.tokens_seen = state["step"], state["tokens_seen"]
        self.global_batch = state["global_batch"]


def _rank_rng_state() -> dict:
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() and torch.cuda.is_initialized()
        else None,
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": [list(s) if isinstance(s, tuple) else s for s in random.getstate()],
    }


class RNGState:
    """The RNG states of every rank (torch CPU and CUDA, numpy, python), gathered to one list.

    Dropout draws on them, so an exact resume needs each rank's own stream back. A rank
    that did not exist in the saved run (a resume on more ranks) gets a fresh seed.
    """

    def __init__(self, ctx: distributed.Dist, seed: int):
        self.ctx, self.seed = ctx, seed

    def state_dict(self) -> dict:
        return {"ranks": distributed.all_gather_objects(_rank_rng_state())}

    def load_state_dict(self, state: dict) -> None:
        ranks = state["ranks"]
        if self.ctx.rank >= len(ranks):
            torch.manual_seed(self.seed + self.ctx.rank + len(ranks))  # a stream no saved rank used
            return
        mine = ranks[self.ctx.rank]
        torch.set_rng_state(mine["torch"])
        if mine["cuda"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state(mine["cuda"])
        np_state = mine["numpy"]
        np.random.set_state(("MT19937", np_state["keys"].numpy().astype(np.uint32), np_state["pos"],
                             np_state["has_gauss"], np_state["cached_gaussian"]))
        version, internal, gauss = mine["python"]
        random.setstate((version, tuple(internal), gauss))
