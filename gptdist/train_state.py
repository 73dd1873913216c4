"""Model and optimizer as checkpoint states, the same under ddp and fsdp.

Under fsdp each rank holds a shard of every parameter and of its AdamW moments; a checkpoint
must not depend on how the state was split. torch.distributed.checkpoint's state-dict helpers
give it in two forms:

- full (`state_dict`): whole tensors, keyed as `GPTModel.state_dict()` keys them; the optimizer's
  state keyed by parameter name, not by position. Under fsdp the shards are gathered into rank
  0's host memory (the other ranks get nothing), so the single checkpoint file is the same
  whatever the parallelism and world size, and it loads into either.
- sharded (`sharded_state_dict`): this rank's shards, for a torch.distributed.checkpoint
  folder that every rank writes its part of and that any world size reads back.
"""

import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.fsdp import FSDPModule

_WRAPPER_PREFIX = "_checkpoint_wrapped_module."  # activation checkpointing's module, absent from state dict keys


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
        set_model_state_dict(self.model, state, options=StateDictOptions(full_state_dict=True))

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
        if not isinstance(next(iter(state["param_groups"][0]["params"]), ""), str):
            state = self._keyed_by_name(state)
        set_optimizer_state_dict(self.model, self.optimizer, state, options=StateDictOptions(full_state_dict=True))

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
