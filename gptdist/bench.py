r"""python -m gptdist.bench: measured speed of the real training step, the data loader, prepare and
generation.

    python -m gptdist.bench train --config configs/bench-cpu-small.yaml --steps 20
    torchrun --nproc_per_node=8 -m gptdist.bench train --config configs/gutenberg-gpt2-124m.yaml
    python -m gptdist.bench data --config configs/bench-cpu-small.yaml
    python -m gptdist.bench prepare --megabytes 64 --workers 2
    python -m gptdist.bench generate --prompt-tokens 64 --new-tokens 512 --recompute
    python -m gptdist.bench checkpoint --config configs/bench-cpu-small.yaml
    torchrun --nproc_per_node=2 -m gptdist.bench memory --config configs/bench-cpu-small.yaml \
        train.parallel=fsdp

Each prints a table and one JSON line. `generate` times gptdist's cached generation beside
transformers' generate() on the same weights exported (default: OpenAI's GPT-2 124M shape, as
initialised; --config and overrides, or a checkpoint, for another). MFU is computed as training
logs it (observe/flops.py):
6N + 12·L·T·d FLOPs per token against the device's peak, a table of known GPUs (bf16 dense;
--peak-tflops overrides) or, on a CPU, a matmul timed on the spot in the run's dtype.
"""

import json
import os
import sys

from . import distributed
from .arguments import ArgumentParser, input_path, non_negative_int, positive_float, positive_int
from .checkpoint import pretrained
from .data import rates
from .errors import cli
from .evaluation import decode_costs
from .training import costs


def print_table(result: dict) -> None:
    width = max(map(len, result))
    for key, value in result.items():
        if isinstance(value, list) and value and isinstance(value[0], dict):  # one row per rank
            for row in value:
                print(f"{key:<{width}}  " + ", ".join(f"{k} {v}" for k, v in row.items()), file=sys.stderr)
            continue
        shown = f"{value:,.4g}" if isinstance(value, float) else value
        print(f"{key:<{width}}  {shown}", file=sys.stderr)


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="gptdist.bench", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    train = sub.add_parser("train", help="the training step of a config")
    data = sub.add_parser("data", help="the data loader alone")
    save = sub.add_parser("checkpoint", help="the training time a checkpoint costs, blocking and in the "
                                             "background")
    memory = sub.add_parser("memory", help="per-rank memory: state (parameters, gradients, AdamW) and "
                                           "activations")
    memory.add_argument("--steps", type=positive_int, default=5, help="timed steps")
    for p in (train, data, save, memory):
        p.add_argument("--config", required=True, type=input_path)
        p.add_argument("overrides", nargs="*", metavar="section.key=value")
    train.add_argument("--steps", type=positive_int, default=20, help="timed steps")
    train.add_argument("--warmup", type=non_negative_int, default=3, help="untimed steps first (compilation, "
                                                                          "allocator)")
    train.add_argument("--peak-tflops", type=positive_float, help="the device's peak, overriding the "
                                                                  "table/measurement")
    train.add_argument("--eval", action="store_true", help="also time two evaluations (the first compiles)")
    data.add_argument("--seconds", type=positive_float, default=3.0)
    save.add_argument("--rounds", type=positive_int, default=3, help="saves of each kind (the median is "
                                                                     "reported)")
    save.add_argument("--pairs", type=non_negative_int, default=0,
                      help="also time this many pairs of --interval-step blocks, with a background save and "
                           "without")
    save.add_argument("--interval", type=positive_int, default=20, help="steps per block (a checkpoint "
                                                                        "interval)")
    prep = sub.add_parser("prepare", help="prepare's throughput on a synthetic corpus of many documents")
    prep.add_argument("--megabytes", type=positive_int, default=64)
    prep.add_argument("--workers", type=positive_int, default=os.cpu_count() or 1,
                      help="the most worker processes: 1, 2, 4, ... and this many are measured")
    prep.add_argument("--repeats", type=positive_int, default=5,
                      help="pairs of runs, tiktoken's and prepare's back to back, at each worker count (the "
                           "median of their ratios counts)")
    gen = sub.add_parser("generate", help="tokens/s, time to first token and memory of generation, beside "
                                          "transformers'")
    gen.add_argument("--config", type=input_path,
                     help="a config whose model section to build (default: GPT-2 124M)")
    gen.add_argument("overrides", nargs="*", metavar="model.key=value")
    source = gen.add_mutually_exclusive_group()
    source.add_argument("--checkpoint", type=input_path, help="a gptdist checkpoint or run folder")
    source.add_argument("--gpt2", choices=pretrained.gpt2.SIZES, help="OpenAI GPT-2 weights of this size")
    source.add_argument("--gpt2-dir", type=input_path, help="a folder of OpenAI or Hugging Face files")
    gen.add_argument("--prompt-tokens", type=positive_int, default=64)
    gen.add_argument("--new-tokens", type=positive_int, default=512)
    gen.add_argument("--batch-size", type=positive_int, default=1)
    gen.add_argument("--repeats", type=positive_int, default=3, help="timed runs of each side, alternating")
    gen.add_argument("--recompute", action="store_true",
                     help="also time the book's loop, which recomputes the whole window for every token")
    gen.add_argument("--no-compile", action="store_true", help="on CUDA, do not compile the one-token step")
    gen.add_argument("--dtype", default="auto", choices=("auto", "fp32", "bf16"), help="auto: bf16 on CUDA")
    gen.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    return parser


def parse_args(argv=None):
    return build_parser().parse_args(argv)


@cli("gptdist.bench")
def main(argv=None) -> None:
    args = parse_args(argv)
    benchmarks = {"train": costs.bench_train, "checkpoint": costs.bench_checkpoint,
                  "memory": costs.bench_memory, "data": rates.bench_data, "prepare": rates.bench_prepare,
                  "generate": decode_costs.bench_generate}
    result = benchmarks[args.what](args)
    if distributed.rank() == 0:
        print_table(result)
        print(json.dumps(result))


if __name__ == "__main__":
    main()
