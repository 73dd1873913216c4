"""Time nanoGPT's training step (its train.py loop) on the shape of one of gptdist's benchmarks.

    python benchmarks/nanogpt_compare.py --nanogpt-dir PATH/TO/nanoGPT --data data/verdict --steps 20
    python benchmarks/nanogpt_compare.py --nanogpt-dir PATH --data DIR --device cuda --compile \\
        --block-size 1024 --batch-size 16 --log-interval 10

nanoGPT is not part of gptdist: point --nanogpt-dir at a checkout of it (its model.py is imported).
The loop is train.py's for one process: get_batch from a uint16 memmap (gptdist's shards are that
format; on CUDA pinned and copied asynchronously, the next batch fetched while the GPU computes),
forward with targets under autocast, backward, clip 1.0, AdamW step (fused on CUDA, as nanoGPT
chooses), zero_grad, and the loss read on the host every --log-interval steps (train.py's default
is 1; its config/train_gpt2.py uses 10). Prints one JSON line: tokens/s, MFU (computed as
gptdist computes it), peak memory, the device and the torch version.
"""

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from gptdist.arguments import ArgumentParser, input_path, non_negative_int, positive_int
from gptdist.data import shards
from gptdist.distributed import pick_device
from gptdist.errors import UserError, cli
from gptdist.observe.flops import device_peak
from gptdist.observe.memory import peak_device_bytes
from gptdist.observe.throughput import synchronize
from gptdist.training.costs import device_name


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="nanogpt_compare.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--nanogpt-dir", required=True, type=input_path, help="a nanoGPT checkout")
    parser.add_argument("--data", required=True, type=input_path,
                        help="a gptdist prepared folder (its first train shard is read)")
    parser.add_argument("--steps", type=positive_int, default=20, help="timed steps")
    parser.add_argument("--warmup", type=non_negative_int, default=3, help="untimed steps first")
    parser.add_argument("--n-layer", type=positive_int, default=6)
    parser.add_argument("--n-head", type=positive_int, default=6)
    parser.add_argument("--n-embd", type=positive_int, default=384)
    parser.add_argument("--block-size", type=positive_int, default=256)
    parser.add_argument("--batch-size", type=positive_int, default=8)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--dtype", default=None, choices=("float32", "bfloat16"),
                        help="autocast dtype (default: bfloat16 on CUDA, float32 on CPU, as train.py)")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=False,
                        help="torch.compile the model (train.py's default)")
    parser.add_argument("--log-interval", type=positive_int, default=1,
                        help="read the loss on the host every N steps")
    return parser


def checked(args) -> Path:
    """Everything the run needs, before any work: the checkout, the shape, the data, the device; returns the
    shard it reads."""
    if not (Path(args.nanogpt_dir) / "model.py").is_file():
        raise UserError(f"--nanogpt-dir {args.nanogpt_dir} holds no model.py: give the folder of a nanoGPT "
                        "checkout")
    if args.n_embd % args.n_head:
        raise UserError(f"--n-embd {args.n_embd} is not divisible by --n-head {args.n_head}")
    shard = shards.read_manifest(args.data).shard_paths("train")[0]
    if shard.stat().st_size // 2 <= args.block_size:
        raise UserError(f"--block-size {args.block_size}: the first train shard of {args.data} holds fewer "
                        "tokens than one window; lower it or give more data")
    pick_device(args.device, 0, "--device")
    return shard


@cli("nanogpt_compare.py")
def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    shard = checked(args)
    sys.path.insert(0, str(Path(args.nanogpt_dir).resolve()))
    from model import GPT, GPTConfig  # nanoGPT's

    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype or ("bfloat16" if device.type == "cuda" else "float32"))
    torch.manual_seed(1337)
    config = GPTConfig(n_layer=args.n_layer, n_head=args.n_head, n_embd=args.n_embd,
                       block_size=args.block_size, bias=False, vocab_size=50304, dropout=0.0)
    model = GPT(config).to(device)
    optimizer = model.configure_optimizers(0.1, 6e-4, (0.9, 0.95), device.type)
    raw_model = model
    if args.compile:
        model = torch.compile(model)
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)

    def get_batch():  # as nanoGPT's train.py: a new memmap every batch
        data = np.memmap(shard, dtype=np.uint16, mode="r")
        ix = torch.randint(len(data) - args.block_size, (args.batch_size,))
        x = torch.stack([torch.from_numpy(data[i : i + args.block_size].astype(np.int64)) for i in ix])
        y = torch.stack([torch.from_numpy(data[i + 1 : i + 1 + args.block_size].astype(np.int64))
                         for i in ix])
        if device.type == "cuda":
            return x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
        return x, y

    peak, peak_source = device_peak(device, dtype)  # before the run, as gptdist's trainer measures it
    x, y = get_batch()
    start = time.perf_counter()
    for step in range(args.warmup + args.steps):
        if step == args.warmup:
            synchronize(device)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            start = time.perf_counter()
        with autocast:
            _, loss = model(x, y)
        x, y = get_batch()  # fetched while the GPU computes, as train.py does
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step % args.log_interval == 0:
            loss.item()  # train.py's host sync: it prints the loss
        if step == 0:
            synchronize(device)
            first_step_s = round(time.perf_counter() - start, 3)
    final_loss = loss.item()
    seconds = (time.perf_counter() - start) / args.steps
    tokens = args.batch_size * args.block_size
    # The FLOPs per token as gptdist counts them: nanoGPT's get_num_params() leaves out the position
    # embedding and counts the tied token embedding once, as the head: gptdist's matmul parameters.
    flops_per_token = 6 * raw_model.get_num_params() + 12 * args.n_layer * args.block_size * args.n_embd
    print(json.dumps({
        "benchmark": "nanogpt", "device": str(device), "gpu": device_name(device), "torch": torch.__version__,
        "precision": str(dtype).removeprefix("torch."), "compile": args.compile,
        "micro_batch_size": args.batch_size, "context_length": args.block_size, "n_layer": args.n_layer,
        "ms_per_step": 1000 * seconds, "tokens_per_sec": tokens / seconds,
        "mfu": tokens / seconds * flops_per_token / peak, "peak_source": peak_source,
        "peak_memory_mb": peak_device_bytes(device) / 2**20,
        "first_step_s": first_step_s, "log_interval": args.log_interval, "loss": final_loss,
        "threads": torch.get_num_threads(),
    }))


if __name__ == "__main__":
    main()
