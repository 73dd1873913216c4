"""The non-finite guard, decided on the device so that a training step never waits for the GPU.

A step whose gradient norm is not finite is never applied. The decision is a tensor handed to
the fused AdamW as its `found_inf` (the way GradScaler skips fp16 steps): the optimizer skips
the update and rolls back its step count on the device. A run of bad steps is counted on the
device as well (with fp16, where the scaler's overflows are normal, only a non-finite loss
counts), and the host reads the counters only where the loop syncs anyway: at logs,
evaluations and checkpoints. Once train.max_bad_steps steps in a row were bad, every later
update is skipped too, until the host reads the counters and stops the run: at most
logging.interval - 1 further steps run, none of them applied.
"""

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from .. import distributed
from ..distributed import print0
from ..errors import UserError


class NonFiniteGuard:
    def __init__(self, max_bad_steps: int, device: torch.device):
        self.limit = max_bad_steps
        self.run = torch.zeros((), dtype=torch.int32, device=device)  # bad steps in a row, up to now
        self.longest = torch.zeros((), dtype=torch.int32, device=device)  # the longest such run
        self.skipped = torch.zeros((), dtype=torch.int32, device=device)  # updates skipped in this process
        self.found_inf = torch.zeros((), dtype=torch.float32, device=device)  # 1.0: skip this step's update
        self.reported = 0

    def update(self, grad_norm: torch.Tensor, loss: torch.Tensor, loss_scaling: bool) -> torch.Tensor:
        """Record one step; returns the flag for the optimizer's `found_inf` (all on the device)."""
        bad = ~torch.isfinite(loss if loss_scaling else grad_norm)
        self.run.add_(1).mul_(bad)
        torch.maximum(self.longest, self.run, out=self.longest)
        skip = ~torch.isfinite(grad_norm) | (self.longest >= self.limit)
        self.skipped.add_(skip)
        return self.found_inf.copy_(skip)

    def diverged(self, step: int) -> bool:
        """Read the counters (a host sync), warn about skipped steps; True once the limit was reached.

        The counters are reduced over ranks first, so that every rank comes to the same verdict.
        """
        longest, skipped = distributed.all_reduce_max(torch.stack([self.longest, self.skipped])).tolist()
        if skipped > self.reported:
            print0(f"warning: {skipped - self.reported} update(s) skipped up to step {step}: non-finite loss "
                   f"or gradient norm ({skipped} in this run, stopping at {self.limit} in a row)")
            self.reported = skipped
        return longest >= self.limit

    def stop_if_diverged(self, step: int, newest_checkpoint: Callable[[], Path | None]) -> None:
        """Stop a run whose last train.max_bad_steps steps in a row were not finite (reads the counters: a
        sync); the line names the checkpoint to resume from."""
        if self.diverged(step):
            newest = newest_checkpoint()
            raise UserError(
                f"training diverged: {self.limit} steps in a row with a non-finite loss or gradient norm "
                f"(seen at step {step}; none of them was applied); lower optim.lr or raise "
                "schedule.warmup_steps, then resume" + (f" from {newest}" if newest else "")
            )


def check_finite_weights(model: nn.Module, step: int, ctx: distributed.Dist) -> None:
    """Refuse to checkpoint non-finite weights. Each rank checks what it holds (its shards under fsdp),
    all in one sync, and every rank learns the verdict."""
    finite = torch.stack([torch.isfinite(distributed.local_tensor(p)).all() for p in model.parameters()])
    if distributed.any_rank(not bool(finite.all()), ctx):
        raise UserError(f"the weights are not finite at step {step}: no checkpoint written")
