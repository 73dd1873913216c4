"""Time nanoGPT's training step (its train.py loop) on the shape gptdist's CPU benchmark uses.

    python benchmarks/nanogpt_compare.py --nanogpt-dir PATH/TO/nanoGPT --data data/verdict --steps 20
    python -m gptdist.bench train --config configs/bench-cpu-small.yaml --steps 20

nanoGPT is not part of gptdist: point --nanogpt-dir at a checkout of it (its model.py is imported).
The loop is train.py's for one process on a CPU: get_batch from a uint16 memmap (gptdist's
shards are that format), forward with targets, backward, clip 1.0, AdamW step, zero_grad.
Prints one JSON line with tokens/s.
"""

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nanogpt-dir", required=True)
    parser.add_argument("--data", required=True, help="a gptdist prepared folder (its first train shard is read)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--n-layer", type=int, default=6)
    parser.add_argument("--n-head", type=int, default=6)
    parser.add_argument("--n-embd", type=int, default=384)
    parser.add_argument("--block-size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()
    sys.path.insert(0, str(Path(args.nanogpt_dir).resolve()))
    from model import GPT, GPTConfig  # nanoGPT's

    torch.manual_seed(1337)
    shard = Path(args.data) / "train-00000.bin"
    config = GPTConfig(n_layer=args.n_layer, n_head=args.n_head, n_embd=args.n_embd, block_size=args.block_size,
                       bias=False, vocab_size=50304, dropout=0.0)
    model = GPT(config)
    optimizer = model.configure_optimizers(0.1, 6e-4, (0.9, 0.95), "cpu")

    def get_batch():  # as nanoGPT's train.py: a new memmap every batch
        data = np.memmap(shard, dtype=np.uint16, mode="r")
        ix = torch.randint(len(data) - args.block_size, (args.batch_size,))
        x = torch.stack([torch.from_numpy(data[i : i + args.block_size].astype(np.int64)) for i in ix])
        y = torch.stack([torch.from_numpy(data[i + 1 : i + 1 + args.block_size].astype(np.int64)) for i in ix])
        return x, y

    for step in range(args.warmup + args.steps):
        if step == args.warmup:
            start = time.perf_counter()
        x, y = get_batch()
        _, loss = model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    seconds = (time.perf_counter() - start) / args.steps
    tokens = args.batch_size * args.block_size
    print(json.dumps({"benchmark": "nanogpt", "ms_per_step": 1000 * seconds, "tokens_per_sec": tokens / seconds,
                      "loss": loss.item(), "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
