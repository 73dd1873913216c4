"""Every ordinary mistake, on every command: a non-zero exit, one line naming the key or flag, no traceback,
and nothing the user had changed (an existing run and its data are compared byte for byte)."""

import shutil

import pytest
import torch
from conftest import REPO, run_module, train_args

CONFIG = REPO / "configs" / "verdict-tiny.yaml"
TRAIN = "gptdist.train"

# (command, arguments, what the one line must say); {run} is an existing run, {data} its data, {tmp} a folder
CASES = [
    (TRAIN, ["train.micro_batch_size=0"], "config key train.micro_batch_size: 0 is out of range (must be > 0)"),
    (TRAIN, ["train.grad_accum_steps=0"], "config key train.grad_accum_steps: 0 is out of range (must be > 0)"),
    (TRAIN, ["train.max_steps=0"], "config key train.max_steps: 0 is out of range (must be > 0)"),
    (TRAIN, ["train.epochs=-2"], "config key train.epochs: -2 is out of range (must be > 0)"),
    (TRAIN, ["train.max_bad_steps=0"], "config key train.max_bad_steps: 0 is out of range (must be > 0)"),
    (TRAIN, ["model.context_length=0"], "config key model.context_length: 0 is out of range (must be > 0)"),
    (TRAIN, ["model.n_layers=0"], "config key model.n_layers: 0 is out of range (must be > 0)"),
    (TRAIN, ["model.n_heads=-1"], "config key model.n_heads: -1 is out of range (must be > 0)"),
    (TRAIN, ["model.emb_dim=0"], "config key model.emb_dim: 0 is out of range (must be > 0)"),
    (TRAIN, ["model.drop_rate=1"], "config key model.drop_rate: 1.0 is out of range (must be in [0, 1))"),
    (TRAIN, ["eval.interval=0"], "config key eval.interval: 0 is out of range (must be > 0)"),
    (TRAIN, ["eval.batches=0"], "config key eval.batches: 0 is out of range (must be > 0)"),
    (TRAIN, ["checkpoint.interval=0"], "config key checkpoint.interval: 0 is out of range (must be > 0)"),
    (TRAIN, ["checkpoint.keep=-1"], "config key checkpoint.keep: -1 is out of range (must be at least 1)"),
    (TRAIN, ["logging.interval=0"], "config key logging.interval: 0 is out of range (must be > 0)"),
    (TRAIN, ["optim.lr=0"], "config key optim.lr: 0.0 is out of range (must be finite and > 0)"),
    (TRAIN, ["optim.lr=.inf"], "config key optim.lr: inf is out of range (must be finite and > 0)"),
    (TRAIN, ["optim.lr=nan"], "config key optim.lr: nan is out of range (must be finite and > 0)"),
    (TRAIN, ["optim.betas=[0.9, 1.0]"], "config key optim.betas: (0.9, 1.0) is out of range (must be two numbers"),
    (TRAIN, ["schedule.min_lr=-1e-5"], "config key schedule.min_lr: -1e-05 is out of range (must be finite and >= 0)"),
    (TRAIN, ["sample.temperature=-1"], "config key sample.temperature: -1.0 is out of range (must be finite and >= 0)"),
    (TRAIN, ["sample.max_new_tokens=0"], "config key sample.max_new_tokens: 0 is out of range (must be > 0)"),
    (TRAIN, ["sample.top_k=0"], "config key sample.top_k: 0 is out of range (must be > 0)"),
    (TRAIN, ["sample.prompt="], "config key sample.prompt: '' is out of range (must be a non-empty text)"),
    (TRAIN, ["data.stride=0"], "config key data.stride: 0 is out of range (must be > 0)"),
    (TRAIN, ["--config", "{tmp}/section.yaml"], "config section train must be a mapping of keys, got 5"),
    (TRAIN, ["--config", "{tmp}"], "is a folder; give a YAML file"),
    (TRAIN, ["--bogus"], "unrecognized arguments: --bogus"),
    (TRAIN, ["train.device=cuda"], "train.device is cuda but this machine has no CUDA device"),
    (TRAIN, ["train.parallel=zero3"], "config key train.parallel: 'zero3' is not one of ddp, fsdp"),
    (TRAIN, ["train.parallel=fsdp"], "train.parallel: fsdp shards the model across the processes torchrun starts"),
    (TRAIN, ["train.parallel=fsdp", "train.precision=fp16"], "fsdp does not support train.precision: fp16"),
    (TRAIN, ["train.parallel=fsdp", "train.compile=true", "train.compile_mode=reduce-overhead"],
     "fsdp does not support train.compile_mode: reduce-overhead"),
    (TRAIN, ["train.activation_checkpointing=all"], "train.activation_checkpointing: 'all' is not one of none, blocks"),
    ("gptdist.generate", ["--checkpoint", "{run}", "--max-new-tokens", "0"], "argument --max-new-tokens: 0 is out of range"),
    ("gptdist.generate", ["--checkpoint", "{run}", "--temperature", "-1"], "argument --temperature: -1.0 is out of range"),
    ("gptdist.generate", ["--checkpoint", "{run}", "--temperature", "nan"], "argument --temperature: nan is out of range"),
    ("gptdist.generate", ["--checkpoint", "{run}", "--top-k", "-1"], "argument --top-k: -1 is out of range (must be >= 0)"),
    ("gptdist.generate", ["--checkpoint", "{run}", "--max-new-tokens", "ten"], "argument --max-new-tokens: expected an integer"),
    ("gptdist.generate", ["--checkpoint", "{run}", "--prompt", ""], "argument --prompt: is empty"),
    ("gptdist.generate", ["--checkpoint", "{run}", "--device", "cuda"], "--device is cuda but this machine has no CUDA"),
    ("gptdist.generate", ["--checkpoint", "{data}/manifest.json"], "cannot be loaded: it is not a readable torch file"),
    ("gptdist.generate", ["--checkpoint", "{tmp}/array.pt"], "it holds objects other than tensors and plain values"),
    ("gptdist.evaluate", ["--checkpoint", "{run}", "--data", "{data}", "--batch-size", "0"], "argument --batch-size: 0"),
    ("gptdist.evaluate", ["--checkpoint", "{run}", "--data", "{data}", "--batches", "0"], "argument --batches: 0"),
    ("gptdist.evaluate", ["--checkpoint", "{run}", "--data", "{data}", "--context-length", "0"], "--context-length: 0"),
    ("gptdist.evaluate", ["--checkpoint", "{run}", "--data", "{data}", "--stride", "-1"], "argument --stride: -1"),
    ("gptdist.bench", ["train", "--config", str(CONFIG), "--steps", "0"], "argument --steps: 0 is out of range"),
    ("gptdist.bench", ["train", "--config", str(CONFIG), "--warmup", "-1"], "argument --warmup: -1 is out of range"),
    ("gptdist.bench", ["data", "--config", str(CONFIG), "--seconds", "0"], "argument --seconds: 0.0 is out of range"),
    ("gptdist.bench", ["prepare", "--megabytes", "0"], "argument --megabytes: 0 is out of range (must be > 0)"),
    ("gptdist.prepare", ["--input", "{tmp}", "--out", "{tmp}/out", "--workers", "0"], "argument --workers: 0"),
    ("gptdist.prepare", ["--input", "{tmp}", "--out", "{tmp}/out", "--shard-tokens", "0"], "--shard-tokens: 0"),
    ("gptdist.prepare", ["--input", "{tmp}", "--out", "{tmp}/out", "--val-fraction", "1"], "--val-fraction: 1.0 is out"),
]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, verdict_data):
    """A run that trained and checkpointed, with a copy of its data: what a user has and must keep."""
    root = tmp_path_factory.mktemp("user")
    data = root / "data"
    shutil.copytree(verdict_data, data)
    result = run_module(TRAIN, *train_args(data, root / "run", "train.max_steps=2"))
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
    result = run_module(command, *arguments)
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert lines[0].startswith(f"{command}: error: ") and message in lines[0], lines[0]
    assert snapshot(root) == before
