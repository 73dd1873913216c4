"""Every ordinary mistake, on every command: a non-zero exit, one line naming the key or flag, no traceback,
and nothing the user had changed (an existing run and its data are compared byte for byte)."""

import shutil

import pytest
import torch
from conftest import REPO, run_main, run_module, train_args

CONFIG = REPO / "configs" / "verdict-tiny.yaml"
TRAIN, GENERATE, EVALUATE = "gptdist.train", "gptdist.generate", "gptdist.evaluate"
BENCH, PREPARE = "gptdist.bench", "gptdist.prepare"
FROM_RUN = ["--checkpoint", "{run}"]  # generate and evaluate from the finished run
ON_DATA = [*FROM_RUN, "--data", "{data}"]
PREPARE_FILES = ["--input", "{tmp}", "--out", "{tmp}/out"]


def out_of_range(override: str, shown: str, must: str) -> tuple:
    """A train case whose config value is out of its range: the line names the key, value and range."""
    key = override.split("=", 1)[0]
    return TRAIN, [override], f"config key {key}: {shown} is out of range (must be {must})"


# (command, arguments, what the one line must say); {run} is an existing run, {data} its data, {tmp} a folder
CASES = [
    out_of_range("train.micro_batch_size=0", "0", "> 0"),
    out_of_range("train.grad_accum_steps=0", "0", "> 0"),
    out_of_range("train.max_steps=0", "0", "> 0"),
    out_of_range("train.epochs=-2", "-2", "> 0"),
    out_of_range("train.max_bad_steps=0", "0", "> 0"),
    out_of_range("model.context_length=0", "0", "> 0"),
    out_of_range("model.n_layers=0", "0", "> 0"),
    out_of_range("model.n_heads=-1", "-1", "> 0"),
    out_of_range("model.emb_dim=0", "0", "> 0"),
    out_of_range("model.drop_rate=1", "1.0", "in [0, 1)"),
    out_of_range("eval.interval=0", "0", "> 0"),
    out_of_range("eval.batches=0", "0", "> 0"),
    out_of_range("checkpoint.interval=0", "0", "> 0"),
    out_of_range("checkpoint.keep=-1", "-1", "at least 1"),
    out_of_range("logging.interval=0", "0", "> 0"),
    out_of_range("optim.lr=0", "0.0", "finite and > 0"),
    out_of_range("optim.lr=.inf", "inf", "finite and > 0"),
    out_of_range("optim.lr=nan", "nan", "finite and > 0"),
    out_of_range("optim.betas=[0.9, 1.0]", "(0.9, 1.0)", "two numbers in [0, 1)"),
    out_of_range("schedule.min_lr=-1e-5", "-1e-05", "finite and >= 0"),
    out_of_range("sample.temperature=-1", "-1.0", "finite and >= 0"),
    out_of_range("sample.max_new_tokens=0", "0", "> 0"),
    out_of_range("sample.top_k=0", "0", "> 0"),
    out_of_range("sample.prompt=", "''", "a non-empty text"),
    out_of_range("data.stride=0", "0", "> 0"),
    (TRAIN, ["--config", "{tmp}/section.yaml"], "config section train must be a mapping of keys, got 5"),
    (TRAIN, ["--config", "{tmp}"], "is a folder; give a YAML file"),
    (TRAIN, ["--bogus"], "unrecognized arguments: --bogus"),
    (TRAIN, ["train.device=cuda"], "train.device is cuda but this machine has no CUDA device"),
    (TRAIN, ["train.parallel=zero3"], "config key train.parallel: 'zero3' is not one of ddp, fsdp"),
    (TRAIN, ["train.parallel=fsdp"],
     "train.parallel: fsdp shards the model across the processes torchrun starts"),
    (TRAIN, ["train.parallel=fsdp", "train.precision=fp16"], "fsdp does not support train.precision: fp16"),
    (TRAIN, ["train.parallel=fsdp", "train.compile=true", "train.compile_mode=reduce-overhead"],
     "fsdp does not support train.compile_mode: reduce-overhead"),
    (TRAIN, ["train.activation_checkpointing=all"],
     "train.activation_checkpointing: 'all' is not one of none, blocks"),
    (GENERATE, [*FROM_RUN, "--max-new-tokens", "0"], "argument --max-new-tokens: 0 is out of range"),
    (GENERATE, [*FROM_RUN, "--temperature", "-1"], "argument --temperature: -1.0 is out of range"),
    (GENERATE, [*FROM_RUN, "--temperature", "nan"], "argument --temperature: nan is out of range"),
    (GENERATE, [*FROM_RUN, "--top-k", "-1"], "argument --top-k: -1 is out of range (must be >= 0)"),
    (GENERATE, [*FROM_RUN, "--max-new-tokens", "ten"], "argument --max-new-tokens: expected an integer"),
    (GENERATE, [*FROM_RUN, "--prompt", ""], "argument --prompt: is empty"),
    (GENERATE, [*FROM_RUN, "--device", "cuda"], "--device is cuda but this machine has no CUDA"),
    (GENERATE, ["--checkpoint", "{data}/manifest.json"], "cannot be loaded: it is not a readable torch file"),
    (GENERATE, ["--checkpoint", "{tmp}/array.pt"], "it holds objects other than tensors and plain values"),
    (EVALUATE, [*ON_DATA, "--batch-size", "0"], "argument --batch-size: 0"),
    (EVALUATE, [*ON_DATA, "--batches", "0"], "argument --batches: 0"),
    (EVALUATE, [*ON_DATA, "--context-length", "0"], "--context-length: 0"),
    (EVALUATE, [*ON_DATA, "--stride", "-1"], "argument --stride: -1"),
    (BENCH, ["train", "--config", str(CONFIG), "--steps", "0"], "argument --steps: 0 is out of range"),
    (BENCH, ["train", "--config", str(CONFIG), "--warmup", "-1"], "argument --warmup: -1 is out of range"),
    (BENCH, ["data", "--config", str(CONFIG), "--seconds", "0"], "argument --seconds: 0.0 is out of range"),
    (BENCH, ["prepare", "--megabytes", "0"], "argument --megabytes: 0 is out of range (must be > 0)"),
    (PREPARE, [*PREPARE_FILES, "--workers", "0"], "argument --workers: 0"),
    (PREPARE, [*PREPARE_FILES, "--shard-tokens", "0"], "--shard-tokens: 0"),
    (PREPARE, [*PREPARE_FILES, "--val-fraction", "1"], "--val-fraction: 1.0 is out"),
]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, verdict_data):
    """A run that trained and checkpointed, with a copy of its data: what a user has and must keep."""
    root = tmp_path_factory.mktemp("user")
    data = root / "data"
    shutil.copytree(verdict_data, data)
    result = run_main(TRAIN, *train_args(data, root / "run", "train.max_steps=2"))
    assert result.returncode == 0, result.stderr
    (root / "files").mkdir()
    (root / "files" / "section.yaml").write_text("train: 5\n")
    torch.save({"array": __import__("numpy").zeros(3)}, root / "files" / "array.pt")
    return root


def snapshot(root):
    return {p: p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("command, arguments, message", CASES, ids=[" ".join(c[1])[:60] for c in CASES])
def test_bad_input_is_one_line_and_changes_nothing(finished_run, command, arguments, message):
    if "cuda" in arguments and torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    root = finished_run
    places = {"run": root / "run", "data": root / "data", "tmp": root / "files"}
    arguments = [a.format(**places) for a in arguments]
    if command == TRAIN and "--config" not in arguments and "--bogus" not in arguments:
        arguments = train_args(places["data"], places["run"], *arguments)
    elif command == TRAIN and "--config" in arguments:
        arguments = [*arguments, f"run.out_dir={places['run']}"]
    before = snapshot(root)
    result = run_main(command, *arguments)
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert lines[0].startswith(f"{command}: error: ") and message in lines[0], lines[0]
    assert snapshot(root) == before


@pytest.mark.parametrize("command, arguments, message", [
    (TRAIN, ["--config", str(CONFIG), "train.bogus=1"], "unknown config key train.bogus"),
    (PREPARE, ["--workers", "0"], "argument --workers: 0 is out of range"),
    (GENERATE, ["--checkpoint", "{tmp}/nowhere"], "does not exist"),
    (EVALUATE, ["--task", "loss", "--gpt2", "124M"], "--task loss needs --data"),
    ("gptdist.export", ["--checkpoint", "{tmp}/nowhere", "--out", "{tmp}/out"], "does not exist"),
    (BENCH, ["train", "--config", str(CONFIG), "--steps", "0"], "argument --steps: 0 is out of range"),
], ids=lambda value: value if isinstance(value, str) and value.startswith("gptdist") else None)
def test_every_command_as_a_process_exits_2_with_one_line(tmp_path, command, arguments, message):
    """The cases above run each command's main in the test's process; its process exits the same way."""
    result = run_module(command, *[a.format(tmp=tmp_path) for a in arguments])
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{command}: error: ") and message in lines[0], \
        result.stderr
