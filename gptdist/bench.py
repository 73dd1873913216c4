"""python -m gptdist.bench: measured speed of the real training step, the data loader and prepare.

    python -m gptdist.bench train --config configs/bench-cpu-small.yaml --steps 20
    torchrun --nproc_per_node=8 -m gptdist.bench train --config configs/gutenberg-gpt2-124m.yaml
    python -m gptdist.bench data --config configs/bench-cpu-small.yaml
    python -m gptdist.bench prepare --megabytes 64 --workers 2
    python -m gptdist.bench checkpoint --config configs/bench-cpu-small.yaml
    torchrun --nproc_per_node=2 -m gptdist.bench memory --config configs/bench-cpu-small.yaml train.parallel=fsdp

Each prints a table and one JSON line. MFU is computed as training logs it (gptdist/flops.py):
6N + 12·L·T·d FLOPs per token against the device's peak, a table of known GPUs (bf16 dense;
--peak-tflops overrides) or, on a CPU, a matmul timed on the spot in the run's dtype.
"""

import contextlib
import json
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

from . import config, corpus, distributed
from .arguments import ArgumentParser, non_negative_int, positive_float, positive_int
from .checkpoint import checkpoint_paths
from .errors import cli
from .flops import flops_per_token
from .throughput import synchronize


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


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
    from .trainer import Trainer

    cfg = config.load(args.config, args.overrides)
    cfg.run.out_dir = tempfile.mkdtemp(prefix="gptdist-bench-")
    if max_steps is not None:
        cfg.train.max_steps = max_steps
    ctx = distributed.setup(cfg.train.device)
    try:
        trainer = Trainer(cfg, ctx)
        yield trainer
        trainer.close()
    finally:
        shutil.rmtree(cfg.run.out_dir, ignore_errors=True)
        distributed.teardown()


def bench_train(args) -> dict:
    """The Trainer's own step (train_step, next_batches and the stop agreement, as fit runs them), timed."""
    from .stopping import StopRequest

    with bench_trainer(args, max_steps=args.warmup + args.steps) as trainer:
        cfg, ctx = trainer.cfg, trainer.ctx
        stop = StopRequest(ctx)
        trainer.model.train()
        data_seconds = stop_seconds = 0.0
        start = time.perf_counter()
        for step in range(args.warmup + args.steps):
            if step == args.warmup:
                synchronize(ctx.device)
                distributed.barrier()
                if ctx.device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(ctx.device)
                data_seconds = stop_seconds = 0.0
                start = time.perf_counter()
            data_start = time.perf_counter()
            batches = trainer.next_batches()
            data_seconds += time.perf_counter() - data_start
            loss, _ = trainer.train_step(batches)
            stop_start = time.perf_counter()
            stop.agreed()
            stop_seconds += time.perf_counter() - stop_start
            if step == 0:  # compilation and warm-up: the time to the first step
                synchronize(ctx.device)
                first_step_s = round(time.perf_counter() - start, 3)
        loss = loss.item()  # waits for the last step
        step_seconds = (time.perf_counter() - start) / args.steps
        stop.finish()
        peak_mb = peak_memory_mb(ctx.device)
        eval_s = [timed(trainer.evaluate) for _ in range(2)] if args.eval else []
        tokens_per_step = trainer.progress.global_batch * cfg.model.context_length
        # MFU against the peak that training logs against (measured at its start on a CPU)
        peak, peak_source = ((args.peak_tflops * 1e12, "given") if args.peak_tflops else
                             (trainer.throughput.peak_flops, trainer.throughput.peak_source))
        achieved = flops_per_token(trainer.model) * tokens_per_step / ctx.world_size / step_seconds
        result = {
            "benchmark": "train", "config": args.config, "overrides": args.overrides, "device": str(ctx.device),
            "gpu": device_name(ctx.device), "torch": torch.__version__,
            "world_size": ctx.world_size, "precision": str(trainer.dtype).removeprefix("torch."),
            "compile": cfg.train.compile, "parameters": trainer.model.num_params(),
            "micro_batch_size": cfg.train.micro_batch_size, "grad_accum_steps": trainer.grad_accum,
            "tokens_per_step": tokens_per_step, "steps": args.steps, "ms_per_step": 1000 * step_seconds,
            "tokens_per_sec": tokens_per_step / step_seconds,
            "tokens_per_sec_per_process": tokens_per_step / step_seconds / ctx.world_size,
            "data_ms_per_step": 1000 * data_seconds / args.steps,
            "data_share": data_seconds / args.steps / step_seconds,
            "stop_check_ms_per_step": 1000 * stop_seconds / args.steps,
            "peak_memory_mb": peak_mb, "flops_per_token": flops_per_token(trainer.model),
            "peak_flops": peak, "peak_source": peak_source, "mfu": achieved / peak, "final_loss": loss,
            **trainer.startup, "first_step_s": first_step_s, "eval_s": eval_s,
            "threads": torch.get_num_threads(),
        }
        return result


def bench_checkpoint(args) -> dict:
    """What a save costs training: blocking (write before going on) vs background (snapshot only)."""
    import statistics

    from .checkpoint import Checkpointer

    with bench_trainer(args) as trainer:
        cfg, ctx = trainer.cfg, trainer.ctx
        for _ in range(2):  # AdamW's moments exist after a step: a checkpoint of its real size
            trainer.train_step(trainer.next_batches())
        synchronize(ctx.device)
        folder, config_dict = Path(cfg.run.out_dir) / "checkpoints", cfg.to_dict()

        def save(saver: Checkpointer, step: int) -> float:
            """Seconds until training could go on."""
            distributed.barrier()
            start = time.perf_counter()
            saver.save(step, trainer.states, config_dict, {"step": step})
            return time.perf_counter() - start

        blocking = Checkpointer(folder, 1, ctx, background=False)
        blocking_s = [save(blocking, step) for step in range(args.rounds)]
        blocking.close()
        background = Checkpointer(folder, 1, ctx, background=True)
        stall_s, write_s = [], []
        for step in range(args.rounds):
            stall_s.append(save(background, args.rounds + step))
            saved = background.wait()
            if saved is not None:
                write_s.append(saved.write_s)
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
                    trainer.train_step(trainer.next_batches())
                background.wait()  # a write longer than the block would hold up the next save: counted
                synchronize(ctx.device)
                blocks.append(time.perf_counter() - start)
        background.close()
        size = checkpoint_paths(folder)[-1].stat().st_size if ctx.is_main else 0
        # the first background save allocates the snapshot's buffers: the later ones are the steady state
        steady = stall_s[1:] or stall_s
        result = {"benchmark": "checkpoint", "config": args.config, "overrides": args.overrides,
                  "device": str(ctx.device), "world_size": ctx.world_size, "parameters": trainer.model.num_params(),
                  "bytes": size, "snapshot_host_bytes": background.snapshot.bytes, "rounds": args.rounds,
                  "blocking_s": statistics.median(blocking_s), "stall_s": statistics.median(steady),
                  "first_stall_s": stall_s[0], "write_s": statistics.median(write_s) if write_s else None}
        result["stall_vs_blocking"] = result["stall_s"] / result["blocking_s"]
        if args.pairs:
            result.update({"interval": args.interval, "pairs": args.pairs, "block_s_with_save": with_saves,
                           "block_s_without": without, "training_overhead": sum(with_saves) / sum(without) - 1})
        return result


def bench_memory(args) -> dict:
    """Per rank: the state kept through the run, what one micro-batch's forward keeps for its
    backward (gptdist/memory.py), and the time of a step; the largest rank's figures."""
    from .memory import SavedForBackward, state_bytes

    with bench_trainer(args, max_steps=args.steps + 3) as trainer:
        cfg, ctx = trainer.cfg, trainer.ctx
        trainer.model.train()
        for _ in range(2):  # AdamW's moments exist after a step; compilation is done
            trainer.train_step(trainer.next_batches())
        batch = trainer.next_batches()[0]
        with SavedForBackward(trainer.model) as saved, trainer.autocast:
            loss = trainer.parallel.loss(batch[:, :-1], batch[:, 1:])
        activations = saved.bytes
        loss.backward()
        state = state_bytes(trainer.model, trainer.optimizer)
        trainer.optimizer.zero_grad(set_to_none=True)
        synchronize(ctx.device)
        distributed.barrier()
        start = time.perf_counter()
        for _ in range(args.steps):
            trainer.train_step(trainer.next_batches())
        synchronize(ctx.device)
        step_seconds = (time.perf_counter() - start) / args.steps
        figures = torch.tensor([*state.values(), activations, step_seconds, peak_memory_mb(ctx.device)],
                               dtype=torch.float64)
        params_b, grads_b, optim_b, activations_b, step_s, peak_mb = distributed.all_reduce_max(figures).tolist()
        mib = 2**20
        result = {"benchmark": "memory", "config": args.config, "overrides": args.overrides,
                  "device": str(ctx.device), "world_size": ctx.world_size, "parallel": cfg.train.parallel,
                  "activation_checkpointing": cfg.train.activation_checkpointing,
                  "precision": str(trainer.dtype).removeprefix("torch."), "parameters": trainer.model.num_params(),
                  "micro_batch_size": cfg.train.micro_batch_size, "context_length": cfg.model.context_length,
                  "parameters_mb": params_b / mib, "gradients_mb": grads_b / mib, "optimizer_mb": optim_b / mib,
                  "state_mb": (params_b + grads_b + optim_b) / mib, "activations_mb": activations_b / mib,
                  "ms_per_step": 1000 * step_s, "peak_memory_mb": peak_mb}
        return result


def bench_data(args) -> dict:
    """Samples per second from the shards alone: sampler + memmap windows, no model."""
    from . import shards
    from .data import DistributedStepSampler, TokenWindows

    cfg = config.load(args.config, args.overrides)
    manifest = shards.read_manifest(cfg.data.dir)
    windows = TokenWindows(manifest, "train", cfg.model.context_length, cfg.data.stride or cfg.model.context_length)
    batch = cfg.train.micro_batch_size
    sampler = DistributedStepSampler(windows.num_samples, batch, 0, 1, cfg.run.seed)
    samples, start = 0, time.perf_counter()
    while time.perf_counter() - start < args.seconds:
        if sampler.epoch_done():
            sampler.set_epoch(sampler.epoch + 1)
        samples += len(windows.batch(sampler.next_step()))
    seconds = time.perf_counter() - start
    return {"benchmark": "data", "data": cfg.data.dir, "micro_batch_size": batch,
            "context_length": cfg.model.context_length, "samples_per_sec": samples / seconds,
            "tokens_per_sec": samples * (cfg.model.context_length + 1) / seconds,
            "ms_per_batch": 1000 * seconds * batch / samples}


def synthetic_corpus(folder: Path, megabytes: int) -> Path:
    """Many documents of real English: The Verdict cut into paragraphs, repeated to `megabytes`."""
    paragraphs = [p for p in corpus.verdict_path().read_text().split("\n\n") if p.strip()]
    folder.mkdir(parents=True, exist_ok=True)
    written, index = 0, 0
    while written < megabytes * 2**20:
        text = "\n\n".join(paragraphs[(index + k) % len(paragraphs)] for k in range(40))
        path = folder / f"doc{index:06d}.txt"
        path.write_text(text)
        written += len(text.encode())
        index += 1
    return folder


def bench_prepare(args) -> dict:
    from .prepare import parse_args as prepare_args
    from .prepare import prepare
    from .tokenizer import gpt2_encoding

    with tempfile.TemporaryDirectory(prefix="gptdist-bench-") as tmp:
        docs = synthetic_corpus(Path(tmp) / "docs", args.megabytes)
        texts = [p.read_text() for p in sorted(docs.iterdir())]
        encoding = gpt2_encoding()
        start = time.perf_counter()
        tokens = sum(len(encoding.encode_ordinary(t)) for t in texts)
        tiktoken_rate = tokens / (time.perf_counter() - start)
        rates = {}
        for workers in sorted({1, args.workers}):
            out = Path(tmp) / f"out{workers}"
            manifest, seconds = prepare(prepare_args(["--input", str(docs), "--out", str(out), "--workers", str(workers)]))
            total = sum(s["tokens"] for s in manifest["splits"].values())
            rates[workers] = total / seconds
        return {"benchmark": "prepare", "megabytes": args.megabytes, "documents": len(list(docs.iterdir())),
                "tokens": total, "tiktoken_single_thread_tokens_per_sec": tiktoken_rate,
                "tokens_per_sec_by_workers": rates, "one_worker_vs_tiktoken": rates[1] / tiktoken_rate,
                f"speedup_{args.workers}_workers": rates[args.workers] / rates[1]}


def print_table(result: dict) -> None:
    width = max(map(len, result))
    for key, value in result.items():
        shown = f"{value:,.4g}" if isinstance(value, float) else value
        print(f"{key:<{width}}  {shown}", file=sys.stderr)


def parse_args(argv=None):
    parser = ArgumentParser(prog="gptdist.bench", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    train = sub.add_parser("train", help="the training step of a config")
    data = sub.add_parser("data", help="the data loader alone")
    save = sub.add_parser("checkpoint", help="the training time a checkpoint costs, blocking and in the background")
    memory = sub.add_parser("memory", help="per-rank memory: state (parameters, gradients, AdamW) and activations")
    memory.add_argument("--steps", type=positive_int, default=5, help="timed steps")
    for p in (train, data, save, memory):
        p.add_argument("--config", required=True)
        p.add_argument("overrides", nargs="*", metavar="section.key=value")
    train.add_argument("--steps", type=positive_int, default=20, help="timed steps")
    train.add_argument("--warmup", type=non_negative_int, default=3, help="untimed steps first (compilation, allocator)")
    train.add_argument("--peak-tflops", type=positive_float, help="the device's peak, overriding the table/measurement")
    train.add_argument("--eval", action="store_true", help="also time two evaluations (the first compiles)")
    data.add_argument("--seconds", type=positive_float, default=3.0)
    save.add_argument("--rounds", type=positive_int, default=3, help="saves of each kind (the median is reported)")
    save.add_argument("--pairs", type=non_negative_int, default=0,
                      help="also time this many pairs of --interval-step blocks, with a background save and without")
    save.add_argument("--interval", type=positive_int, default=20, help="steps per block (a checkpoint interval)")
    prep = sub.add_parser("prepare", help="prepare's throughput on a synthetic corpus of many documents")
    prep.add_argument("--megabytes", type=positive_int, default=64)
    prep.add_argument("--workers", type=positive_int, default=os.cpu_count() or 1)
    return parser.parse_args(argv)


@cli("gptdist.bench")
def main(argv=None) -> None:
    args = parse_args(argv)
    benchmarks = {"train": bench_train, "data": bench_data, "checkpoint": bench_checkpoint, "prepare": bench_prepare,
                  "memory": bench_memory}
    result = benchmarks[args.what](args)
    if distributed.rank() == 0:
        print_table(result)
        print(json.dumps(result))


if __name__ == "__main__":
    main()
