"""What turns the model into what a training step runs: FP8 layers, activation checkpointing,
torch.compile, and DDP or FSDP2.

`parallelize` is the one place that knows how the model is wrapped; the Trainer runs a step's
micro-batches through the result's `micro_steps` (its `loss`, and `grad_sync` around each backward)
and clips through `clip_grad_norm`, the same for every kind of parallelism. Order matters: FP8 layers and the
activation-checkpointing wrappers replace modules, so they come first.

- ddp: DDP wraps the model (whose forward with targets is the loss) and torch.compile wraps DDP, so
  that dynamo's DDP support splits the compiled backward at the gradient buckets and each
  bucket's all-reduce overlaps the rest of the backward.
- fsdp: `fully_shard` on every block and on the root, as torchtitan does; each block is
  compiled on its own (a graph per block, reused by all of them), since FSDP2's gathers and
  reductions run between blocks, in hooks a whole-model graph would have to trace through.
"""

import contextlib
import inspect
import logging
import time
import warnings
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor
from torch.nn.parallel import DistributedDataParallel

from ..config import TrainConfig
from ..distributed import Dist
from ..errors import UserError
from . import float8
from .heap import release_freed_memory


@dataclass
class TrainingModel:
    loss: nn.Module  # (inputs, targets, reduction="mean") -> loss; its train()/eval() reach the model
    model: nn.Module  # the model as trained: its parameters are FSDP2's shards under fsdp
    ddp: DistributedDataParallel | None = None

    def grad_sync(self, last_micro_step: bool):
        """Of the micro-steps of one optimizer step only the last reduces gradients (DDP's all-reduce,
        FSDP's reduce-scatter); the others accumulate locally."""
        if isinstance(self.model, FSDPModule):
            self.model.set_requires_gradient_sync(last_micro_step)
            return contextlib.nullcontext()
        if self.ddp is None or last_micro_step:
            return contextlib.nullcontext()
        return self.ddp.no_sync()

    def micro_steps(self, batches: list[torch.Tensor], autocast, scale=lambda loss: loss):
        """The forward and backward of each micro-batch of one optimizer step: gradients accumulate
        locally and are reduced in the last one's backward; each loss is backpropagated divided by the
        micro-batches (and through `scale`: fp16's loss scaler). Yields each loss once its backward is
        done (the training step, and the memory measures of gptdist.plan and gptdist.bench memory)."""
        for micro_step, batch in enumerate(batches):
            with self.grad_sync(last_micro_step=micro_step == len(batches) - 1):
                with autocast:
                    loss = self.loss(batch[:, :-1], batch[:, 1:])
                scale(loss / len(batches)).backward()
            yield loss

    def lay_out_buckets(self, tokens: torch.Tensor, autocast) -> None:
        """Under DDP, before a run's first step: one backward on `tokens` whose gradients are dropped,
        so that every step reduces its gradients in the same buckets. The random streams are left
        as they were.

        DDP reduces its first backward in one bucket, then lays its buckets out in the order the
        gradients came in. An all-reduce's sum depends on where a value sits in its bucket (over 2
        ranks a + b is the same either way, over more it is not): a resumed run whose first step
        used the first layout would not reach the uninterrupted run's weights bit for bit. Under
        autocast and with the step's shapes, so that a compiled model reuses this graph. The new
        buckets are made here, as DDP's join hook makes them, before the optimizer's state exists
        in a fresh run, not beside it in the second step's forward.
        """
        if self.ddp is None:
            return
        with torch.random.fork_rng(devices=[tokens.device] if tokens.device.type == "cuda" else []):
            with autocast:
                loss = self.loss(tokens[:, :-1], tokens[:, 1:])
            loss.backward()
        self.model.zero_grad(set_to_none=True)
        self.ddp.reducer._rebuild_buckets()
        # on a CPU the heap keeps freed blocks (heap.py): the new buckets, cut from those the
        # activations left, would leave holes too small for the first step's, which would then grow
        # the heap by all of them
        release_freed_memory()

    def clip_grad_norm(self, max_norm: float | None) -> torch.Tensor:
        """Scale the gradients to a global norm of at most `max_norm` (None: leave them); returns the norm
        before (on the device).

        Under fsdp every rank holds a shard of each gradient: the shards' norms are combined
        (`full_tensor`, one all-reduce) so that every rank clips by the norm of the whole gradient.
        """
        params = [p for p in self.model.parameters() if p.grad is not None]
        norm = torch.nn.utils.get_total_norm([p.grad for p in params])
        if isinstance(norm, DTensor):
            norm = norm.full_tensor()
        if max_norm is not None:
            torch.nn.utils.clip_grads_with_norm_(params, max_norm, norm)
        return norm


# The only buffer (the padding bias) is constant, so DDP need not broadcast buffers before every
# forward. torch 2.13 names the option forward_sync_buffers (broadcast_buffers warns there).
NO_BUFFER_SYNC = ({"forward_sync_buffers": False}
                  if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
                  else {"broadcast_buffers": False})


def check_supported(cfg: TrainConfig, ctx: Dist, dtype: torch.dtype) -> None:
    """The combinations train.parallel: fsdp cannot run, each refused in one line before any work."""
    if cfg.parallel != "fsdp":
        return
    if dtype == torch.float16:
        raise UserError("train.parallel: fsdp does not support train.precision: fp16 (its loss scaling is "
                        "not built for sharded gradients); use bf16 or fp32")
    if cfg.compile and cfg.compile_mode in ("reduce-overhead", "max-autotune"):
        raise UserError(f"train.parallel: fsdp does not support train.compile_mode: {cfg.compile_mode} (CUDA "
                        "graphs cannot hold FSDP's collectives); use default or max-autotune-no-cudagraphs")
    if not ctx.enabled:
        raise UserError("train.parallel: fsdp shards the model across the processes torchrun starts; run "
                        "torchrun --nproc_per_node=N -m gptdist.train ... (or set train.parallel: ddp)")


def _checkpoint_blocks(model: nn.Module) -> None:
    """Keep only each block's input in forward and recompute the block in backward.

    The wrapper's own name is left out of state_dict() keys, so checkpoints do not change.
    """
    for i, block in enumerate(model.trf_blocks):
        model.trf_blocks[i] = checkpoint_wrapper(block, preserve_rng_state=True)


def _timed_all_reduce(phases, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    """DDP's own all-reduce of a gradient bucket (the mean over ranks: multiplied by 1/N, then summed, as
    DDP does it without a hook, to the bit), noting when the bucket was ready on this rank: the last
    one's time, against the backward's end, is what this rank waited for the others (phases.py,
    stragglers.py)."""
    phases.gradients_ready = time.monotonic()
    buffer = bucket.buffer()
    buffer.mul_(1.0 / dist.get_world_size())
    return dist.all_reduce(buffer, async_op=True).get_future().then(lambda done: done.value()[0])


def _data_parallel(model: nn.Module, cfg: TrainConfig, ctx: Dist, gradients_ready) -> TrainingModel:
    loss: nn.Module = model
    ddp = None
    if ctx.enabled and ctx.world_size > 1:  # alone (torchrun with one process) there is nothing to reduce
        # Gradients as views into the all-reduce buckets: no copy in and out of them.
        loss = ddp = DistributedDataParallel(
            loss, device_ids=[ctx.local_rank] if ctx.device.type == "cuda" else None,
            gradient_as_bucket_view=True, bucket_cap_mb=cfg.ddp_bucket_mb, **NO_BUFFER_SYNC,
        )
        if gradients_ready is not None:
            ddp.register_comm_hook(gradients_ready, _timed_all_reduce)
    if cfg.compile:
        if ddp is not None:  # dynamo drops DDP's profiler range from the graph, as it should, and says so
            logging.getLogger("torch._dynamo.variables.ctx_manager").addFilter(_not_a_profiler_notice)
        loss = torch.compile(loss, mode=cfg.compile_mode)
    return TrainingModel(loss, model, ddp)


def _not_a_profiler_notice(record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith("Profiler record function")


def _fully_sharded(model: nn.Module, cfg: TrainConfig, dtype: torch.dtype, mesh) -> TrainingModel:
    # Blocks compute in the training dtype from weights gathered in it (half the all-gather
    # traffic under bf16); gradients are reduced in fp32, and the sharded weights and AdamW
    # moments stay fp32.
    policy = MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32)
    for block in model.trf_blocks:
        if cfg.compile:
            block.compile(mode=cfg.compile_mode)
        fully_shard(block, mesh=mesh, mp_policy=policy, reshard_after_forward=cfg.fsdp_reshard_after_forward)
    # The root holds the rest: embeddings, final norm and head (one matrix when tied). It is
    # not resharded after the forward: the backward starts with the head, which needs it at once.
    fully_shard(model, mesh=mesh, mp_policy=policy, reshard_after_forward=False)
    # FSDP2 warns that the model returns a view (the head's matmul, reshaped to batch x tokens x
    # vocabulary), which an in-place op could detach from its backward hook; nothing modifies it.
    warnings.filterwarnings("ignore", message="FSDP2-wrapped module .* returned a view tensor")
    return TrainingModel(model, model)


def parallelize(model: nn.Module, cfg: TrainConfig, ctx: Dist, dtype: torch.dtype,
                gradients_ready=None, mesh=None) -> TrainingModel:
    """The model ready to train: build the optimizer from its parameters afterwards (FSDP replaces them).
    Under ddp, `gradients_ready` (a phases.Phases) is told when each gradient bucket is ready. Under fsdp,
    `mesh` is the device mesh to shard over (None: every rank of the default group; the plan makes its own
    before faking tensors, planning/step_memory.py)."""
    check_supported(cfg, ctx, dtype)
    if cfg.float8:
        float8.convert_linears(model, cfg.float8, ctx.device)
    if cfg.activation_checkpointing == "blocks":
        _checkpoint_blocks(model)
    if cfg.parallel == "fsdp":
        return _fully_sharded(model, cfg, dtype, mesh)
    return _data_parallel(model, cfg, ctx, gradients_ready)
