"""The training benchmarks of `python -m gptdist.bench`: the Trainer's step, what a checkpoint
costs it, and where a rank's memory goes. Each runs the real Trainer of a config, in a temporary
run.out_dir that it removes afterwards.
"""

import contextlib
import copy
import gc
import platform
import shutil
import statistics
import time
from pathlib import Path

import torch

from .. import config, distributed
from ..checkpoint.checkpointer import Checkpointer
from ..checkpoint.store import checkpoint_paths, size_on_disk
from ..files.replace import own_temporary_folder
from ..observe.memory import (
    SavedForBackward,
    peak_device_bytes,
    peak_host_bytes,
    peak_host_mb,
    peak_tracker,
    reset_peak_host,
    resident_host_bytes,
    state_bytes,
    tracked_peak,
)
from ..observe.throughput import synchronize
from . import micro_batch, precision
from .build import build_trainer
from .checks import check_before_work
from .heap import release_freed_memory
from .stopping import StopRequest


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"


def timed(function) -> float:
    start = time.perf_counter()
    function()
    return round(time.perf_counter() - start, 3)


@contextlib.contextmanager
def bench_trainer(args, max_steps: int | None = None):
    """The Trainer of the config and overrides in `args`, in a temporary run.out_dir (it never
    resumes, never writes into a run), removed afterwards; `max_steps` for the schedule."""
    cfg = config.load(args.config, args.overrides)
    cfg.checkpoint.resume = "never"
    if max_steps is not None:
        cfg.train.max_steps = max_steps
    ctx = distributed.setup(cfg.train.device)
    micro_batch.resolve(cfg, ctx, args.config, args.overrides)
    check_before_work(cfg, ctx)
    # one folder for every rank, as a run has: a sharded checkpoint's ranks write into the same one
    cfg.run.out_dir = distributed.broadcast_object(str(own_temporary_folder("gptdist-bench")) if ctx.is_main
                                                   else None)
    try:
        trainer = build_trainer(cfg, ctx)
        yield trainer
        trainer.close()
    finally:
        distributed.barrier()  # every rank done with the folder
        if ctx.is_main:
            shutil.rmtree(cfg.run.out_dir, ignore_errors=True)


def bench_train(args) -> dict:
    """The Trainer's own step and the stop agreement, as fit runs them, timed."""
    with bench_trainer(args, max_steps=args.warmup + args.steps) as trainer:
        cfg, ctx = trainer.cfg, trainer.ctx
        stop = StopRequest(ctx)
        stop_seconds = 0.0
        start = time.perf_counter()
        trainer.ready_to_step()  # in the time to the first step, as in fit
        for step in range(args.warmup + args.steps):
            if step == args.warmup:
                synchronize(ctx.device)
                distributed.barrier()
                if ctx.device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(ctx.device)
                trainer.loader.seconds = stop_seconds = 0.0
                start = time.perf_counter()
            loss, _ = trainer.step()
            stop_start = time.perf_counter()
            stop.agreed()
            stop_seconds += time.perf_counter() - stop_start
            if step == 0:  # compilation and warm-up: the time to the first step
                synchronize(ctx.device)
                first_step_s = round(time.perf_counter() - start, 3)
        loss = loss.item()  # waits for the last step
        step_seconds = (time.perf_counter() - start) / args.steps
        stop.finish()
        peak_mb = peak_device_bytes(ctx.device) / 2**20
        eval_s = [timed(trainer.evaluator.losses) for _ in range(2)] if args.eval else []
        # the figures training logs with: tokens per step, FLOPs per token and (unless given) the peak,
        # measured at its start on a CPU
        clock = trainer.throughput
        tokens_per_step = clock.tokens_per_step
        peak, peak_source = ((args.peak_tflops * 1e12, "given") if args.peak_tflops else
                             (clock.peak_flops, clock.peak_source))
        achieved = clock.flops_per_token * tokens_per_step / ctx.world_size / step_seconds
        result = {
            "benchmark": "train", "config": args.config, "overrides": args.overrides,
            "device": str(ctx.device),
            "gpu": device_name(ctx.device), "torch": torch.__version__,
            "world_size": ctx.world_size, "precision": precision.name(trainer.precision.dtype),
            "compile": cfg.train.compile, "parameters": trainer.model.num_params(),
            "micro_batch_size": cfg.train.micro_batch_size, "grad_accum_steps": trainer.loader.grad_accum,
            "tokens_per_step": tokens_per_step, "steps": args.steps, "ms_per_step": 1000 * step_seconds,
            "tokens_per_sec": tokens_per_step / step_seconds,
            "tokens_per_sec_per_process": tokens_per_step / step_seconds / ctx.world_size,
            "data_ms_per_step": 1000 * trainer.loader.seconds / args.steps,
            "data_share": trainer.loader.seconds / args.steps / step_seconds,
            "stop_check_ms_per_step": 1000 * stop_seconds / args.steps,
            "peak_memory_mb": peak_mb, "flops_per_token": clock.flops_per_token,
            "peak_flops": peak, "peak_source": peak_source, "mfu": achieved / peak, "final_loss": loss,
            **trainer.startup, "first_step_s": first_step_s, "eval_s": eval_s,
            "threads": torch.get_num_threads(),
        }
        return result


def bench_checkpoint(args) -> dict:
    """What a save costs training: blocking (write before going on) vs background (snapshot only);
    per rank, the host memory a save adds and where its time goes."""
    with bench_trainer(args) as trainer:
        cfg, ctx = trainer.cfg, trainer.ctx
        trainer.ready_to_step()
        for _ in range(2):  # AdamW's moments exist after a step: a checkpoint of its real size
            trainer.step()
        synchronize(ctx.device)
        folder, config_dict = Path(cfg.run.out_dir) / "checkpoints", cfg.to_dict()
        before_saves = resident_host_bytes()

        def save(saver: Checkpointer, step: int) -> float:
            """Seconds until training could go on."""
            distributed.barrier()
            start = time.perf_counter()
            saver.save(step, trainer.states, config_dict, {"step": step})
            return time.perf_counter() - start

        sharded = trainer.checkpointer.sharded  # the run's form: checkpoint.sharded, or fsdp's default
        blocking = Checkpointer(folder, 1, ctx, background=False, sharded=sharded)
        blocking_s = [save(blocking, step) for step in range(args.rounds)]
        added_by_save = resident_host_bytes() - before_saves  # its buffers, kept from save to save
        blocking.close()
        background = Checkpointer(folder, 1, ctx, background=True, sharded=sharded)
        stall_s, written = [], []
        for step in range(args.rounds):
            stall_s.append(save(background, args.rounds + step))
            saved = background.wait()
            if saved is not None:  # a rank that writes
                written.append(saved)
        # Training with a save every --interval steps against training without, in alternating blocks
        # of --interval steps in this one process, so that drift in the machine hits both alike.
        with_saves, without = [], []
        for pair in range(args.pairs):
            for blocks, saving in ((with_saves, True), (without, False)):
                synchronize(ctx.device)
                start = time.perf_counter()
                if saving:
                    background.save(2 * args.rounds + pair, trainer.states, config_dict, {"step": pair})
                for _ in range(args.interval):
                    trainer.step()
                background.wait()  # a write longer than the block would hold up the next save: counted
                synchronize(ctx.device)
                blocks.append(time.perf_counter() - start)
        background.close()
        size = size_on_disk(checkpoint_paths(folder)[-1]) if ctx.is_main else 0
        startup_added = {"fresh": _startup_peak_added(cfg, ctx, resume="never", subfolder="fresh-start"),
                         "resume": _startup_peak_added(cfg, ctx, resume="auto")}
        # the first background save allocates the snapshot's buffers: the later ones are the steady state
        steady = stall_s[1:] or stall_s
        write_s = [saved.write_s for saved in written]
        snapshot_bytes = background.snapshot.bytes if background.snapshot is not None else 0
        result = {"benchmark": "checkpoint", "config": args.config, "overrides": args.overrides,
                  "device": str(ctx.device), "world_size": ctx.world_size,
                  "parameters": trainer.model.num_params(),
                  "bytes": size, "snapshot_host_bytes": snapshot_bytes, "rounds": args.rounds,
                  "blocking_s": statistics.median(blocking_s), "stall_s": statistics.median(steady),
                  "first_stall_s": stall_s[0], "write_s": statistics.median(write_s) if write_s else None,
                  "ranks": distributed.all_gather_objects(_rank_figures(ctx, added_by_save, snapshot_bytes,
                                                                        stall_s, written, startup_added))}
        result["stall_vs_blocking"] = result["stall_s"] / result["blocking_s"]
        # the target's measure: what a resume adds over a fresh start, as a share of the checkpoint
        result["resume_over_fresh_of_checkpoint"] = [
            round((rank["resume_peak_added_mb"] - rank["fresh_start_peak_added_mb"]) * 2**20 / size, 3)
            for rank in result["ranks"]] if ctx.is_main else None
        if args.pairs:
            result.update({"interval": args.interval, "pairs": args.pairs, "block_s_with_save": with_saves,
                           "block_s_without": without,
                           "training_overhead": sum(with_saves) / sum(without) - 1})
        return result


def _startup_peak_added(cfg: config.Config, ctx: distributed.Dist, resume: str, subfolder: str = "") -> int:
    """The host memory a second run adds on this rank at its peak, beside the one running, through its
    construction and two steps: starting afresh (checkpoint.resume "never", in a subfolder of the run's)
    or resuming the run's newest checkpoint ("auto"). Two steps, because a fresh start allocates its
    optimizer state at the end of its first step, once the activations are freed, and a resume holds it
    from the start: both hold it beside the activations from then on."""
    cfg = copy.deepcopy(cfg)
    cfg.checkpoint.resume, cfg.run.out_dir = resume, str(Path(cfg.run.out_dir) / subfolder)
    gc.collect()
    release_freed_memory()  # else the new one reuses what earlier work freed, and seems to add less
    before = resident_host_bytes()
    reset_peak_host()
    trainer = build_trainer(cfg, ctx)
    trainer.ready_to_step()
    for _ in range(2):
        trainer.step()
    added = peak_host_bytes() - before
    trainer.close()
    return added


def _rank_figures(ctx: distributed.Dist, added_by_save: int, snapshot_bytes: int, stall_s: list,
                  written: list, startup_added: dict[str, int]) -> dict:
    """One rank's share of a save: the host memory it added (resident, as the process sees it; freed
    memory the heap kept may hide part of it) and its snapshot's buffers (counted), where the
    background saves' time went (medians), and the host memory a fresh start and a resume add at
    their peaks."""
    def median(values):
        return round(statistics.median(values), 4) if values else None

    return {"rank": ctx.rank, "host_added_by_save_mb": round(added_by_save / 2**20, 1),
            "snapshot_mb": round(snapshot_bytes / 2**20, 1),
            "peak_host_mb": peak_host_mb(), "stall_s": median(stall_s[1:] or stall_s),
            "snapshot_s": median([saved.snapshot_s for saved in written]),
            "waited_s": median([saved.waited_s for saved in written]),
            "write_s": median([saved.write_s for saved in written]),
            "fresh_start_peak_added_mb": round(startup_added["fresh"] / 2**20, 1),
            "resume_peak_added_mb": round(startup_added["resume"] / 2**20, 1)}


def tracked_step_peak(trainer) -> int:
    """The most one step's forward and backward hold at once (observe/memory.py `peak_tracker`), the
    optimizer's state made by a step before it: what gptdist.plan measures on fake tensors. DDP's buckets,
    allocated by its C++ reducer out of the tracker's sight, count as the gradients they hold."""
    tracker = peak_tracker(trainer.model, trainer.optimizer)
    with tracker:
        for _ in trainer.parallel.micro_steps(trainer.loader.next(), trainer.precision.autocast):
            tracker.reset_mod_stats()  # a module's figures are per call; the peak is kept
    peak = tracked_peak(tracker)
    if trainer.parallel.ddp is not None:
        peak += state_bytes(trainer.model, trainer.optimizer)["gradients"] - tracked_peak(tracker, "GRAD")
    trainer.optimizer.step()
    trainer.optimizer.zero_grad(set_to_none=True)
    return peak


def bench_memory(args) -> dict:
    """Per rank: the state kept through the run, what one micro-batch's forward keeps for its
    backward (gptdist/observe/memory.py), and the time of a step; the largest rank's figures."""
    with bench_trainer(args, max_steps=args.steps + 3) as trainer:
        cfg, ctx = trainer.cfg, trainer.ctx
        trainer.ready_to_step()
        trainer.step()  # AdamW's moments exist after a step; compilation is done
        tracked_peak_b = tracked_step_peak(trainer)
        batch = trainer.loader.next()[0]
        with SavedForBackward(trainer.model) as saved, trainer.precision.autocast:
            loss = trainer.parallel.loss(batch[:, :-1], batch[:, 1:])
        activations = saved.bytes
        loss.backward()
        state = state_bytes(trainer.model, trainer.optimizer)
        trainer.optimizer.zero_grad(set_to_none=True)
        synchronize(ctx.device)
        distributed.barrier()
        start = time.perf_counter()
        for _ in range(args.steps):
            trainer.step()
        synchronize(ctx.device)
        step_seconds = (time.perf_counter() - start) / args.steps
        peak_mb = peak_device_bytes(ctx.device) / 2**20
        figures = torch.tensor([*state.values(), activations, step_seconds, peak_mb, tracked_peak_b],
                               dtype=torch.float64)
        largest = distributed.all_reduce_max(figures).tolist()
        params_b, grads_b, optim_b, activations_b, step_s, peak_mb, tracked_peak_b = largest
        mib = 2**20
        result = {"benchmark": "memory", "config": args.config, "overrides": args.overrides,
                  "device": str(ctx.device), "world_size": ctx.world_size, "parallel": cfg.train.parallel,
                  "activation_checkpointing": cfg.train.activation_checkpointing,
                  "precision": precision.name(trainer.precision.dtype),
                  "parameters": trainer.model.num_params(),
                  "micro_batch_size": cfg.train.micro_batch_size, "context_length": cfg.model.context_length,
                  "parameters_mb": params_b / mib, "gradients_mb": grads_b / mib,
                  "optimizer_mb": optim_b / mib,
                  "state_mb": (params_b + grads_b + optim_b) / mib, "activations_mb": activations_b / mib,
                  "ms_per_step": 1000 * step_s, "peak_memory_mb": peak_mb,
                  "tracked_peak_mb": tracked_peak_b / mib}
        return result
