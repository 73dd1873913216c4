"""Scale by simulation: the tiny model trained by N gloo processes on one machine, N = 2, 4, 8, 16 (32 where
memory allows), each a real torchrun job; what a cluster job meets as N grows, on a laptop.

For each N: the time from launch to the first step, the step time, each rank's host memory peak by the
first step, a checkpoint's stall and background write, and a resume's start-up (launch to first step,
and its setup). The global batch is the same at every N (accumulation 32 / N), so every N trains the
same steps on the same windows. Then a resume from 16 processes onto 4: the data order continues exactly
(the sampler's state equals the 16-process run's) and the weights follow the uninterrupted run's within
a summation order's rounding (a gradient summed over 16 ranks is not added in the order of one over 4).

    python benchmarks/scale.py --data data/verdict [--sizes 2,4,8,16,32] [--results FILE] [--plot FILE]

One JSON row per measurement into --results, a markdown table on stdout, a plot of time and memory by N.
"""

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.outputs import check_outputs  # noqa: E402
from gptdist.arguments import ArgumentParser, input_path, output_path, text  # noqa: E402
from gptdist.errors import UserError, cli  # noqa: E402

GLOBAL_BATCH = 32
SHAPE = [
    "model.context_length=64",
    "train.micro_batch_size=1",
    "model.drop_rate=0.0",
    "eval.interval=100000",
    "eval.at_start=false",
    "sample.max_new_tokens=1",
    "logging.interval=2",
    "checkpoint.keep=10",
    "data.verify=false",
]


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="benchmarks/scale.py", description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=input_path, required=True, help="a prepared folder (data/verdict)")
    parser.add_argument("--sizes", type=text, default="2,4,8,16,32", help="process counts, comma-separated")
    parser.add_argument("--results", type=output_path, default="benchmarks/results-scale.jsonl")
    parser.add_argument("--plot", type=output_path, default="docs/scale.png")
    return parser


def sizes_of(text_value: str) -> list[int]:
    try:
        sizes = [int(part) for part in text_value.split(",")]
    except ValueError:
        raise UserError(f"--sizes {text_value!r}: give process counts such as 2,4,8,16") from None
    for size in sizes:
        if size < 1 or GLOBAL_BATCH % size:
            raise UserError(f"--sizes: {size} does not divide the global batch of {GLOBAL_BATCH}")
    return sizes


def torchrun(nproc: int, out: Path, data: Path, steps: int, interval: int) -> tuple[float, str]:
    """A job of `nproc` processes to `steps` (checkpoints every `interval`): (launch time, its output)."""
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        "-m",
        "gptdist.train",
        "--config",
        str(REPO / "configs" / "verdict-tiny.yaml"),
        f"data.dir={data}",
        f"run.out_dir={out}",
        *SHAPE,
        f"train.grad_accum_steps={GLOBAL_BATCH // nproc}",
        f"train.max_steps={steps}",
        f"checkpoint.interval={interval}",
    ]
    launched = time.time()
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO, env={**os.environ})
    if result.returncode != 0:
        raise UserError(
            f"{nproc} processes failed (exit {result.returncode}): "
            f"{result.stderr.strip().splitlines()[-1] if result.stderr.strip() else ''}"
        )
    return launched, result.stdout


def rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def measured(nproc: int, out: Path, data: Path) -> dict:
    """A fresh job to step 12 (a checkpoint at 6 and 12), then a resume to step 16."""
    launched, _ = torchrun(nproc, out, data, steps=12, interval=6)
    first = rows(out)
    first_step = next(row for row in first if row.get("event") == "first_step")
    steps = [row for row in first if "loss" in row and row["step"] >= 4]
    step_s = statistics.median(
        (b["time"] - a["time"]) / (b["step"] - a["step"]) for a, b in zip(steps, steps[1:], strict=False)
    )
    saves = [row for row in first if row.get("event") == "checkpoint"]
    resumed_at, _ = torchrun(nproc, out, data, steps=16, interval=6)
    later = rows(out)[len(first) :]
    resume = next(row for row in later if row.get("event") == "resume")
    resumed_first = next(row for row in later if row.get("event") == "first_step")
    peaks = first_step["host_peak_mb"]
    return {
        "benchmark": "scale",
        "nproc": nproc,
        "global_batch": GLOBAL_BATCH,
        "startup_s": round(first_step["time"] - launched, 2),
        "step_s": round(step_s, 3),
        "host_peak_mb_max": max(peaks),
        "host_peak_mb_min": min(peaks),
        "host_peak_mb_total": round(sum(peaks), 1),
        "save_stall_s": saves[0]["stall_s"],
        "save_write_s": saves[0]["write_s"],
        "checkpoint_mb": round(saves[0]["bytes"] / 2**20, 1),
        "resume_startup_s": round(resumed_first["time"] - resumed_at, 2),
        "resume_setup_s": resume["setup_s"],
    }


def resume_16_onto_4(root: Path, data: Path) -> dict:
    """16 processes to step 8, resumed by 4 to step 12, against 16 processes to 12 uninterrupted."""
    import torch

    from gptdist.checkpoint import store

    reference, moved = root / "reference-16", root / "moved-16-to-4"
    torchrun(16, reference, data, steps=12, interval=4)
    torchrun(16, moved, data, steps=8, interval=4)
    saved = store.read(store.checkpoint_paths(moved / "checkpoints")[-1])
    torchrun(4, moved, data, steps=12, interval=4)
    a = store.read(store.checkpoint_paths(moved / "checkpoints")[-1])
    b = store.read(store.checkpoint_paths(reference / "checkpoints")[-1])
    resume = [row for row in rows(moved) if row.get("event") == "resume"][-1]
    differences = [
        ((a["model"][k] - b["model"][k]).abs().max() / b["model"][k].abs().max().clamp_min(1e-12)).item()
        for k in b["model"]
    ]
    return {
        "benchmark": "scale_resume",
        "from_nproc": 16,
        "to_nproc": 4,
        "resumed_step": resume["step"],
        "resumed_world_size": resume["world_size"],
        "saved_step": saved["progress"]["step"],
        "sampler_equal": a["sampler"] == b["sampler"],
        "progress_equal": a["progress"] == b["progress"],
        "weights_bitwise_equal": all(torch.equal(a["model"][k], b["model"][k]) for k in b["model"]),
        "weights_max_relative_difference": max(differences),
    }


def table(results: list[dict]) -> str:
    lines = [
        "| processes | launch to first step | step | host peak per rank (min-max) | all ranks | "
        "save stall / write | resume: launch to first step |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in results:
        lines.append(
            f"| {row['nproc']} | {row['startup_s']:.1f} s | {row['step_s']:.2f} s | "
            f"{row['host_peak_mb_min']:.0f}-{row['host_peak_mb_max']:.0f} MB | "
            f"{row['host_peak_mb_total'] / 1024:.1f} GB | "
            f"{row['save_stall_s']:.2f} / {row['save_write_s']:.2f} s | "
            f"{row['resume_startup_s']:.1f} s |"
        )
    return "\n".join(lines)


def plot(results: list[dict], path: Path) -> None:
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = [row["nproc"] for row in results]
    figure, (times, memory) = plt.subplots(1, 2, figsize=(10, 4))
    for key, label in (
        ("startup_s", "launch to first step"),
        ("resume_startup_s", "resume: launch to first step"),
    ):
        times.plot(sizes, [row[key] for row in results], marker="o", label=label)
    times.plot(sizes, [row["step_s"] * 10 for row in results], marker="o", label="10 steps")
    times.set(xlabel="processes (gloo, one machine)", ylabel="seconds", title="time")
    times.legend()
    memory.plot(sizes, [row["host_peak_mb_max"] for row in results], marker="o", label="largest rank")
    memory.plot(sizes, [row["host_peak_mb_min"] for row in results], marker="o", label="smallest rank")
    memory.set(
        xlabel="processes (gloo, one machine)", ylabel="MB", ylim=(0, None), title="host memory peak per rank"
    )
    for axes in (times, memory):  # processes on a log scale, each count named, no minor ticks
        axes.set_xscale("log", base=2)
        axes.set_xticks(sizes, [str(n) for n in sizes])
        axes.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    memory.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)


@cli("scale.py")
def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    sizes = sizes_of(args.sizes)
    data = Path(args.data).resolve()
    if not (data / "manifest.json").is_file():
        raise UserError(
            f"--data {data} is not a prepared data folder: python -m gptdist.prepare --dataset "
            f"verdict --out {args.data}"
        )
    check_outputs(
        (("--results", args.results, "a file of JSON rows"), ("--plot", args.plot, "a PNG image")), UserError
    )
    root = Path(tempfile.mkdtemp(prefix="gptdist-scale-"))
    results = []
    try:
        with open(args.results, "w") as out:
            for nproc in sizes:
                row = measured(nproc, root / f"run-{nproc}", data)
                results.append(row)
                out.write(json.dumps(row) + "\n")
                out.flush()
                print(json.dumps(row), flush=True)
                shutil.rmtree(root / f"run-{nproc}")
            if 16 in sizes and 4 in sizes:
                row = resume_16_onto_4(root, data)
                out.write(json.dumps(row) + "\n")
                print(json.dumps(row), flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(table(results))
    plot(results, Path(args.plot))


if __name__ == "__main__":
    main()
