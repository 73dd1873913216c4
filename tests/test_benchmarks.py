"""benchmarks/gpu.sh on a CPU with tiny models: every row, ratio and curve it writes, ready for a GPU.

nanoGPT is not part of gptdist: $GPTDIST_NANOGPT_DIR points at a checkout of it, else the tests write a
stand-in with the interface its model.py gives the benchmarks (GPTConfig, GPT(config)(x, y) -> logits,
loss; get_num_params; configure_optimizers), built from gptdist's own model."""

import json
import os
import subprocess
from pathlib import Path

import pytest
from conftest import REPO

NANOGPT_STAND_IN = '''"""A stand-in for nanoGPT's model.py (GPTConfig, GPT) on gptdist's GPTModel."""
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from gptdist.config import ModelConfig
from gptdist.model.gpt import GPTModel


@dataclass
class GPTConfig:
    block_size: int = 1024
    vocab_size: int = 50304
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    bias: bool = True


class GPT(torch.nn.Module):
    def __init__(self, config):
        super().__init__()
        shape = ModelConfig(vocab_size=config.vocab_size, vocab_multiple=1, n_layers=config.n_layer,
                            n_heads=config.n_head, emb_dim=config.n_embd, drop_rate=config.dropout,
                            context_length=config.block_size, bias=config.bias, tie_embeddings=True)
        self.model = GPTModel(shape)

    def forward(self, idx, targets=None):
        logits = self.model(idx)
        loss = None if targets is None else F.cross_entropy(logits.flatten(0, 1), targets.flatten())
        return logits, loss

    def get_num_params(self, non_embedding=True):
        return self.model.num_params() - (self.model.pos_emb.weight.numel() if non_embedding else 0)

    def configure_optimizers(self, weight_decay, learning_rate, betas, device_type):
        params = [p for p in self.parameters() if p.requires_grad]
        groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
                  {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
        return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, fused=device_type == "cuda")
'''
# One layer of width 16 and 16-token windows: each run is a second or two of work, its start-up aside.
TINY_GPTDIST = ("train.device=cpu train.precision=fp32 train.compile=false model.n_layers=1 model.emb_dim=16 "
                "model.n_heads=2 model.context_length=16")
TINY_NANOGPT = "--device cpu --dtype float32 --no-compile --n-layer 1 --n-embd 16 --n-head 2 --block-size 16"


@pytest.fixture(scope="module")
def nanogpt(tmp_path_factory) -> Path:
    """A nanoGPT checkout ($GPTDIST_NANOGPT_DIR), or a stand-in with its model.py's interface."""
    if os.environ.get("GPTDIST_NANOGPT_DIR"):
        return Path(os.environ["GPTDIST_NANOGPT_DIR"])
    folder = tmp_path_factory.mktemp("nanogpt")
    (folder / "model.py").write_text(NANOGPT_STAND_IN)
    return folder


@pytest.mark.slow
def test_gpu_script_writes_a_row_per_run_a_ratio_per_shape_the_fp8_curves_the_save_cost_and_fsdp(
        tmp_path, download_cache, nanogpt):
    pytest.importorskip("torchao")
    # Two calls at once, each on one core of its own (one thread: a CPU's peak is measured as the runs
    # use it), as a GPU session makes them one after the other; the shipped config is compared with the
    # single-process runs of its own call.
    env = {**os.environ, "BENCH_STEPS": "--steps 2 --warmup 1", "GPTDIST_ARGS": TINY_GPTDIST,
           "NANOGPT_ARGS": TINY_NANOGPT, "GPTDIST_CACHE": str(download_cache), "CURVE_STEPS": "30",
           "CORPUS_MB": "1", "TOKENS": "200000", "OMP_NUM_THREADS": "1"}
    calls = {tmp_path / "compare.jsonl": ["compare", "shipped"],
             tmp_path / "parts.jsonl": ["fp8", "checkpoint", "fsdp"]}
    scripts = [subprocess.Popen(["bash", "benchmarks/gpu.sh", str(nanogpt), *parts], cwd=REPO,
                                env={**env, "RESULTS": str(results)}, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
               for results, parts in calls.items()]
    outputs = [script.communicate(timeout=900) for script in scripts]
    for script, (_, stderr) in zip(scripts, outputs, strict=True):
        assert script.returncode == 0, stderr[-3000:]
    stdout = "".join(out for out, _ in outputs)
    rows = [json.loads(line) for results in calls for line in results.read_text().splitlines()]
    runs = {(r["shape"], r["label"]): r for r in rows if "tokens_per_sec" in r}
    shapes = ["124M mb16", "124M mb32", "124M mb64", "355M mb16"]
    assert set(runs) == {(s, p) for s in shapes for p in ("gptdist", "nanogpt")} | {
        ("shipped 124M", "gptdist torchrun"), ("355M mb16", "gptdist float8=tensorwise"),
        ("355M mb16", "gptdist float8=rowwise"), ("124M mb32 torchrun", "gptdist"),
        ("124M mb32 torchrun", "gptdist parallel=fsdp")}
    assert not [r for r in rows if "error" in r]
    for run in runs.values():
        assert run["tokens_per_sec"] > 0 and 0 < run["mfu"] < 1 and run["peak_memory_mb"] > 0
        assert run["gpu"] and run["torch"]
    ratios = {(r["shape"], r["label"]): r["ratio"] for r in rows if r["label"].startswith("ratio ")}
    assert set(ratios) == {(s, "ratio gptdist / nanogpt") for s in shapes} | {
        ("shipped 124M", "ratio gptdist torchrun / best single process"),
        ("355M mb16", "ratio gptdist float8=tensorwise / gptdist"), ("355M mb16", "ratio gptdist "
                                                                                  "float8=rowwise / gptdist"),
        ("124M mb32 torchrun", "ratio gptdist parallel=fsdp / gptdist")}
    assert ratios[("124M mb16", "ratio gptdist / nanogpt")] == pytest.approx(
        runs[("124M mb16", "gptdist")]["tokens_per_sec"] / runs[("124M mb16", "nanogpt")]["tokens_per_sec"],
        rel=1e-3)
    (curves,) = [r["losses"] for r in rows if r["label"] == "loss curves"]
    assert set(curves) == {"bf16", "tensorwise"} and len(curves["bf16"]) == len(curves["tensorwise"]) == 3
    (save,) = [r for r in rows if r["shape"] == "124M checkpoint"]
    assert 0 < save["stall_s"] < save["blocking_s"] and save["bytes"] > 0
    memory = {r["shape"]: r for r in rows if "state_mb" in r}
    assert set(memory) == {"gpt2-large fsdp", "gpt2-xl fsdp"}
    assert all(r["parallel"] == "fsdp" and r["activation_checkpointing"] == "blocks" for r in memory.values())
    assert all(r["state_mb"] > 0 and r["activations_mb"] > 0 and r["ms_per_step"] > 0
               for r in memory.values())
    # the table for docs/performance.md
    assert "| 124M mb16 | gptdist |" in stdout
    assert "| 124M checkpoint | gptdist save | training stopped" in stdout


@pytest.mark.slow
def test_time_to_loss_trains_the_three_programs_and_ends_with_the_summary(tmp_path, verdict_data, nanogpt):
    results, plot = tmp_path / "results.jsonl", tmp_path / "curves.png"
    tiny = ["model.n_layers=1", "model.emb_dim=32", "model.n_heads=2", "model.context_length=32",
            "train.micro_batch_size=4"]
    command = ["bash", "benchmarks/time_to_loss.sh", str(nanogpt), "--data", str(verdict_data), "--budget",
               "3", "--sweep", "--sweep-limit", "8", "--results", str(results), "--plot", str(plot), *tiny]
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    programs = {"gptdist-gpt2", "gptdist-modern", "nanogpt"}
    assert summary["kind"] == "summary" and set(summary["final_val_loss"]) == programs
    assert summary["seconds_to_target"]["gptdist-gpt2"] is not None
    rows = [json.loads(line) for line in results.read_text().splitlines()]
    sweeps = [row for row in rows if row["kind"] == "sweep"]
    programs_swept = [row["program"] for row in sweeps]
    assert programs_swept == sorted(programs_swept) and programs_swept.count("gptdist-gpt2") >= 4
    for program in ("gptdist-gpt2", "gptdist-modern"):  # x 0.5, 1, 2, 4; 8 if 4 was the best
        losses = [row["final_val_loss"] for row in sweeps if row["program"] == program]
        assert len(losses) in (4, 5) and all(losses[i - 1] == min(losses[:i]) for i in range(4, len(losses)))
    curves = [row for row in rows if row["kind"] == "curve"]
    assert {row["program"] for row in curves} == programs
    for program in ("gptdist-gpt2", "gptdist-modern"):  # each trained with its sweep's best rates
        best = min((row["final_val_loss"], row["overrides"]) for row in sweeps if row["program"] == program)
        assert [row["overrides"] for row in curves if row["program"] == program] == [best[1]]
    for row in curves:
        seconds, tokens, losses = zip(*row["points"], strict=True)
        assert len(seconds) >= 3 and list(tokens) == sorted(tokens) and list(seconds) == sorted(seconds)
        assert losses[-1] < losses[0]  # every program learned something
    assert plot.stat().st_size > 0


@pytest.mark.slow
def test_gpu_quick_appends_each_row_as_measured_and_never_calls_a_bare_python(tmp_path, download_cache,
                                                                              nanogpt):
    """`gpu.sh quick` as a short GPU loan runs it, on a CPU with tiny models, where `python` does not exist
    (the GPU machines have only python3)."""
    no_python = tmp_path / "bin"
    no_python.mkdir()
    (no_python / "python").write_text("#!/bin/sh\necho 'python: not here, call python3' >&2\nexit 127\n")
    (no_python / "python").chmod(0o755)
    results = tmp_path / "quick.jsonl"
    env = {**os.environ, "BENCH_STEPS": "--steps 2 --warmup 1", "GPTDIST_ARGS": TINY_GPTDIST,
           "NANOGPT_ARGS": TINY_NANOGPT, "RESULTS": str(results), "OMP_NUM_THREADS": "1", "TOKENS": "200000",
           "PATH": f"{no_python}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(["bash", "benchmarks/gpu.sh", str(nanogpt), "quick"], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0 and "not here" not in result.stderr, result.stderr[-3000:]
    rows = [json.loads(line) for line in results.read_text().splitlines()]
    assert not [r for r in rows if "error" in r]
    runs = [(r["shape"], r["label"]) for r in rows if "tokens_per_sec" in r]
    assert runs == [("124M mb16", "gptdist"), ("124M mb16", "nanogpt"), ("124M mb16", "gptdist modern"),
                    ("124M mb64", "nanogpt"), ("124M mb64", "gptdist"), ("124M mb64", "gptdist modern"),
                    ("355M mb16", "gptdist"), ("355M mb16", "nanogpt")]  # in the order they ran
    (save,) = [r for r in rows if r["shape"] == "124M checkpoint"]
    assert save["stall_s"] > 0
    ratios = {(r["shape"], r["label"]) for r in rows if r["label"].startswith("ratio ")}
    assert ("124M mb16", "ratio gptdist / nanogpt") in ratios
