r"""python -m gptdist.plan: a run planned before it queues, on any machine, without a GPU.

    python -m gptdist.plan --config configs/gutenberg-gpt2-medium.yaml --nodes 8 --gpus-per-node 8 --gpu h100
    python -m gptdist.plan --config configs/gutenberg-gpt2-xl.yaml --gpus-per-node 4 --gpu 80:989:3.35 \
        --data-tokens 9000000000 --json

The config is checked as `train` checks it at that world size (the same one-line errors; inputs that
are not on this machine are listed as not checked), then: memory per GPU by kind and the largest
micro-batch that fits, measured by running the real model's steps on fake tensors in a fake process
group of that size (planning/step_memory.py); the step's time, tokens/s, hours and GPU-hours at an MFU
(planning/timing.py); the checkpoint's size and write time; the data's windows and epochs. `--json`
prints the plan as one JSON object.
"""

import json

from .. import config
from ..arguments import ArgumentParser, Number, input_path, positive_float, positive_int, text
from ..errors import cli
from ..observe import gpus
from ..planning.assemble import Target, make_plan
from ..planning.report import table

mfu = Number(float, "in (0, 1]", lambda v: 0 < v <= 1)
headroom = Number(float, "in [0, 1)", lambda v: 0 <= v < 1)


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="python -m gptdist.plan", description=__doc__.split("\n")[0])
    parser.add_argument("--config", type=input_path, required=True, help="YAML config (configs/)")
    parser.add_argument("--nodes", type=positive_int, default=1, help="nodes (default 1)")
    parser.add_argument("--gpus-per-node", type=positive_int, default=8, help="GPUs a node (default 8)")
    parser.add_argument(
        "--gpu",
        type=text,
        default="h100",
        help=f"{', '.join(gpus.GPUS)} or MEM_GiB:TFLOPS:TBps (default h100)",
    )
    parser.add_argument(
        "--data-tokens",
        type=positive_int,
        default=None,
        help="the train split's tokens, where the data folders are not on this machine",
    )
    parser.add_argument(
        "--mfu",
        type=mfu,
        default=None,
        help="model FLOPs utilisation to plan with (default: measured for the GPU and shape, else 0.35)",
    )
    parser.add_argument(
        "--write-gbps",
        type=positive_float,
        default=0.4,
        help="checkpoint write bandwidth per rank, GB/s (default 0.4)",
    )
    parser.add_argument(
        "--headroom",
        type=headroom,
        default=0.1,
        help="share of GPU memory left free for CUDA, NCCL and the allocator (default 0.1)",
    )
    parser.add_argument("--json", action="store_true", help="print the plan as one JSON object")
    parser.add_argument("overrides", nargs="*", metavar="section.key=value", help="config overrides")
    return parser


@cli("gptdist.plan")
def main(argv=None) -> None:
    args = build_parser().parse_intermixed_args(argv)  # overrides before or after the flags
    gpu = gpus.parse(args.gpu)
    cfg = config.load(args.config, args.overrides)
    target = Target(
        args.nodes, args.gpus_per_node, gpu, args.data_tokens, args.mfu, args.write_gbps, args.headroom
    )
    plan = make_plan(cfg, args.config, target)
    print(json.dumps(plan) if args.json else table(plan), flush=True)
