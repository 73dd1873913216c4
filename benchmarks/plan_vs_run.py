"""gptdist.plan beside a real run of the same config on this machine's device: one JSON row.

    python benchmarks/plan_vs_run.py --config FILE [--steps N] [section.key=value ...]

The run is `gptdist.bench memory` under torchrun with one process (its peak: torch.cuda.max_memory_allocated
on a GPU, the process's host peak on a CPU; its state and activations counted from the tensors), the plan
`gptdist.plan --json` for one GPU of this kind (a GPU missing from the table: its memory, 989 TFLOP/s,
3 TB/s). Both uncompiled (train.compile=false), as the plan measures. benchmarks/gpu.sh's `plan` part.
"""

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from gptdist import config  # noqa: E402
from gptdist.arguments import ArgumentParser, input_path, positive_int  # noqa: E402
from gptdist.errors import UserError, cli  # noqa: E402
from gptdist.observe import gpus  # noqa: E402

MIB = 2**20


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="benchmarks/plan_vs_run.py", description=__doc__.split("\n")[0])
    parser.add_argument("--config", type=input_path, required=True, help="YAML config")
    parser.add_argument("--steps", type=positive_int, default=5, help="timed steps of the run (default 5)")
    parser.add_argument("overrides", nargs="*", metavar="section.key=value", help="config overrides")
    return parser


def this_gpu() -> str:
    if not torch.cuda.is_available():
        return "24:1:1"  # a CPU: the memory figures are compared, the time is not
    known = gpus.by_device_name(torch.cuda.get_device_name())
    total = torch.cuda.get_device_properties(0).total_memory / 2**30
    return known.name if known else f"{total:.2f}:989:3"


def run(command: list[str]) -> dict:
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    if result.returncode != 0:
        lines = result.stderr.strip().splitlines()
        raise UserError(f"{' '.join(command[:6])} ... failed: {lines[-1] if lines else result.returncode}")
    return json.loads(result.stdout.strip().splitlines()[-1])


@cli("plan_vs_run.py")
def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    overrides = [*args.overrides, "train.compile=false"]
    config.load(args.config, overrides)  # a mistake in them is one line here, before either command runs
    measured = run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=1",
            "-m",
            "gptdist.bench",
            "memory",
            "--config",
            args.config,
            "--steps",
            str(args.steps),
            *overrides,
        ]
    )
    planned = run(
        [
            sys.executable,
            "-m",
            "gptdist.plan",
            "--config",
            args.config,
            "--gpus-per-node",
            "1",
            "--gpu",
            this_gpu(),
            "--json",
            *overrides,
        ]
    )
    memory = planned["memory_bytes"]
    print(
        json.dumps(
            {
                "benchmark": "plan",
                "config": args.config,
                "overrides": args.overrides,
                "device": measured["device"],
                "parallel": measured["parallel"],
                "micro_batch_size": measured["micro_batch_size"],
                "plan_peak_mb": round(memory["peak"] / MIB, 1),
                "measured_peak_mb": round(measured["peak_memory_mb"], 1),
                "peak_ratio": round(memory["peak"] / MIB / measured["peak_memory_mb"], 3),
                "plan_activations_mb": round(memory["activations"] / MIB, 1),
                "measured_activations_mb": round(measured["activations_mb"], 1),
                "plan_state_mb": round(
                    (memory["parameters"] + memory["gradients"] + memory["optimizer"]) / MIB, 1
                ),
                "measured_state_mb": round(measured["state_mb"], 1),
                "plan_ms_per_step": round(1000 * planned["step_s"], 2),
                "measured_ms_per_step": round(measured["ms_per_step"], 2),
                "plan_mfu": planned["mfu"],
                "plan_mfu_source": planned["mfu_source"],
            }
        )
    )


if __name__ == "__main__":
    main()
