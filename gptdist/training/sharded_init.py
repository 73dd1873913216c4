"""An fsdp model that no rank ever holds whole, starting from exactly an unsharded model's weights, or
from model.init_from's, which rank 0 alone reads and the others take their shards of.

The model is made on the meta device (shapes, no memory) and sharded by `fully_shard` there;
then every rank allocates its shards and fills them. The values are the ones the same seed gives
an unsharded model, bit for bit, so that ddp and fsdp runs start alike: the random draws are
made in the same order on a host copy of one module at a time (the largest a rank ever holds
whole is one module: the embedding or the head), and each rank keeps its own rows of it.

An unsharded GPTModel draws twice: each nn.Linear and nn.Embedding when it is constructed, then
model.init (`GPTModel.initialisation`). Made on the meta device, the constructors draw nothing,
so `meta_model` makes those draws on host copies of the same layers, in construction order.
"""

import copy
from collections.abc import Callable

import torch
from torch import nn
from torch.distributed.tensor import distribute_tensor

from ..config import ModelConfig
from ..distributed import local_tensor, own_part
from ..model.gpt import GPTModel

# What gives a meta model's shards their values once they are allocated, in order:
# (the model's module, a meta copy of it, what initialises it)
InitSteps = list[tuple[nn.Module, nn.Module, Callable[[nn.Module], None]]]


def meta_model(cfg: ModelConfig) -> tuple[GPTModel, InitSteps]:
    """The model on the meta device, the random stream left where an unsharded model's construction
    leaves it, and what `materialise` needs (taken before any wrapping or sharding)."""
    with torch.device("meta"):
        model = GPTModel(cfg)
    for layer in model.modules():  # the constructors' draws: these two draw in reset_parameters
        if isinstance(layer, (nn.Linear, nn.Embedding)):
            copy.deepcopy(layer).to_empty(device="cpu").reset_parameters()
    steps = [(module, copy.deepcopy(module), initialise) for module, initialise in model.initialisation()]
    return model, steps


@torch.no_grad()
def materialise(model: GPTModel, steps: InitSteps, device: torch.device) -> None:
    """Allocate this rank's shards and the buffers on `device`, and give them their initial values."""
    model.to_empty(device=device)
    model.reset_buffers()
    done: set[int] = set()  # a tied head is the embedding's matrix: set once, by the embedding's step
    while steps:  # each whole module dropped before the next is made
        module, meta_copy, initialise = steps.pop(0)
        whole = meta_copy.to_empty(device="cpu")
        initialise(whole)  # the draws, on the whole module
        for name, values in whole.named_parameters():
            param = module.get_parameter(name)
            if id(param) not in done:
                done.add(id(param))
                local_tensor(param).copy_(own_part(values.to(device), param))
    model.zero_projections()


@torch.no_grad()
def load_from_rank0(model: GPTModel, weights: dict | None, device: torch.device) -> None:
    """Allocate this rank's shards and the buffers on `device`, and fill them from rank 0's `weights`
    (model.init_from's, fitted to the model; None on the other ranks), one tensor at a time: a rank
    other than 0 holds one whole tensor at most, while it takes its part."""
    model.to_empty(device=device)
    model.reset_buffers()
    for name, param in model.named_parameters():  # a tied head once, as the embedding
        whole = weights[name].to(device) if weights is not None else \
            torch.empty(param.shape, dtype=param.dtype, device=device)
        local_tensor(param).copy_(distribute_tensor(whole, param.device_mesh, param.placements,
                                                    src_data_rank=0).to_local())
