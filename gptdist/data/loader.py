"""A rank's micro-batches for each optimizer step: the sampler's share of the global batch, read from
the windows of the train split.

The global batch (sequences per optimizer step) is fixed for the whole run; on another world
size after a resume, gradient accumulation adapts to keep it.
"""

import time

import torch

from ..distributed import Dist
from ..errors import UserError
from .sampler import DistributedStepSampler
from .windows import TokenWindows


class StepLoader:
    def __init__(self, windows: TokenWindows, global_batch: int, micro_batch: int, ctx: Dist, seed: int):
        if global_batch % (micro_batch * ctx.world_size):
            raise UserError(f"the run's global batch of {global_batch} sequences cannot be split into "
                            f"micro-batches of {micro_batch} on {ctx.world_size} processes; change "
                            "train.micro_batch_size")
        if global_batch > windows.num_samples:
            raise UserError(f"a global batch of {global_batch} sequences is larger than the train split "
                            f"({windows.num_samples} samples of {windows.window} tokens); "
                            "lower train.micro_batch_size or train.grad_accum_steps")
        self.windows, self.micro_batch, self.device = windows, micro_batch, ctx.device
        # micro-batches per step on this rank
        self.grad_accum = global_batch // (micro_batch * ctx.world_size)
        self.sampler = DistributedStepSampler(windows.num_samples, global_batch, ctx.rank, ctx.world_size,
                                              seed)
        self.seconds = 0.0  # spent in `next`: the data's share of a step (benchmarks read it)

    def next(self) -> list[torch.Tensor]:
        """This rank's micro-batches for the next optimizer step: all the data loading of a step."""
        started = time.perf_counter()
        batches = self._read()
        self.seconds += time.perf_counter() - started
        return batches

    def _read(self) -> list[torch.Tensor]:
        if self.sampler.epoch_done():
            self.sampler.set_epoch(self.sampler.epoch + 1)
        indices = self.sampler.next_step()
        micro = self.micro_batch
        batches = [self.windows.batch(indices[i * micro : (i + 1) * micro]) for i in range(self.grad_accum)]
        if self.device.type == "cuda":  # pinned pages copy asynchronously, overlapping compute
            return [b.pin_memory().to(self.device, non_blocking=True) for b in batches]
        return batches

    def placeholder_batch(self) -> torch.Tensor:
        """A micro-batch of the real one's shape and type, all token 0, that takes nothing from the data."""
        return torch.zeros(self.micro_batch, self.windows.window, dtype=torch.long, device=self.device)

    @property
    def epoch(self) -> float:
        """Epochs done, with the fraction of the current one."""
        return self.sampler.epoch + self.sampler.position / self.sampler.num_samples
