"""Every ordinary mistake, on every command: a non-zero exit, one line naming the key or flag, no traceback,
and nothing the user had changed (an existing run, its data and other files, compared byte for byte).

Most of the table is generated from the declarations, not kept by hand: every config key (config.py:
its type, choices, Range and path role) gets a value of the wrong type, one out of its range and, for a
path, one that escapes through `..` into what the user has; every flag of every command (arguments.py:
Number, Text, PathArgument, choices) gets the same from its type. A key or flag without a declaration the
generator knows fails `test_the_table_covers_every_key_and_flag`. The mistakes no declaration describes
follow by hand.
"""

import argparse
import dataclasses
import os
import shlex
import shutil
import subprocess
import types
import typing

import pytest
import torch
import yaml
from inputs import train_args
from processes import REPO, command_module, run_main, run_module

from gptdist import bench, config, evaluate, export, generate, plan, prepare, train
from gptdist.arguments import INPUT, Number, PathArgument, Text
from gptdist.errors import UserError

CONFIG = REPO / "configs" / "verdict-tiny.yaml"
TRAIN, GENERATE, EVALUATE = "gptdist.train", "gptdist.generate", "gptdist.evaluate"
BENCH, PREPARE, EXPORT = "gptdist.bench", "gptdist.prepare", "gptdist.export"
PLAN = "gptdist.plan"
# the benchmark scripts, each a command as well
NANOGPT, TIME_TO_LOSS = "benchmarks/nanogpt_compare.py", "benchmarks/time_to_loss.py"
SYNTHETIC, TEXT = "benchmarks/synthetic_shards.py", "benchmarks/text_corpus.py"
REPORT = "benchmarks/gpu_report.py"
SCALE, PLAN_VS_RUN = "benchmarks/scale.py", "benchmarks/plan_vs_run.py"

# {run} is a finished run (checkpoints at steps 1 and 2), {data} its data, {tmp} a folder of other files.
# A command line of each command that works on them: a flag's case replaces its part of it.
WORKING = {
    TRAIN: ["--config", str(CONFIG)],
    GENERATE: ["--checkpoint", "{run}"],
    EVALUATE: ["--checkpoint", "{run}", "--data", "{data}"],
    EXPORT: ["--checkpoint", "{run}", "--out", "{tmp}/export"],
    PREPARE: ["--input", "{tmp}/corpus.txt", "--out", "{tmp}/prepared"],
    PLAN: ["--config", str(CONFIG), "--gpus-per-node", "2", "data.dir={data}"],
    **{f"{BENCH} {what}": [what, "--config", str(CONFIG)]
       for what in ("train", "data", "checkpoint", "memory")},
    f"{BENCH} prepare": ["prepare"],
    f"{BENCH} generate": ["generate", "--config", str(CONFIG), "--prompt-tokens", "4", "--new-tokens", "2",
                          "--repeats", "1"],
    NANOGPT: ["--nanogpt-dir", "{tmp}/nanogpt", "--data", "{data}", "--steps", "1"],
    TIME_TO_LOSS: ["--nanogpt-dir", "{tmp}/nanogpt", "--data", "{data}", "--budget", "1", "--results",
                   "{tmp}/rows.jsonl", "--plot", "{tmp}/curves.png"],
    SYNTHETIC: ["--tokens", "100", "--out", "{tmp}/synthetic"],
    TEXT: ["--megabytes", "1", "--out", "{tmp}/text"],
    REPORT: ["--results", "{tmp}/rows.jsonl"],
    SCALE: ["--data", "{data}", "--sizes", "2", "--results", "{tmp}/scale.jsonl", "--plot",
            "{tmp}/scale.png"],
    PLAN_VS_RUN: ["--config", str(CONFIG), "--steps", "1"],
}
PARSERS = {TRAIN: train, GENERATE: generate, EVALUATE: evaluate, EXPORT: export, PREPARE: prepare,
           BENCH: bench, PLAN: plan,
           **{script: command_module(script)
              for script in (NANOGPT, TIME_TO_LOSS, SYNTHETIC, TEXT, REPORT, SCALE, PLAN_VS_RUN)}}

# A path that leaves its place: an input through a file's `..` (it exists for no reader, whatever a
# lexical reading says), an output into what the user has.
ESCAPING_INPUT_FLAG, ESCAPING_OUTPUT_FLAG = "{data}/manifest.json/../../run", "{tmp}/../run"
ESCAPING_INPUT_KEY, ESCAPING_OUTPUT_KEY = "{data}/../run", "{run}/../data"
NUMBER_TEXTS = ["0", "-1", "nan", "inf", "4294967296", "1"]  # tried in turn for a value out of range


# --- config keys ------------------------------------------------------------------------------

def declared_keys():
    """(key, type hint without None, Range, path role) of every config key."""
    for section, cls in typing.get_type_hints(config.Config).items():
        hints = typing.get_type_hints(cls)
        for field in dataclasses.fields(cls):
            hint = hints[field.name]
            if typing.get_origin(hint) in (typing.Union, types.UnionType):  # None, or a word beside a number
                options = [a for a in typing.get_args(hint) if a is not type(None)]
                hint = next((a for a in options if typing.get_origin(a) is not typing.Literal), options[0])
            yield (f"{section}.{config.key_of(field.name)}", hint, field.metadata.get("check"),
                   field.metadata.get("path"))


def wrong_type(hint) -> str:
    origin = typing.get_origin(hint)
    if origin is typing.Literal or hint is str:
        return "[1, 2]"
    return {int: "many", float: "many", bool: "maybe", tuple: "many", list: "5"}[origin or hint]


def out_of_range(hint, check) -> str | None:
    """A value of the key's type that its Range (or its choices) refuses; None where it declares none."""
    if typing.get_origin(hint) is typing.Literal:
        return "bogus"
    if check is None:
        return None
    candidates = {int: NUMBER_TEXTS, float: NUMBER_TEXTS, tuple: ["[0.9, 1.0]"], str: [""]}
    for text in candidates[typing.get_origin(hint) or hint]:
        try:  # the value as the config reads it, if it is of the key's type
            value = config._convert("key", yaml.safe_load(text) if text else "", hint)
        except UserError:
            continue
        if not check.accepts(value):
            return text
    raise AssertionError(f"no value out of {check.description} among the candidates for {hint}")


def config_cases():
    for key, hint, check, path in declared_keys():
        yield TRAIN, [f"{key}={wrong_type(hint)}"], key, "wrong type"
        text = out_of_range(hint, check)
        if text is not None:
            yield TRAIN, [f"{key}={text}"], key, "out of range"
        if path is not None:
            escaping = ESCAPING_INPUT_KEY if path == INPUT else ESCAPING_OUTPUT_KEY
            yield TRAIN, [f"{key}={escaping}"], key, "path"


# --- flags ------------------------------------------------------------------------------------

def parsers():
    """(command, its parser) for every command, a bench subcommand as a command of its own."""
    for command, module in PARSERS.items():
        parser = module.build_parser()
        subcommands = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subcommands:
            yield command, parser
        for action in subcommands:
            for name, sub in action.choices.items():
                yield f"{command} {name}", sub


def hostile_values(action) -> list[tuple[str, str]]:
    """(value, kind) for one flag, from its declaration."""
    if action.nargs == 0:
        return [("=yes", "wrong type")]  # a switch given a value
    if isinstance(action.type, Number):
        low = next(t for t in NUMBER_TEXTS if _number_refused(action.type, t))
        return [(low, "out of range"), ("ten", "wrong type")]
    if action.choices is not None:
        return [("bogus", "out of range")]
    if isinstance(action.type, PathArgument):
        return [(ESCAPING_INPUT_FLAG if action.type.role == INPUT else ESCAPING_OUTPUT_FLAG, "path")]
    if isinstance(action.type, Text):
        return [("", "out of range")]
    raise AssertionError(f"{action.option_strings[0]} declares nothing the table knows (type {action.type})")


def _number_refused(number: Number, text: str) -> bool:
    try:
        return not number.valid(number.kind(text))
    except ValueError:
        return False


def without(arguments: list[str], flags) -> list[str]:
    """`arguments` without each of `flags` and the values that follow it."""
    kept, skipping = [], False
    for token in arguments:
        if token.startswith("--"):
            skipping = token in flags
        if not skipping:
            kept.append(token)
    return kept


def flag_cases():
    for command, parser in parsers():
        exclusive = {a: g._group_actions for g in parser._mutually_exclusive_groups for a in g._group_actions}
        for action in parser._actions:
            if not action.option_strings or isinstance(action, argparse._HelpAction):
                continue
            flag = action.option_strings[0]
            others = [f for a in exclusive.get(action, [action]) for f in a.option_strings]
            base = without(WORKING[command], others)
            for value, kind in hostile_values(action):
                given = [f"{flag}{value}"] if value == "=yes" else [flag, value]
                yield command.split()[0], base + given, flag, kind


# --- what no declaration describes --------------------------------------------------------------

HAND = [
    (TRAIN, ["--config", "{tmp}/section.yaml"], "config section train must be a mapping of keys, got 5"),
    (TRAIN, ["--config", "{tmp}"], "is a folder; give a YAML file"),
    (TRAIN, ["--config", "{run}/checkpoints/step_00000001.pt"], "is not text; give a YAML config"),
    (TRAIN, ["--config", "{tmp}/list.yaml"], "holds a list, not a mapping of sections"),
    (TRAIN, ["model.positions=rotary", "model.emb_dim=30", "model.n_heads=2"], "gives heads of 15, an odd"),
    (TRAIN, ["train.float8=tensorwise", "model.emb_dim=24", "model.n_heads=2"],
     "train.float8 needs the blocks' linear layers in multiples of 16"),
    (TRAIN, ["run.out_dir={tmp}/fresh", "model.init_from={tmp}/nowhere"], "model.init_from"),
    (TRAIN, ["eval.hellaswag_interval=1", "eval.hellaswag_file={tmp}/nowhere.jsonl"], "does not exist"),
    (TRAIN, ["run.out_dir={tmp}/fresh", "train.micro_batch_size=200"], "larger than the train split"),
    (TRAIN, ["--bogus"], "unrecognized arguments: --bogus"),
    (TRAIN, ["train.spike_warmup=200"], "train.spike_warmup 200 is larger than train.spike_window 128"),
    (TRAIN, ["train.device=cuda"], "train.device is cuda but this machine has no CUDA device"),
    (TRAIN, ["train.micro_batch_size=auto", "train.global_batch_size=8"],
     "train.micro_batch_size: auto sizes the micro-batch to a GPU's memory, and this run is on the cpu"),
    (TRAIN, ["train.micro_batch_size=auto"], "train.micro_batch_size: auto needs train.global_batch_size"),
    (TRAIN, ["train.global_batch_size=6"], "train.global_batch_size 6 is not train.micro_batch_size 4 x"),
    (TRAIN, ["train.parallel=fsdp"], "fsdp shards the model across the processes torchrun starts"),
    (TRAIN, ["train.parallel=fsdp", "train.precision=fp16"], "fsdp does not support train.precision: fp16"),
    (TRAIN, ["train.parallel=fsdp", "train.compile=true", "train.compile_mode=reduce-overhead"],
     "fsdp does not support train.compile_mode: reduce-overhead"),
    # nothing lost: a run never writes where it reads, over what another tool wrote, or over later checkpoints
    (TRAIN, ["run.out_dir={data}/inner"], "lies inside the input"),
    (TRAIN, ["model.init_from={run}/checkpoints/step_00000002.pt"], "holds the input"),
    (TRAIN, ["run.out_dir={tmp}/project"], "holds config.yaml but is not a gptdist run's folder"),
    (TRAIN, ["run.out_dir={tmp}/locked"], "holds text that no gptdist run wrote"),
    (TRAIN, ["checkpoint.resume={run}/checkpoints/step_00000001.pt"], "holds the later step_00000002.pt"),
    (EXPORT, ["--checkpoint", "{run}", "--out", "{run}", "--overwrite"], "is the input"),
    (EXPORT, ["--checkpoint", "{run}", "--out", "{run}/hf", "--overwrite"], "lies inside the input"),
    (EXPORT, ["--checkpoint", "{run}/checkpoints/step_00000002.pt", "--out", "{run}", "--overwrite"],
     "holds the input"),
    (EXPORT, ["--checkpoint", "{run}", "--out", "{data}", "--overwrite"],
     "holds 'manifest.json', which export did not write"),
    (PREPARE, ["--input", "{tmp}/corpus.txt", "--out", "{run}", "--overwrite"],
     "which prepare did not write"),
    (PREPARE, ["--input", "{data}/..", "--out", "{data}", "--overwrite"], "lies inside the input"),
    (PREPARE, ["--input", "{tmp}/corpus.txt", "--part", "3/2", "--out", "{tmp}/part"],
     "argument --part: 3/2 is out of range (must be K/N with 1 <= K <= N)"),
    (PREPARE, ["--input", "{tmp}/corpus.txt", "--part", "half", "--out", "{tmp}/part"],
     "argument --part: expected K/N"),
    (PREPARE, ["--verify", "{data}", "--part", "1/2"], "--part splits a list of input files"),
    (PREPARE, ["--merge", "{data}", "--out", "{tmp}/merged"], "is not a part (prepare it with --part K/N)"),
    (TRAIN, ["data.sources=[{{name: a, dir: {data}}}, {{name: a, dir: {data}}}]"],
     "config key data.sources[1].name: 'a' names two sources"),
    (TRAIN, ["data.sources=[{{name: a}}]"], "config key data.sources[0].dir is missing"),
    (TRAIN, ["data.sources=[{{name: a, dir: {data}, weight: 0}}]"],
     "config key data.sources[0].weight: 0.0 is out of range"),
    (TRAIN, ["data.sources=[{{name: a, dir: {tmp}/nowhere}}]"], "data folder"),
    (GENERATE, ["--checkpoint", "{data}/manifest.json"], "cannot be loaded: it is not a readable torch file"),
    (GENERATE, ["--checkpoint", "{tmp}/array.pt"], "it holds objects other than tensors and plain values"),
    (EVALUATE, ["--checkpoint", "{run}", "--data", "{data}", "--limit", "3"],
     "--limit is for --task hellaswag or lm-eval, not --task loss"),
    (EVALUATE, ["--checkpoint", "{run}", "--task", "lm-eval"], "--task lm-eval needs --tasks NAME[,NAME...]"),
    (GENERATE, ["--checkpoint", "{run}", "--stream", "--num-samples", "2"], "--stream prints one sequence"),
    (GENERATE, ["--checkpoint", "{run}", "--prompt-file", "{tmp}/corpus.txt", "--prompt", "x"],
     "not allowed with argument --prompt"),
    (f"{BENCH}", ["generate", "--checkpoint", "{run}", "--config", str(CONFIG)],
     "--config and overrides build a model; --checkpoint brings its own"),
    (f"{BENCH}", ["generate", "--config", str(CONFIG), "--recompute", "--prompt-tokens", "60"],
     "--prompt-tokens + --new-tokens must be at most the model's context of 64"),
    (NANOGPT, ["--nanogpt-dir", "{tmp}", "--data", "{data}"], "holds no model.py"),
    (NANOGPT, ["--nanogpt-dir", "{tmp}/nanogpt", "--data", "{data}", "--n-embd", "30", "--n-head", "4"],
     "--n-embd 30 is not divisible by --n-head 4"),
    (NANOGPT, ["--nanogpt-dir", "{tmp}/nanogpt", "--data", "{data}", "--block-size", "100000"],
     "fewer tokens than one window"),
    (TIME_TO_LOSS, ["--nanogpt-dir", "{tmp}/nanogpt", "--data", "{data}", "--results", "{tmp}/corpus.txt"],
     "is not a file of JSON rows this benchmark writes"),
    (TIME_TO_LOSS, ["--nanogpt-dir", "{tmp}/nanogpt", "--data", "{data}", "model.n_heads=5"],
     "is not divisible by model.n_heads 5"),
    (SYNTHETIC, ["--tokens", "100", "--out", "{tmp}/project"], "already exists"),
    (REPORT, ["--curves", "124M", "{run}", "{tmp}"], "holds no metrics.jsonl"),
    (SCALE, ["--data", "{data}", "--sizes", "2,3"], "--sizes: 3 does not divide the global batch of 32"),
    (SCALE, ["--data", "{data}", "--results", "{tmp}/corpus.txt"],
     "is not a file of JSON rows this benchmark"),
    # a plan stops where the run would, with the run's line
    (PLAN, ["--config", str(CONFIG), "--gpu", "a800"],
     "--gpu 'a800' is neither a known GPU (h100-pcie, h100"),
    (PLAN, ["--config", str(CONFIG), "--gpu", "80:0:3"], "--gpu '80:0:3': memory, TFLOPS and TB/s must be"),
    (PLAN, ["--config", str(CONFIG), "--gpus-per-node", "64", "data.dir={data}"],
     "a global batch of 256 sequences is larger than the train split (72 samples of 65 tokens)"),
    (PLAN, ["--config", str(CONFIG), "--data-tokens", "1000", "data.dir={tmp}/on-the-cluster"],
     "a global batch of 32 sequences is larger than the train split (15 samples of 65 tokens)"),
    (PLAN, ["--config", str(CONFIG), "train.parallel=fsdp", "train.precision=fp16"],
     "fsdp does not support train.precision: fp16"),
]
CASES = [(command, arguments, expected, "hand") for command, arguments, expected in HAND] + [
    (command, arguments, named, kind) for command, arguments, named, kind in [*config_cases(), *flag_cases()]]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, verdict_data):
    """A run that trained and checkpointed, with a copy of its data and other files: what a user has and
    must keep."""
    root = tmp_path_factory.mktemp("user")
    data = root / "data"
    shutil.copytree(verdict_data, data)
    result = run_main(TRAIN, *train_args(data, root / "run", "train.max_steps=2", "checkpoint.interval=1",
                                                   "checkpoint.keep=5"))
    assert result.returncode == 0, result.stderr
    files = root / "files"
    files.mkdir()
    (files / "section.yaml").write_text("train: 5\n")
    (files / "corpus.txt").write_text("A corpus of a user's. " * 20)
    torch.save({"array": __import__("numpy").zeros(3)}, files / "array.pt")
    (files / "project").mkdir()
    (files / "project" / "config.yaml").write_text("my: own settings\n")
    (files / "locked").mkdir()
    (files / "locked" / ".lock").write_text("held by another tool\n")
    (files / "list.yaml").write_text("- train\n- model\n")
    (files / "nanogpt").mkdir()
    (files / "nanogpt" / "model.py").write_text("# a nanoGPT checkout's model.py\n")
    return root


def snapshot(root):
    """Every file under `root`: a small one by its bytes, a large one (a checkpoint, tens of MB: reading
    them for every case would cost minutes) by its size, modification time and inode, which any write,
    replacement or removal changes."""
    return {p: p.read_bytes() if s.st_size < 2**20 else (s.st_size, s.st_mtime_ns, s.st_ino)
            for p in sorted(root.rglob("*")) if p.is_file() for s in [p.stat()]}


@pytest.mark.parametrize("command, arguments, expected, kind", CASES,
                         ids=[f"{c[0]} {' '.join(c[1])} ({c[3]})" for c in CASES])
def test_bad_input_is_one_line_and_changes_nothing(finished_run, command, arguments, expected, kind):
    if "cuda" in arguments and torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    root = finished_run
    places = {"run": root / "run", "data": root / "data", "tmp": root / "files"}
    arguments = [a.format(**places) for a in arguments]
    hostile = arguments[-1].split("=", 1)[-1]  # a path case's line may name the path instead of the flag
    if command == TRAIN and "--config" not in arguments and "--bogus" not in arguments:
        arguments = train_args(places["data"], places["run"], *arguments)
    elif command == TRAIN and arguments[:1] == ["--config"]:
        arguments = [*arguments, f"run.out_dir={places['run']}"]
    named = [expected, hostile] if kind == "path" else [expected]
    case = (f"{command} {shlex.join(arguments)}\n"
            f"({kind}: expected exit 2 and one line naming {' or '.join(named)})")
    before = snapshot(root)
    result = run_main(command, *arguments)
    assert result.returncode == 2, f"{case}\nexit {result.returncode}, stderr:\n{result.stderr[-2000:]}"
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, f"{case}\nstderr:\n{result.stderr[-2000:]}"
    program = command.removeprefix("benchmarks/")  # a script names itself by its file
    assert lines[0].startswith(f"{program}: error: ") and any(n in lines[0] for n in named), \
        f"{case}\nthe line: {lines[0]}"
    after = snapshot(root)
    changed = sorted(str(path) for path in {*before, *after} if before.get(path) != after.get(path))
    assert not changed, f"{case}\nchanged: {changed}"


def test_the_table_covers_every_key_and_flag():
    """Each key gets a wrong type, an out-of-range value where it declares a range or choices, and a
    path-escaping one where it is a path; each flag of each command at least one case."""
    kinds: dict[str, set] = {}
    for _, _, named, kind in [*config_cases(), *flag_cases()]:
        kinds.setdefault(named, set()).add(kind)
    for key, hint, check, path in declared_keys():
        expected = {"wrong type"} | ({"out of range"} if out_of_range(hint, check) is not None else set()) | (
            {"path"} if path else set())
        assert kinds[key] == expected, key
    flags = {a.option_strings[0] for _, parser in parsers() for a in parser._actions
             if a.option_strings and not isinstance(a, argparse._HelpAction)}
    assert flags <= set(kinds)


def test_a_benchmark_never_writes_into_the_run_it_is_given(finished_run):
    before = snapshot(finished_run)
    result = run_main(BENCH, "train", "--steps", "1", "--warmup", "0",
                      *train_args(finished_run / "data", finished_run / "run"))
    assert result.returncode == 0, result.stderr[-2000:]
    assert snapshot(finished_run) == before


@pytest.mark.parametrize("command, arguments, message", [
    (TRAIN, ["--config", str(CONFIG), "train.bogus=1"], "unknown config key train.bogus"),
    (PREPARE, ["--workers", "0"], "argument --workers: 0 is out of range"),
    (GENERATE, ["--checkpoint", "{tmp}/nowhere"], "does not exist"),
    (EVALUATE, ["--task", "loss", "--gpt2", "124M"], "--task loss needs --data"),
    (EXPORT, ["--checkpoint", "{tmp}/nowhere", "--out", "{tmp}/out"], "does not exist"),
    (BENCH, ["train", "--config", str(CONFIG), "--steps", "0"], "argument --steps: 0 is out of range"),
], ids=lambda value: value if isinstance(value, str) and value.startswith("gptdist") else None)
def test_every_command_as_a_process_exits_2_with_one_line(tmp_path, command, arguments, message):
    """The cases above run each command's main in the test's process; its process exits the same way."""
    result = run_module(command, *[a.format(tmp=tmp_path) for a in arguments])
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{command}: error: ") and message in lines[0], \
        result.stderr


@pytest.mark.parametrize("script, arguments, env, message", [
    ("gpu.sh", [], {}, "usage: bash benchmarks/gpu.sh NANOGPT_DIR"),
    ("gpu.sh", ["{tmp}"], {}, "NANOGPT_DIR {tmp} holds no model.py"),
    ("gpu.sh", ["{tmp}/nanogpt", "quick", "bogus"], {}, "unknown part bogus"),
    ("gpu.sh", ["{tmp}/nanogpt", "fp8"], {"CURVE_STEPS": "0"}, "CURVE_STEPS is 0"),
    ("gpu.sh", ["{tmp}/nanogpt"], {"RESULTS": "{tmp}/nowhere/rows.jsonl"}, "folder {tmp}/nowhere does not"),
    ("cpu.sh", ["{tmp}"], {}, "NANOGPT_DIR {tmp} holds no model.py"),
    ("checkpoint.sh", ["{tmp}/nowhere.yaml"], {}, "config {tmp}/nowhere.yaml is not a file"),
    ("checkpoint.sh", [], {"EVERY": "0"}, "EVERY is 0"),
    ("time_to_loss.sh", [], {}, "usage: bash benchmarks/time_to_loss.sh NANOGPT_DIR"),
    ("time_to_loss.sh", ["{tmp}/nanogpt", "--budget", "0"], {}, "argument --budget: 0.0 is out of range"),
], ids=lambda value: value if isinstance(value, str) and value.endswith(".sh") else None)
def test_every_benchmark_script_checks_its_inputs_before_any_work(finished_run, script, arguments, env,
                                                                  message):
    """One line, exit 2, and nothing written: not the user's files, not the results the script keeps."""
    places = {"tmp": finished_run / "files"}
    results = sorted((REPO / "benchmarks").glob("results-*.jsonl"))
    before = snapshot(finished_run), [path.read_bytes() for path in results]
    result = subprocess.run(["bash", f"benchmarks/{script}", *[a.format(**places) for a in arguments]],
                            capture_output=True, text=True, cwd=REPO, timeout=300,
                            env={**os.environ, **{k: v.format(**places) for k, v in env.items()}})
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr[-2000:]
    named = script.removesuffix(".sh")  # time_to_loss.sh hands its arguments to time_to_loss.py
    assert lines[0].startswith(f"{named}.") and message.format(**places) in lines[0], lines
    assert (snapshot(finished_run), [path.read_bytes() for path in results]) == before
