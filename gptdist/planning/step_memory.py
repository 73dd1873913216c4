"""Memory per GPU, measured without a GPU or the memory: one rank's training steps of the real model, in
its precision and parallel form, run on fake tensors (shapes and dtypes, no data) inside a fake process
group of the planned world size.

The model, `parallelize` (FP8 layers, activation checkpointing, DDP or FSDP2 over the fake group) and the
optimizer are the ones a run builds; two optimizer steps of up to two micro-batches each are run, so that
the optimizer's state exists and gradients accumulate as they do, and the second step's forward and
backward are measured. The figures are rank 0's, the largest
share under fsdp (its shards are the first, full chunks):

- parameters, gradients, optimizer: what lives through the run (observe/memory.py `state_bytes`, as
  `gptdist.bench memory` counts a real run's);
- activations: what one micro-batch's forward keeps for its backward (`SavedForBackward`, the same count);
- peak: the most held at once in the measured forward and backward (observe/memory.py `peak_tracker`:
  gathered weights and reduce buffers included under fsdp);
- temporaries: the rest of the peak (logits, the backward's intermediates, communication buffers).

The step is measured uncompiled: a compiled step fuses operations and keeps fewer intermediates, so the
peak of a `train.compile` run is lower (an upper bound, not an estimate of it).
"""

import contextlib
import dataclasses
import gc
import io
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.distributed.device_mesh import init_device_mesh

from ..config import Config
from ..distributed import Dist
from ..model.gpt import GPTModel
from ..observe.memory import SavedForBackward, peak_tracker, state_bytes, tracked_peak
from ..training import optimizer
from ..training.parallelize import parallelize

GIB = 2**30


@dataclass
class StepMemory:
    """Bytes on one GPU (rank 0) for one micro-batch size."""

    micro_batch: int
    parameters: int
    gradients: int
    optimizer: int
    activations: int
    peak: int

    @property
    def temporaries(self) -> int:
        return max(0, self.peak - self.parameters - self.gradients - self.optimizer - self.activations)

    def bytes(self) -> dict[str, int]:
        return {
            "parameters": self.parameters,
            "gradients": self.gradients,
            "optimizer": self.optimizer,
            "activations": self.activations,
            "temporaries": self.temporaries,
            "peak": self.peak,
        }

    def gib(self) -> dict[str, float]:
        return {name: round(value / GIB, 3) for name, value in self.bytes().items()}


@contextlib.contextmanager
def fake_world(world_size: int, parallel: str):
    """What a run's rank 0 would have at `world_size`: yields its Dist (its device the CPU, whose fake
    tensors stand for the GPU's) and, under fsdp, the device mesh to shard over, in a fake process group
    (collectives that do nothing) made before any tensor is faked. Under ddp no group is made: DDP's
    bucket memory is accounted as resident gradients (see `measure`), as `gradient_as_bucket_view` makes
    it, and its other work is communication."""
    cpu = torch.device("cpu")
    if parallel != "fsdp":
        yield Dist(rank=0, local_rank=0, world_size=world_size, device=cpu), None
        return
    from torch.testing._internal.distributed.fake_pg import FakeStore  # registers the "fake" backend

    dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=world_size)
    try:
        yield (
            Dist(rank=0, local_rank=0, world_size=world_size, device=cpu),
            init_device_mesh("cpu", (world_size,)),
        )
    finally:
        dist.destroy_process_group()


def measure(
    cfg: Config, ctx: Dist, mesh, dtype: torch.dtype, micro_batch: int, grad_accum: int
) -> StepMemory:
    """Rank 0's memory for a step of `cfg`'s model at `micro_batch` with `grad_accum` micro-batches a step,
    its matmuls in `dtype` (see above)."""
    train = dataclasses.replace(cfg.train, compile=False, micro_batch_size=micro_batch)
    fake = FakeTensorMode()
    with fake:
        model = GPTModel(cfg.model)
        # train.float8's notice that a CPU emulates FP8 is a run's, not the plan's: its fake tensors stand
        # for the GPU's
        with contextlib.redirect_stdout(io.StringIO()):
            parallel = parallelize(model, train, ctx, dtype, mesh=mesh)
        steps = optimizer.build(model, cfg.optim)
        tokens = torch.zeros(micro_batch, cfg.model.context_length + 1, dtype=torch.long)
    autocast = torch.autocast("cpu", dtype) if dtype != torch.float32 else contextlib.nullcontext()
    micro_steps = min(2, grad_accum)  # a second micro-batch meets the first one's gradients
    # DDP's gradients live in its all-reduce buckets, allocated once for the whole run
    buckets = train.parallel == "ddp" and ctx.world_size > 1

    with fake:
        # the first step, of one micro-batch: what its forward keeps for the backward is counted, and the
        # optimizer's state is made
        with SavedForBackward(model) as saved, autocast:
            loss = parallel.loss(tokens[:, :-1], tokens[:, 1:])
        activations = saved.bytes
        saved = None  # no hold on the saved tensors beyond their backward
        loss.backward()
        steps.step()
        steps.zero_grad(set_to_none=not buckets)
        tracker = peak_tracker(model, steps)
        # what is garbage now is freed now, and nothing during the measure: the peak is then the step's own,
        # not the moment the cyclic collector happened to run (the same plan twice, the same bytes)
        gc.collect()
        gc.disable()
        try:
            with tracker:  # the second step, with the state
                for _ in parallel.micro_steps([tokens] * micro_steps, autocast):
                    tracker.reset_mod_stats()  # a module's figures are per call; the peak is kept
        finally:
            gc.enable()
        # the optimizer's step, left out: on fake tensors the fused AdamW's in-place update is made of new
        # tensors that the real kernel never allocates, and in place it holds less than the backward did
        steps.step()
        state = state_bytes(model, steps)
    return StepMemory(
        micro_batch,
        state["parameters"],
        state["gradients"],
        state["optimizer"],
        activations,
        tracked_peak(tracker),
    )
