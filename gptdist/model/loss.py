"""The training objective: next-token cross-entropy, in fp32.

Computed in the model's forward (GPTModel with targets, LogitHead.loss), it is part of the graph that
training compiles: inductor fuses the fp32 upcast, the softmax, the loss and their backward into a
few reductions over the logits. Computed outside it, the same loss makes an fp32 copy of the whole
(batch x tokens x vocabulary) logits tensor and runs eager softmax kernels on it, forward and
backward: on GPUs that was a third of a step.
"""

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100  # a target that counts for nothing (padding rows of an evaluation batch)


def next_token_loss(logits: torch.Tensor, targets: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy of every position's prediction of the next token, in fp32."""
    return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), reduction=reduction,
                           ignore_index=IGNORE_INDEX)
