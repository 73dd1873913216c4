"""The training objective as one module: the model and its next-token cross-entropy, compiled together.

Inside one compiled graph inductor fuses the fp32 upcast, the softmax, the loss and their
backward into a few reductions over the logits. Computed outside it, the same loss makes an
fp32 copy of the whole (batch x tokens x vocabulary) logits tensor and runs eager softmax
kernels on it, forward and backward: on GPUs that was a third of a step. Eager on a CPU, a
soft-capped model's loss is fused by hand instead (capped_loss.py).
"""

import torch
import torch.nn.functional as F
from torch import nn

from . import capped_loss

IGNORE_INDEX = -100  # a target that counts for nothing (padding rows of an evaluation batch)


def next_token_loss(logits: torch.Tensor, targets: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy of every position's prediction of the next token, in fp32."""
    return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), reduction=reduction,
                           ignore_index=IGNORE_INDEX)


class NextTokenLoss(nn.Module):
    """forward(inputs, targets) -> the loss of `model` on them: what training and evaluation compile and
    run."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, inputs: torch.Tensor, targets: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        cfg = self.model.cfg
        if cfg.logit_softcap is not None and capped_loss.fused_applies(inputs):
            logits = self.model(inputs, apply_cap=False)
            return capped_loss.capped_cross_entropy(logits, targets, cfg.logit_softcap, cfg.vocab_size,
                                                    IGNORE_INDEX, reduction)
        return next_token_loss(self.model(inputs), targets, reduction)
