"""The rows of benchmarks/gpu.sh: tag a run's JSON line, and turn the runs into ratios and a table.

    python benchmarks/gpu_report.py --results benchmarks/results-gpu.jsonl   ratio rows (rewritten), a table
    ... | python benchmarks/gpu_report.py --tag SHAPE LABEL           a run's JSON line with shape and label
    ... | python benchmarks/gpu_report.py --error SHAPE LABEL         a failed run's row, from its last output
    python benchmarks/gpu_report.py --curves SHAPE RUN_A RUN_B        the loss curves of two training runs

Ratios, per shape (the newest row of each label counts): gptdist / nanoGPT tokens/s and peak
memory; each option's run / the plain gptdist run of its shape; the shipped config under
torchrun / the best single-process gptdist run of the same model. A generation row carries its
own ratios (gptdist / transformers, gptdist / the recomputing loop).
"""

import json
import sys
from pathlib import Path

from gptdist.arguments import ArgumentParser, input_path, text
from gptdist.errors import UserError, cli

KEPT = ("tokens_per_sec", "mfu", "peak_memory_mb", "ms_per_step", "first_step_s", "gpu", "torch")


def tag(shape: str, label: str) -> None:
    row = json.loads(sys.stdin.read())
    print(json.dumps({"label": label, "shape": shape, **row}))


def error(shape: str, label: str) -> None:
    lines = [line for line in sys.stdin.read().splitlines() if line.strip()]
    print(json.dumps({"label": label, "shape": shape, "error": lines[-1] if lines else "failed"}))


def curves(shape: str, *runs: str) -> None:
    losses = {}
    for run in runs:
        rows = [json.loads(line) for line in (Path(run) / "metrics.jsonl").read_text().splitlines()]
        start = rows[0]["config"]
        recipe = start["train"]["float8"] or "bf16"
        losses[recipe] = {r["step"]: round(r["loss"], 4) for r in rows if "loss" in r}
    print(json.dumps({"label": "loss curves", "shape": shape, "losses": losses}))


def newest_runs(runs: list[dict]) -> dict[tuple[str, str], dict]:
    """The newest row of each (shape, label): a part run again replaces its figures."""
    return {(r["shape"], r["label"]): r for r in runs}


def ratio_rows(runs: list[dict]) -> list[dict]:
    newest = {key: r for key, r in newest_runs(runs).items() if "tokens_per_sec" in r}
    ratios = []
    for (shape, label), row in newest.items():
        if label == "nanogpt":
            continue
        if label == "gptdist":
            base, against = newest.get((shape, "nanogpt")), "nanogpt"
        elif shape.startswith("shipped "):
            model = shape.removeprefix("shipped ")
            plain = [r for (s, lab), r in newest.items() if lab == "gptdist" and s.startswith(model + " ")]
            base, against = max(plain, key=lambda r: r["tokens_per_sec"], default=None), "best single process"
        else:
            base, against = newest.get((shape, "gptdist")), "gptdist"
        if base is None:
            continue
        ratios.append({"label": f"ratio {label} / {against}", "shape": shape,
                       "ratio": round(row["tokens_per_sec"] / base["tokens_per_sec"], 4),
                       "memory_ratio": round(row["peak_memory_mb"] / base["peak_memory_mb"], 4),
                       "gpu": row.get("gpu"), "torch": row.get("torch")})
    return ratios


def generation_row(r: dict) -> str:
    """A generation row of the table: tokens/s and time to the first token beside transformers', the
    speed-up over the book's recomputing loop where it was measured."""
    ours, theirs = r["gptdist"], r["transformers"]
    recompute = f"; {r['vs_recompute']:.1f}x the recomputing loop" if "vs_recompute" in r else ""
    return (f"| {r['shape']} | {r['label']} | {ours['tokens_per_sec']:,.0f} vs "
            f"{theirs['tokens_per_sec']:,.0f} tokens/s, first token {1e3 * ours['first_token_s']:.0f} vs "
            f"{1e3 * theirs['first_token_s']:.0f} ms{recompute} | | {ours['peak_memory_mb'] / 1024:.1f} GB | "
            f"**{r['vs_transformers']:.2f}x** transformers |")


def report(path: Path) -> None:
    runs = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    runs = [r for r in runs if not r["label"].startswith("ratio ")]
    ratios = ratio_rows(runs)
    path.write_text("".join(json.dumps(r) + "\n" for r in runs + ratios))
    print("| shape | run | tokens/s | MFU | peak memory | ratio |")
    print("| --- | --- | --- | --- | --- | --- |")
    by_run = {(r["shape"], r["label"].split(" / ")[0].removeprefix("ratio ")): r for r in ratios}
    for r in newest_runs(runs).values():
        if "error" in r:
            print(f"| {r['shape']} | {r['label']} | failed: {r['error'][:80]} | | | |")
        elif "tokens_per_sec" in r:
            ratio = by_run.get((r["shape"], r["label"]))
            shown = f"**{ratio['ratio']:.2f}x** {ratio['label'].split(' / ')[1]}" if ratio else ""
            print(f"| {r['shape']} | {r['label']} | {r['tokens_per_sec'] / 1e3:,.0f}K | "
                  f"{100 * r['mfu']:.1f}% | {r['peak_memory_mb'] / 1024:.1f} GB | {shown} |")
        elif "state_mb" in r:
            print(f"| {r['shape']} | {r['label']} | {r['ms_per_step']:,.0f} ms/step at micro-batch "
                  f"{r['micro_batch_size']}: state {r['state_mb'] / 1024:.1f} GB, activations "
                  f"{r['activations_mb'] / 1024:.1f} GB per rank | | {r['peak_memory_mb'] / 1024:.1f} GB | |")
        elif r.get("benchmark") == "generate":
            print(generation_row(r))
        elif "stall_s" in r:
            print(f"| {r['shape']} | {r['label']} | training stopped {r['stall_s']:.2f} s (blocking save: "
                  f"{r['blocking_s']:.2f} s) for {r['bytes'] / 1e9:.2f} GB | | | |")


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="gpu_report.py", description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--tag", nargs=2, type=text, metavar=("SHAPE", "LABEL"), help="tag a run's JSON line")
    mode.add_argument("--error", nargs=2, type=text, metavar=("SHAPE", "LABEL"), help="a failed run's row")
    mode.add_argument("--curves", nargs=3, type=text, metavar=("SHAPE", "RUN_A", "RUN_B"),
                      help="the loss curves of two training runs")
    mode.add_argument("--results", type=input_path, help="a results file: its ratio rows rewritten, a table")
    return parser


@cli("gpu_report.py")
def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    if args.curves:
        shape, *runs = args.curves
        for run in runs:
            if not (Path(run) / "metrics.jsonl").is_file():
                raise UserError(f"--curves: {run} holds no metrics.jsonl; give two training runs' folders")
        curves(shape, *runs)
    elif args.results:
        if not Path(args.results).is_file():
            raise UserError(f"--results {args.results} is not a file")
        report(Path(args.results))
    else:
        (tag if args.tag else error)(*(args.tag or args.error))


if __name__ == "__main__":
    main()
