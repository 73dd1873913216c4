"""python -m gptdist.bench: measured speed of the real training step, the data loader and prepare.

    python -m gptdist.bench train --config configs/bench-cpu-small.yaml --steps 20
    torchrun --nproc_per_node=8 -m gptdist.bench train --config configs/gutenberg-gpt2-124m.yaml
    python -m gptdist.bench data --config configs/bench-cpu-small.yaml
    python -m gptdist.bench prepare --megabytes 64 --workers 2

Each prints a table and one JSON line. MFU counts 6N + 12·L·T·d FLOPs per token (N: the
parameters that multiply every token) against the device's peak: a table of known GPUs
(bf16 dense; --peak-tflops overrides) or, on a CPU, a large matmul timed on the spot in the
run's dtype.
"""

import argparse
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

from . import config, corpus, distributed
from .errors import cli

# Dense bf16 tensor-core peaks (TFLOP/s) of the GPUs gptdist is run on; SXM parts unless named.
GPU_PEAK_TFLOPS = {"H200": 989.0, "H100 PCIe": 756.0, "H100": 989.0, "A100": 312.0, "A10G": 125.0,
                   "L40S": 362.0, "L4": 121.0, "RTX 4090": 165.0, "V100": 125.0}


def flops_per_token(model) -> float:
    cfg = model.cfg
    return 6 * model.matmul_params() + 12 * cfg.n_layers * cfg.context_length * cfg.emb_dim


def measured_cpu_peak(dtype: torch.dtype, size: int = 2048, repeats: int = 10) -> float:
    """FLOP/s of the best of `repeats` size x size matmuls on this CPU, with all its threads."""
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def device_peak(device: torch.device, dtype: torch.dtype, override_tflops: float | None) -> tuple[float, str]:
    if override_tflops:
        return override_tflops * 1e12, "given"
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, tflops in GPU_PEAK_TFLOPS.items():
            if key in name:
                return tflops * 1e12, f"{name} (table)"
        return float("nan"), f"{name} (not in the table: use --peak-tflops)"
    return measured_cpu_peak(dtype), f"CPU {str(dtype).removeprefix('torch.')} matmul, measured"


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_train(args) -> dict:
    from .trainer import Trainer

    cfg = config.load(args.config, args.overrides)
    cfg.run.out_dir = tempfile.mkdtemp(prefix="gptdist-bench-")  # never resumes, never writes into a run
    cfg.train.max_steps = args.warmup + args.steps
    ctx = distributed.setup(cfg.train.device)
    try:
        trainer = Trainer(cfg, ctx)
        trainer.ddp_model.train()
        data_seconds = step_seconds = 0.0
        for step in range(args.warmup + args.steps):
            if step == args.warmup:
                synchronize(ctx.device)
                distributed.barrier()
                if ctx.device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(ctx.device)
                data_seconds = 0.0
                start = time.perf_counter()
            data_start = time.perf_counter()
            batches = trainer.next_batches()
            data_seconds += time.perf_counter() - data_start
            loss, _ = trainer.train_step(batches)
        loss = loss.item()  # waits for the last step
        step_seconds = (time.perf_counter() - start) / args.steps
        tokens_per_step = trainer.progress.global_batch * cfg.model.context_length
        peak, peak_source = device_peak(ctx.device, trainer.dtype, args.peak_tflops)
        achieved = flops_per_token(trainer.model) * tokens_per_step / ctx.world_size / step_seconds
        result = {
            "benchmark": "train", "config": args.config, "overrides": args.overrides, "device": str(ctx.device),
            "world_size": ctx.world_size, "precision": str(trainer.dtype).removeprefix("torch."),
            "compile": cfg.train.compile, "parameters": trainer.model.num_params(),
            "tokens_per_step": tokens_per_step, "steps": args.steps, "ms_per_step": 1000 * step_seconds,
            "tokens_per_sec": tokens_per_step / step_seconds,
            "tokens_per_sec_per_process": tokens_per_step / step_seconds / ctx.world_size,
            "data_ms_per_step": 1000 * data_seconds / args.steps,
            "data_share": data_seconds / args.steps / step_seconds,
            "peak_memory_mb": peak_memory_mb(ctx.device), "flops_per_token": flops_per_token(trainer.model),
            "peak_flops": peak, "peak_source": peak_source, "mfu": achieved / peak, "final_loss": loss,
            "threads": torch.get_num_threads(),
        }
        trainer.close()
        return result
    finally:
        shutil.rmtree(cfg.run.out_dir, ignore_errors=True)
        distributed.teardown()


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
    parser = argparse.ArgumentParser(prog="gptdist.bench", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    train = sub.add_parser("train", help="the training step of a config")
    data = sub.add_parser("data", help="the data loader alone")
    for p in (train, data):
        p.add_argument("--config", required=True)
        p.add_argument("overrides", nargs="*", metavar="section.key=value")
    train.add_argument("--steps", type=int, default=20, help="timed steps")
    train.add_argument("--warmup", type=int, default=3, help="untimed steps first (compilation, allocator)")
    train.add_argument("--peak-tflops", type=float, help="the device's peak, overriding the table/measurement")
    data.add_argument("--seconds", type=float, default=3.0)
    prep = sub.add_parser("prepare", help="prepare's throughput on a synthetic corpus of many documents")
    prep.add_argument("--megabytes", type=int, default=64)
    prep.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    return parser.parse_args(argv)


@cli("gptdist.bench")
def main(argv=None) -> None:
    args = parse_args(argv)
    result = {"train": bench_train, "data": bench_data, "prepare": bench_prepare}[args.what](args)
    if distributed.rank() == 0:
        print_table(result)
        print(json.dumps(result))


if __name__ == "__main__":
    main()
