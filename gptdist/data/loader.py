"""A rank's micro-batches for each optimizer step: the sampler's share of the global batch, read from
the train split's windows (data/sources.py says which sampler and which windows).

The global batch (sequences per optimizer step) is fixed for the whole run; on another world
size after a resume, gradient accumulation adapts to keep it.
"""

import time

import torch

from ..distributed import Dist
from ..errors import UserError
from .mixture import MixtureSampler
from .sampler import DistributedStepSampler


class StepLoader:
    def __init__(self, sampler: DistributedStepSampler | MixtureSampler, reader, window: int,
                 micro_batch: int, ctx: Dist):
        """`reader.batch(rows)` reads the rows `sampler.next_step()` hands out, `window` tokens each."""
        global_batch = sampler.global_batch
        if global_batch % (micro_batch * ctx.world_size):
            raise UserError(f"the run's global batch of {global_batch} sequences cannot be split into "
                            f"micro-batches of {micro_batch} on {ctx.world_size} processes; change "
                            "train.micro_batch_size")
        self.sampler, self.reader, self.window = sampler, reader, window
        self.micro_batch, self.device = micro_batch, ctx.device
        # micro-batches per step on this rank
        self.grad_accum = global_batch // (micro_batch * ctx.world_size)
        self.seconds = 0.0  # spent in `next`: the data's share of a step (benchmarks read it)
        self.last_rows = None  # the windows of the last step's micro-batches (the sampler's rows)

    def next(self) -> list[torch.Tensor]:
        """This rank's micro-batches for the next optimizer step: all the data loading of a step."""
        started = time.perf_counter()
        batches = self._read()
        self.seconds += time.perf_counter() - started
        return batches

    def _read(self) -> list[torch.Tensor]:
        rows = self.last_rows = self.sampler.next_step()
        micro = self.micro_batch
        batches = [self.reader.batch(rows[i * micro : (i + 1) * micro]) for i in range(self.grad_accum)]
        if self.device.type == "cuda":  # pinned pages copy asynchronously, overlapping compute
            return [b.pin_memory().to(self.device, non_blocking=True) for b in batches]
        return batches

    def placeholder_batch(self) -> torch.Tensor:
        """A micro-batch of the real one's shape and type, all token 0, that takes nothing from the data."""
        return torch.zeros(self.micro_batch, self.window, dtype=torch.long, device=self.device)

    @property
    def epoch(self) -> float:
        """Epochs done, with the fraction of the current one."""
        return self.sampler.epochs_done
