"""Write a prepared folder of N random GPT-2 token ids, to measure memory against corpus size.

    python benchmarks/synthetic_shards.py --tokens 100000000 --out /tmp/shards-100m
"""

import argparse
from pathlib import Path

import numpy as np

from gptdist.data import shards
from gptdist.tokenizer import EOT_TOKEN, GPT2_VOCAB_SIZE, TOKENIZER_NAME


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--shard-tokens", type=int, default=50_000_000)
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True)
    dtype = shards.token_dtype(GPT2_VOCAB_SIZE)
    rng = np.random.default_rng(0)
    splits = {}
    for split, count in (("train", args.tokens - args.tokens // 10), ("val", args.tokens // 10)):
        writer = shards.ShardWriter(out, split, dtype, args.shard_tokens)
        for start in range(0, count, 1 << 24):
            writer.add_document(rng.integers(0, GPT2_VOCAB_SIZE, min(1 << 24, count - start)).astype(dtype))
        splits[split] = writer.close()
    shards.write_manifest(out, {"format": shards.FORMAT, "tokenizer": TOKENIZER_NAME,
                                "vocab_size": GPT2_VOCAB_SIZE, "eot_token": EOT_TOKEN, "dtype": dtype.name,
                                "splits": splits, "source": {"synthetic": True, "tokens": args.tokens}})


if __name__ == "__main__":
    main()
