"""train.micro_batch_size: auto — the largest micro-batch that fits the GPU, the global batch kept.

On CUDA, rank 0 asks gptdist.plan (a process of its own: its fake process group cannot live beside the
run's) for the largest micro-batch that divides each rank's share of train.global_batch_size and fits
this GPU's memory; every rank then confirms it with a real forward, backward and optimizer step of the
model in its parallel form, all ranks dropping to the next smaller divisor at once if any runs out of
memory. train.grad_accum_steps becomes the share over the micro-batch. The choice is printed, written
with the run's config (RUN/config.yaml and every checkpoint), and kept by a resumed run on the same
share, which does not measure again. On a CPU there is no GPU memory to fit: a number is asked for.
"""

import dataclasses
import gc
import json
import subprocess
import sys
from pathlib import Path

import torch

from .. import config, distributed
from ..config import Config, TrainConfig
from ..distributed import Dist, print0
from ..errors import UserError

AUTO = "auto"


def per_rank_batch(train: TrainConfig, world_size: int) -> int:
    """Sequences each rank takes per optimizer step; train.global_batch_size checked against the rest."""
    if train.micro_batch_size != AUTO:
        per_rank = train.micro_batch_size * train.grad_accum_steps
        if train.global_batch_size not in (None, per_rank * world_size):
            raise UserError(
                f"train.global_batch_size {train.global_batch_size} is not train.micro_batch_size "
                f"{train.micro_batch_size} x train.grad_accum_steps {train.grad_accum_steps} x "
                f"{world_size} processes = {per_rank * world_size}; change one of them, or set "
                "train.micro_batch_size: auto to fit the accumulation to the global batch"
            )
        return per_rank
    if train.global_batch_size is None:
        raise UserError(
            "train.micro_batch_size: auto needs train.global_batch_size (sequences per optimizer "
            "step over all processes), which it keeps"
        )
    if train.global_batch_size % world_size:
        raise UserError(
            f"train.global_batch_size {train.global_batch_size} cannot be shared equally by "
            f"{world_size} processes; choose a multiple of {world_size}"
        )
    return train.global_batch_size // world_size


def divisors_below(per_rank: int, size: int) -> list[int]:
    """The divisors of `per_rank` below `size`, largest first: where a micro-batch that does not fit goes."""
    return [d for d in range(size - 1, 0, -1) if per_rank % d == 0]


def resolve(cfg: Config, ctx: Dist, config_file: str, overrides: list[str]) -> None:
    """Make train.micro_batch_size a number (and train.grad_accum_steps to match) where it is auto."""
    per_rank = per_rank_batch(cfg.train, ctx.world_size)
    if cfg.train.micro_batch_size != AUTO:
        return
    if ctx.device.type != "cuda":
        raise UserError(
            "train.micro_batch_size: auto sizes the micro-batch to a GPU's memory, and this run is "
            f"on the {ctx.device.type}; set a number (e.g. train.micro_batch_size=8)"
        )
    kept = _kept_by_the_run(cfg)
    if kept and per_rank % kept == 0:
        chosen, how = kept, "kept from the run's first start"
    else:
        planned = distributed.broadcast_object(
            distributed.on_rank0(lambda: _planned(config_file, overrides, ctx), ctx)
        )
        chosen = _confirmed(cfg, ctx, planned, per_rank)
        how = (
            f"planned {planned}, confirmed by a step"
            if chosen == planned
            else f"planned {planned}, {chosen} after running out of memory"
        )
    cfg.train.micro_batch_size, cfg.train.grad_accum_steps = chosen, per_rank // chosen
    print0(
        f"train.micro_batch_size auto: {chosen} ({how}), train.grad_accum_steps {per_rank // chosen}: "
        f"{per_rank * ctx.world_size} sequences a step"
    )


def _kept_by_the_run(cfg: Config) -> int | None:
    """The micro-batch a run that resumes chose at its first start (its RUN/config.yaml), if it resumes."""
    from .checks import starts_afresh

    saved = Path(cfg.run.out_dir) / "config.yaml"
    if starts_afresh(cfg) or not saved.is_file():
        return None
    value = config.load(str(saved), []).train.micro_batch_size  # written resolved by the first start
    return value if value != AUTO else None


def _planned(config_file: str, overrides: list[str], ctx: Dist) -> int:
    """gptdist.plan's largest micro-batch for this GPU's memory at this world size."""
    total_gib = torch.cuda.get_device_properties(ctx.device).total_memory / 2**30
    command = [
        sys.executable,
        "-m",
        "gptdist.plan",
        "--config",
        config_file,
        *overrides,
        "--nodes",
        "1",
        "--gpus-per-node",
        str(ctx.world_size),
        "--gpu",
        f"{total_gib:.3f}:1:1",
        "--json",
    ]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise UserError(f"train.micro_batch_size: auto: the plan failed: {result.stderr.strip()[-500:]}")
    largest = json.loads(result.stdout)["max_micro_batch"]
    if not largest:
        raise UserError(
            f"train.micro_batch_size: auto: not even a micro-batch of 1 fits {total_gib:.1f} GiB "
            "(gptdist.plan); use train.parallel: fsdp, activation checkpointing, or more GPUs"
        )
    return largest


def _confirmed(cfg: Config, ctx: Dist, size: int, per_rank: int) -> int:
    """The largest micro-batch from `size` down (divisors of `per_rank`) whose step fits on every rank."""
    for candidate in [size, *divisors_below(per_rank, size)]:
        fits = torch.tensor([1.0 if _step_fits(cfg, ctx, candidate, per_rank) else 0.0], device=ctx.device)
        if distributed.all_reduce_min(fits).item() == 1.0:
            return candidate
    raise UserError(
        "train.micro_batch_size: auto: a micro-batch of 1 runs out of GPU memory; use "
        "train.parallel: fsdp, activation checkpointing, or more GPUs"
    )


def _step_fits(cfg: Config, ctx: Dist, size: int, per_rank: int) -> bool:
    """One uncompiled training step of the model in its parallel form at `size` (a compiled one holds
    less), on random tokens, of up to two micro-batches as the plan measured it; everything it made is
    freed."""
    from .build import built_model
    from .optimizer import build as build_optimizer
    from .phases import Phases
    from .precision import Precision

    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, compile=False))
    try:
        precision = Precision.of(cfg.train, ctx.device)
        model, parallel = built_model(
            cfg,
            ctx,
            precision,
            None,
            from_source=False,
            phases=Phases(cfg.train.hang_timeout_s, cfg.dist.init_timeout_s),
        )
        steps = build_optimizer(model, cfg.optim)
        tokens = torch.randint(
            0, cfg.model.vocab_size, (size, cfg.model.context_length + 1), device=ctx.device
        )
        for _ in parallel.micro_steps([tokens] * min(2, per_rank // size), precision.autocast):
            pass
        steps.step()
        torch.cuda.synchronize(ctx.device)
        return True
    except torch.cuda.OutOfMemoryError:
        return False
    finally:
        model = parallel = steps = tokens = None
        gc.collect()
        torch.cuda.empty_cache()
