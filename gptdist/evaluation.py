"""Loss and perplexity over a fixed set of a split's samples, averaged across ranks."""

import math

import numpy as np
import torch
import torch.nn.functional as F

from . import distributed
from .data import TokenWindows


def next_token_loss(logits: torch.Tensor, targets: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy of every position's prediction of the next token."""
    return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), reduction=reduction)


def eval_indices(num_samples: int, count: int) -> np.ndarray:
    """`count` samples spread evenly over the split: the same every evaluation, no RNG drawn."""
    count = min(count, num_samples)
    return np.linspace(0, num_samples - 1, count).round().astype(np.int64)


@torch.no_grad()
def evaluate_loss(model, windows: TokenWindows, batches: int, micro_batch: int, ctx: distributed.Dist,
                  autocast) -> float:
    """Mean next-token loss over `batches` batches per rank, the ranks' shares summed exactly."""
    was_training = model.training
    model.eval()
    indices = eval_indices(windows.num_samples, batches * micro_batch * ctx.world_size)[ctx.rank :: ctx.world_size]
    totals = torch.zeros(2, dtype=torch.float64, device=ctx.device)  # loss sum, token count
    for start in range(0, len(indices), micro_batch):
        batch = windows.batch(indices[start : start + micro_batch]).to(ctx.device)
        with autocast:
            logits = model(batch[:, :-1])
        totals[0] += next_token_loss(logits, batch[:, 1:], reduction="sum").double()
        totals[1] += batch[:, 1:].numel()
    model.train(was_training)
    totals = distributed.all_reduce_sum(totals)
    return (totals[0] / totals[1]).item()


def perplexity(loss: float) -> float:
    return math.exp(min(loss, 700.0))
