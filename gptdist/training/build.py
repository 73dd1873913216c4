"""A Trainer put together, each part where the next needs it: the run's record and checkpointer, the
checkpoint to resume from, model.init_from's weights, the data, the model in its precision and parallel
form, the optimizer and schedule, the states a checkpoint holds, then the resume itself.
"""

import time
from pathlib import Path

import torch

from .. import config, distributed
from ..checkpoint import pretrained
from ..checkpoint.checkpointer import Checkpointer
from ..checkpoint.resume import check_architecture, resume_payload
from ..checkpoint.states import ModelState, OptimizerState, Progress, RNGState
from ..config import Config
from ..data import shards, sources
from ..data.loader import StepLoader
from ..distributed import Dist, print0
from ..model.gpt import GPTModel
from ..observe.flops import device_peak, flops_per_token
from ..observe.memory import peak_host_mb
from ..observe.throughput import Throughput
from . import optimizer, sharded_init
from .evaluator import Evaluator
from .guard import NonFiniteGuard
from .parallelize import TrainingModel, parallelize
from .phases import Phases
from .precision import Precision
from .run_log import RunLog
from .schedule import WarmupDecaySchedule
from .spikes import SpikeSkip
from .stragglers import Stragglers
from .timeouts import ProcessGroupTimeouts
from .trainer import Trainer


def build_trainer(cfg: Config, ctx: Dist, phases: Phases | None = None) -> Trainer:
    """The run's Trainer; `phases` is what the watchdog already watches (train.py), else new ones."""
    started = time.perf_counter()
    phases = phases or Phases(cfg.train.hang_timeout_s, cfg.dist.init_timeout_s)
    log = RunLog(cfg, ctx, Path(cfg.run.out_dir))
    checkpointer = Checkpointer(Path(cfg.run.out_dir) / "checkpoints", cfg.checkpoint.keep, ctx,
                                background=cfg.checkpoint.async_, sharded=cfg.checkpoint.sharded,
                                interval=cfg.checkpoint.interval)
    resume = resume_payload(cfg.checkpoint.resume, checkpointer.folder, cfg.optim.optimizer, ctx)
    init_weights = continue_from_source(cfg, ctx, resume)
    if resume:
        check_architecture(resume["config"]["model"], cfg.model, resume["path"])
    verify_start = time.perf_counter()
    data = verified_data(cfg, ctx)
    startup = {"data_verify_s": round(time.perf_counter() - verify_start, 3)}
    # the global batch is the run's first one, kept on any world size
    global_batch = (resume["progress"]["global_batch"] if resume
                    else cfg.train.micro_batch_size * cfg.train.grad_accum_steps * ctx.world_size)
    sampler, reader = sources.training_order(cfg, data, global_batch, ctx.rank, ctx.world_size)
    loader = StepLoader(sampler, reader, data[0].train.window, cfg.train.micro_batch_size, ctx)
    total_steps = cfg.train.max_steps or cfg.train.epochs * loader.sampler.steps_per_epoch
    progress = Progress(global_batch=global_batch)
    precision = Precision.of(cfg.train, ctx.device)
    model, parallel = built_model(cfg, ctx, precision, init_weights, from_source=bool(cfg.model.init_from)
                                  and not resume, phases=phases)
    # AdamW fused, or Muon with it: either skips a non-finite step on the device
    steps = optimizer.build(model, cfg.optim)
    guard = NonFiniteGuard(cfg.train.max_bad_steps, ctx.device)
    spikes = SpikeSkip(cfg.train.spike_zscore, cfg.train.spike_window, cfg.train.spike_warmup, ctx,
                       Path(cfg.run.out_dir))
    schedule = WarmupDecaySchedule(steps, cfg.schedule, cfg.optim.lr, total_steps)
    torch.manual_seed(cfg.run.seed + ctx.rank)  # each rank its own dropout stream
    states = {"model": ModelState(model), "optimizer": OptimizerState(model, steps),
              "scaler": precision.scaler, "schedule": schedule, "sampler": sampler,
              "progress": progress, "rng": RNGState(ctx, cfg.run.seed), "tracking": log.tracker,
              "spikes": spikes}
    if resume:
        checkpointer.restore(resume, states)
    evaluator = Evaluator(cfg, ctx, parallel.loss, model, precision.autocast, data)
    peak = device_peak(ctx.device, precision.dtype)  # for MFU: a table on GPUs, measured now on a CPU
    throughput = Throughput(global_batch * cfg.model.context_length, flops_per_token(model), peak,
                            ctx.world_size, total_steps)
    startup["setup_s"] = round(time.perf_counter() - started, 3)
    # every rank's host memory at its peak so far: the model built (or its shards), a resume's reading
    startup["host_peak_mb"] = distributed.all_gather_objects(peak_host_mb())
    return Trainer(cfg=cfg, ctx=ctx, log=log, checkpointer=checkpointer, data=data, loader=loader,
                   total_steps=total_steps, progress=progress, model=model,
                   precision=precision, parallel=parallel, optimizer=steps, schedule=schedule, guard=guard,
                   spikes=spikes, states=states, evaluator=evaluator, throughput=throughput,
                   resumed_from=resume["path"] if resume else None, startup=startup, phases=phases,
                   timeouts=ProcessGroupTimeouts(ctx, cfg.dist.init_timeout_s, cfg.dist.step_timeout_s),
                   stragglers=Stragglers(cfg.train.straggler_ratio, ctx, enabled=cfg.train.watchdog))


def continue_from_source(cfg: Config, ctx: Dist, resume: dict | None) -> dict | None:
    """model.init_from (continued pretraining): the run's architecture becomes the source's. Starting
    afresh, returns the source's weights (under fsdp rank 0 alone reads them: None on the others); at
    a resume the architecture is the one the checkpoint recorded, and the source is not read again."""
    if not cfg.model.init_from:
        return None
    if resume:
        recorded = config.build({"model": resume["config"]["model"]}).model
        cfg.model = pretrained.continued(cfg.model, recorded)
        return None
    if cfg.train.parallel == "fsdp":  # rank 0 reads it; the others take their shards from it
        cfg.model, weights = pretrained.init_from_rank0(cfg.model, ctx)
        return weights
    cfg.model, weights = pretrained.init_from(cfg.model, ctx)
    return weights


def verified_data(cfg: Config, ctx: Dist) -> list[sources.Source]:
    """The run's sources, their vocabulary the model's, their shards verified (data.verify): never train on
    altered data. One read per node: the other ranks wait."""
    data = sources.open_sources(cfg)
    source = f" (from model.init_from {cfg.model.init_from})" if cfg.model.init_from else ""
    sources.check_vocabulary(data, cfg.model.vocab_size, f"model.vocab_size{source}")
    if cfg.data.verify:
        if ctx.local_rank == 0:
            for each in data:
                shards.verify(each.manifest.folder)
        distributed.barrier()
    return data


def built_model(cfg: Config, ctx: Dist, precision: Precision, init_weights: dict | None,
                from_source: bool, phases: Phases) -> tuple[torch.nn.Module, TrainingModel]:
    """The model, initialised or loaded from model.init_from (`from_source`: its weights on every rank, or
    under fsdp on rank 0 alone), in its parallel form; the optimizer is built from it afterwards."""
    torch.manual_seed(cfg.run.seed)  # the same initial weights on every rank
    # under fsdp no rank holds the whole model: made on the meta device, given values once sharded
    on_meta = cfg.train.parallel == "fsdp"
    source = f"model.init_from {cfg.model.init_from}"
    if on_meta:
        model, init_steps = sharded_init.meta_model(cfg.model)
        if from_source:
            init_weights = pretrained.fitted_on_rank0(model, init_weights, source, ctx)
    else:
        model = GPTModel(cfg.model)
        if init_weights is not None:
            pretrained.load_weights(model, init_weights, source)
        model.to(ctx.device)
    if from_source:
        print0(f"initialised from the weights of {cfg.model.init_from}")
    # FP8 layers, activation checkpointing, torch.compile, DDP or FSDP: the optimizer comes after,
    # since fully_shard replaces the parameters with their shards.
    parallel = parallelize(model, cfg.train, ctx, precision.dtype,
                           gradients_ready=phases if cfg.train.watchdog else None)
    if on_meta and from_source:
        sharded_init.load_from_rank0(model, init_weights, ctx.device)
    elif on_meta:
        sharded_init.materialise(model, init_steps, ctx.device)
    return model, parallel
