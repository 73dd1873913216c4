"""Write a prepared folder of N random GPT-2 token ids, to measure memory against corpus size.

    python benchmarks/synthetic_shards.py --tokens 100000000 --out /tmp/shards-100m
"""

from pathlib import Path

import numpy as np

from gptdist.arguments import ArgumentParser, output_path, positive_int
from gptdist.data import shards
from gptdist.errors import UserError, cli
from gptdist.tokenizer import EOT_TOKEN, GPT2_VOCAB_SIZE, TOKENIZER_NAME


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="synthetic_shards.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=positive_int, required=True, help="train and val together (9:1)")
    parser.add_argument("--out", type=output_path, required=True, help="the folder to write (must not exist)")
    parser.add_argument("--shard-tokens", type=positive_int, default=50_000_000)
    return parser


@cli("synthetic_shards.py")
def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    out = Path(args.out)
    if args.tokens < 10:
        raise UserError(f"--tokens {args.tokens}: a tenth goes to val, so at least 10")
    if out.exists() or out.is_symlink():
        raise UserError(f"--out {out} already exists; choose a new folder")
    out.mkdir(parents=True)
    dtype = shards.token_dtype(GPT2_VOCAB_SIZE)
    rng = np.random.default_rng(0)
    splits = {}
    for split, count in (("train", args.tokens - args.tokens // 10), ("val", args.tokens // 10)):
        writer = shards.ShardWriter(out, split, dtype, args.shard_tokens)
        for start in range(0, count, 1 << 24):
            writer.add_documents(rng.integers(0, GPT2_VOCAB_SIZE, min(1 << 24, count - start)).astype(dtype))
        splits[split] = writer.close()
    shards.write_manifest(out, {"format": shards.FORMAT, "tokenizer": TOKENIZER_NAME,
                                "vocab_size": GPT2_VOCAB_SIZE, "eot_token": EOT_TOKEN, "dtype": dtype.name,
                                "splits": splits, "source": {"synthetic": True, "tokens": args.tokens}})


if __name__ == "__main__":
    main()
