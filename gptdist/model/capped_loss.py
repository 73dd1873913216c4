"""Next-token cross-entropy of soft-capped logits, cap * tanh(logits / cap), fused a block of rows at a
time for eager runs on a CPU.

Written as tensor ops, the cap and the loss walk the whole (tokens x vocabulary) logits some ten
times forward and backward, each op's output a new tensor of hundreds of MB that autograd keeps,
and slicing off the padded vocabulary costs a zeroed gradient of the padded shape and a copy into
it: on a 2-core CPU about 0.4 s of a 2.4 s step (docs/performance.md). Here each block of rows
stays in cache from the cap through the loss to its gradient, which the forward computes at once
and keeps (one tensor the size of the logits); the backward only scales it. Compiled, inductor
fuses the plain expression by itself; on a GPU the blocks would be thousands of kernel launches:
both take the plain expression.
"""

import torch
from torch._subclasses.fake_tensor import FakeTensor

BLOCK_BYTES = 2**23  # rows of about 8 MiB a block: cache-sized, and few enough to loop over in Python


def fused_applies(inputs: torch.Tensor) -> bool:
    return inputs.device.type == "cpu" and not torch.compiler.is_compiling()


def capped_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, cap: float, vocab_size: int,
                         ignore_index: int, reduction: str = "mean") -> torch.Tensor:
    """F.cross_entropy of cap * tanh(logits[..., :vocab_size] / cap) against `targets`, in fp32.

    logits: (..., padded vocabulary), straight from the head; targets: (...).
    """
    targets = targets.flatten()
    losses = _BlockwiseCappedLoss.apply(logits.flatten(0, -2), targets, cap, vocab_size, ignore_index)
    if reduction == "none":
        return losses
    if reduction == "sum":
        return losses.sum()
    return losses.sum() / (targets != ignore_index).sum()  # F.cross_entropy's mean: over counted targets


class _BlockwiseCappedLoss(torch.autograd.Function):
    """Each row's loss; the gradient of each row's loss, computed in the forward and kept."""

    @staticmethod
    def forward(ctx, logits, targets, cap, vocab_size, ignore_index):
        rows = len(logits)
        losses = torch.empty(rows, dtype=torch.float32, device=logits.device)
        grad = torch.empty_like(logits) if ctx.needs_input_grad[0] else None
        counted = targets != ignore_index
        in_place = grad is not None and grad.dtype == torch.float32  # else computed in fp32, then copied
        block_rows = max(1, BLOCK_BYTES // (vocab_size * 4))
        # Fake tensors (gptdist.plan's) hold no values: two blocks stand for all (the second meets what the
        # first leaves), with the same memory.
        for start in range(0, rows if not isinstance(logits, FakeTensor) else 2 * block_rows, block_rows):
            block = slice(start, start + block_rows)
            tanh = torch.div(logits[block, :vocab_size].float(), cap).tanh_()
            target = targets[block].where(counted[block], 0).unsqueeze(1)
            capped_target = tanh.gather(1, target).squeeze(1) * cap
            # exp(capped - its row maximum), in the gradient's own rows where it can be
            exp = torch.mul(tanh, cap, out=grad[block, :vocab_size] if in_place else None)
            shift = exp.amax(dim=1, keepdim=True)
            total = exp.sub_(shift).exp_().sum(dim=1, keepdim=True)
            log_total = (total.log() + shift).squeeze(1)
            losses[block] = (log_total - capped_target).where(counted[block], 0.0)
            if grad is None:
                continue
            # d loss / d capped = softmax - one-hot of the target; d capped / d logits = 1 - tanh². An
            # ignored row's gradient is 0: its total divided by 0 makes its softmax 0, and its one-hot 0.
            # (No test of the data: fake tensors, gptdist.plan's, have none to branch on.)
            weight = counted[block].unsqueeze(1).to(exp.dtype)
            softmax = exp.div_(total / weight)
            softmax.scatter_add_(1, target, -weight)
            softmax.addcmul_(softmax, tanh.square_(), value=-1)
            if not in_place:
                grad[block, :vocab_size] = softmax
        if grad is not None:
            grad[:, vocab_size:] = 0  # the padded vocabulary takes no part in the loss
            ctx.save_for_backward(grad)
        return losses

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_losses):
        (grad,) = ctx.saved_tensors
        # scaled in place: the kept gradient serves one backward (a second would find it changed)
        return grad.mul_(grad_losses.unsqueeze(1).to(grad.dtype)), None, None, None, None

