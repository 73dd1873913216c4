"""Loss and perplexity over a fixed set of a split's samples, averaged across ranks."""

import math

import numpy as np
import torch
from torch import nn

from .. import distributed
from ..data.windows import TokenWindows
from ..model.loss import IGNORE_INDEX


def eval_indices(num_samples: int, count: int) -> np.ndarray:
    """`count` samples spread evenly over the split: the same every evaluation, no RNG drawn."""
    count = min(count, num_samples)
    return np.linspace(0, num_samples - 1, count).round().astype(np.int64)


def full_batch(batch: torch.Tensor, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(tokens, targets) of `batch` padded to `rows` rows, the padding's targets counting for nothing.

    The loss takes tokens[:, :-1] and targets[:, 1:]: slices of (rows, context_length + 1)
    tensors, as in a training step. Every evaluation batch then has the shape and strides of a
    training batch, so a compiled loss compiles once for evaluation.
    """
    tokens = batch.new_zeros(rows, batch.shape[1])
    targets = batch.new_full((rows, batch.shape[1]), IGNORE_INDEX)
    tokens[: len(batch)] = targets[: len(batch)] = batch
    return tokens, targets


@torch.no_grad()
def evaluate_loss(loss_module: nn.Module, windows: TokenWindows, batches: int, micro_batch: int,
                  ctx: distributed.Dist, autocast) -> float:
    """Mean next-token loss over `batches` batches per rank, the ranks' shares summed exactly.

    `loss_module` is called as (inputs, targets, reduction="sum"): a GPTModel, or the model as
    training compiled and wrapped it.
    """
    was_training = loss_module.training
    loss_module.eval()
    everyone = eval_indices(windows.num_samples, batches * micro_batch * ctx.world_size)
    indices = everyone[ctx.rank :: ctx.world_size]
    totals = torch.zeros(2, dtype=torch.float64, device=ctx.device)  # loss sum, token count
    for start in range(0, len(indices), micro_batch):
        batch = windows.batch(indices[start : start + micro_batch])
        tokens, targets = (t.to(ctx.device) for t in full_batch(batch, micro_batch))
        with autocast:
            totals[0] += loss_module(tokens[:, :-1], targets[:, 1:], reduction="sum").double()
        totals[1] += batch[:, 1:].numel()
    loss_module.train(was_training)
    totals = distributed.all_reduce_sum(totals)
    return (totals[0] / totals[1]).item()


def perplexity(loss: float) -> float:
    return math.exp(min(loss, 700.0))
