"""What turns the model into what a training step runs: FP8 linear layers, the loss, DDP, torch.compile.

`parallelize` is the one place that knows how the model is wrapped; the Trainer only calls the
result's `loss` and enters `grad_sync` around each micro-step's backward. Order matters:
FP8 layers replace modules, so they come first; DDP wraps the loss module (model and loss
together), and torch.compile wraps DDP, so that dynamo's DDP support splits the compiled
backward at the gradient buckets and each bucket's all-reduce overlaps the rest of the
backward (a compiled module inside DDP would hand over all gradients at the very end).
"""

import contextlib
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from . import float8
from .config import TrainConfig
from .distributed import Dist
from .loss import NextTokenLoss


@dataclass
class TrainingModel:
    loss: nn.Module  # (inputs, targets, reduction="mean") -> loss; its train()/eval() reach the model
    ddp: DistributedDataParallel | None = None

    def grad_sync(self, last_micro_step: bool):
        """DDP all-reduces gradients in backward; of the micro-steps of one optimizer step only the last needs to."""
        if self.ddp is None or last_micro_step:
            return contextlib.nullcontext()
        return self.ddp.no_sync()


def parallelize(model: nn.Module, cfg: TrainConfig, ctx: Dist) -> TrainingModel:
    if cfg.float8:
        float8.convert_linears(model, cfg.float8, ctx.device)
    loss: nn.Module = NextTokenLoss(model)
    ddp = None
    if ctx.enabled and ctx.world_size > 1:  # alone (torchrun with one process) there is nothing to reduce
        # Gradients as views into the all-reduce buckets: no copy in and out of them. The only
        # buffer (the padding bias) is constant, so DDP need not broadcast buffers every forward.
        loss = ddp = DistributedDataParallel(
            loss, device_ids=[ctx.local_rank] if ctx.device.type == "cuda" else None,
            gradient_as_bucket_view=True, bucket_cap_mb=cfg.ddp_bucket_mb, broadcast_buffers=False,
        )
    if cfg.compile:
        loss = torch.compile(loss, mode=None if cfg.compile_mode == "default" else cfg.compile_mode)
    return TrainingModel(loss, ddp)
