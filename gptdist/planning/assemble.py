"""A run's plan at a world size on a GPU: the run's own checks at that size, memory per GPU and the
largest micro-batch, time and cost, checkpoints, data. One dict (what `--json` prints)."""

import dataclasses
from dataclasses import dataclass

import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from ..config import Config
from ..model.gpt import GPTModel
from ..observe.flops import flops_per_token
from ..observe.gpus import GPU
from ..training import checks, micro_batch, precision
from . import batch, step_memory, timing
from .epochs import data_plan

GB = 1e9


@dataclass
class Target:
    """Where the run is planned to go and what to assume of it."""

    nodes: int
    gpus_per_node: int
    gpu: GPU
    data_tokens: int | None = None  # the train split's tokens, where the data is not on this machine
    mfu: float | None = None  # None: measured for this GPU and shape, else timing.DEFAULT_MFU
    write_gbps: float = 0.4  # checkpoint writing, GB/s (one H200 node's local disk: 1.96 GB in 4.4-5.3 s)
    headroom: float = 0.1  # of the GPU's memory left free: CUDA's context, NCCL, the allocator's slack

    @property
    def world_size(self) -> int:
        return self.nodes * self.gpus_per_node


def planned_dtype(cfg: Config) -> torch.dtype:
    """train.precision on a GPU: auto is bf16 there."""
    return torch.bfloat16 if cfg.train.precision == "auto" else precision.DTYPES[cfg.train.precision]


def _with_micro_batch(cfg: Config, per_rank: int) -> Config:
    """`cfg` with auto's micro-batch as the whole share: the run's checks then see its global batch."""
    return dataclasses.replace(
        cfg, train=dataclasses.replace(cfg.train, micro_batch_size=per_rank, grad_accum_steps=1)
    )


def make_plan(cfg: Config, config_name: str, target: Target) -> dict:
    world = target.world_size
    dtype = planned_dtype(cfg)
    train = cfg.train
    per_rank = micro_batch.per_rank_batch(train, world)
    global_batch = per_rank * world
    usable = target.gpu.memory_gib * (1 - target.headroom) * step_memory.GIB
    notes = []
    with step_memory.fake_world(world, train.parallel) as (ctx, mesh):
        auto = train.micro_batch_size == micro_batch.AUTO
        not_checked = checks.check_elsewhere(_with_micro_batch(cfg, per_rank) if auto else cfg, ctx)
        data_here = not any(entry.startswith("data.") for entry in not_checked)
        data = data_plan(cfg, world, global_batch, data_here, target.data_tokens)
        measured: dict[int, step_memory.StepMemory] = {}

        def measured_at(size: int) -> step_memory.StepMemory:
            if size not in measured:
                measured[size] = step_memory.measure(cfg, ctx, mesh, dtype, size, per_rank // size)
            return measured[size]

        if not auto:
            measured_at(train.micro_batch_size)
        largest = batch.largest_fitting(
            per_rank,
            lambda size: measured_at(size).peak <= usable,
            {size: step.peak <= usable for size, step in measured.items()},
        )
        size = max(largest, 1) if auto else train.micro_batch_size
        chosen = measured_at(size)
    with FakeTensorMode():
        flops = flops_per_token(GPTModel(cfg.model))
    if train.compile:
        notes.append(
            "memory measured uncompiled: a compiled step keeps fewer intermediates (its peak is lower)"
        )
    tokens_per_step = global_batch * cfg.model.context_length
    use = timing.utilisation(target.gpu, cfg.model, size, target.mfu)
    step_s = timing.step_seconds(tokens_per_step, flops, world, target.gpu, use.mfu)
    steps = train.max_steps or (train.epochs * data.steps_per_epoch if data.steps_per_epoch else None)
    hours = steps * step_s / 3600 if steps else None
    # the checkpoint holds the fp32 weights and the optimizer's state; sharded, each rank writes its own
    rank_state = chosen.parameters + chosen.optimizer
    whole = rank_state * world if train.parallel == "fsdp" else rank_state
    busiest = whole / world if cfg.checkpoint.sharded else whole
    epochs = steps / data.steps_per_epoch if steps and data.steps_per_epoch else None
    return {
        "config": config_name,
        "nodes": target.nodes,
        "gpus_per_node": target.gpus_per_node,
        "world_size": world,
        "gpu": dataclasses.asdict(target.gpu),
        "parallel": train.parallel,
        "precision": precision.name(dtype),
        "activation_checkpointing": train.activation_checkpointing,
        "micro_batch_size": size,
        "grad_accum_steps": per_rank // size,
        "micro_batch_auto": auto,
        "compile": train.compile,
        "global_batch": global_batch,
        "tokens_per_step": tokens_per_step,
        "memory_gib": chosen.gib(),
        "memory_bytes": chosen.bytes(),
        "usable_gib": round(usable / step_memory.GIB, 3),
        "fits": chosen.peak <= usable,
        "max_micro_batch": largest,
        "max_micro_batch_grad_accum": per_rank // largest if largest else None,
        "flops_per_token": flops,
        "mfu": use.mfu,
        "mfu_source": use.source,
        "step_s": step_s,
        "tokens_per_s": tokens_per_step / step_s,
        "steps": steps,
        "hours": hours,
        "gpu_hours": hours * world if hours is not None else None,
        "checkpoint_gib": round(whole / step_memory.GIB, 3),
        "checkpoint_rank_gib": round(busiest / step_memory.GIB, 3),
        "checkpoint_layout": "sharded: every rank its part" if cfg.checkpoint.sharded else "one file, rank 0",
        "checkpoint_write_s": busiest / (target.write_gbps * GB),
        "write_gbps": target.write_gbps,
        "data": {
            "source": data.source,
            "tokens": data.tokens,
            "windows": data.windows,
            "windows_per_rank": data.steps_per_epoch * global_batch // world
            if data.steps_per_epoch
            else None,
            "steps_per_epoch": data.steps_per_epoch,
            "epochs": epochs,
        },
        "not_checked": not_checked,
        "notes": notes,
    }
