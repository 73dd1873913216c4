"""benchmarks/gpu.sh on a CPU with tiny models: every row, ratio and curve it writes, ready for a GPU
(nanoGPT's side: conftest's `nanogpt`)."""

import json
import os
import subprocess

import pytest
from processes import REPO

# One layer of width 16 and 16-token windows: each run is a second or two of work, its start-up aside.
TINY_GPTDIST = ("train.device=cpu train.precision=fp32 train.compile=false model.n_layers=1 model.emb_dim=16 "
                "model.n_heads=2 model.context_length=16")
TINY_NANOGPT = "--device cpu --dtype float32 --no-compile --n-layer 1 --n-embd 16 --n-head 2 --block-size 16"
# generation: the same tiny shape (of GPT-2's model, or the modern config's), 8 tokens after 8, one run of
# each side
TINY_GENERATE = ("--prompt-tokens 8 --new-tokens 8 --repeats 1 --device cpu model.n_layers=1 "
                 "model.emb_dim=16 model.n_heads=2 model.context_length=16")


@pytest.mark.slow
def test_gpu_script_writes_a_row_per_run_a_ratio_per_shape_the_fp8_curves_the_save_cost_and_fsdp(
        tmp_path, download_cache, nanogpt):
    pytest.importorskip("torchao")
    # Two calls at once, each on one core of its own (one thread: a CPU's peak is measured as the runs
    # use it), as a GPU session makes them one after the other; the shipped config is compared with the
    # single-process runs of its own call.
    env = {**os.environ, "BENCH_STEPS": "--steps 2 --warmup 1", "GPTDIST_ARGS": TINY_GPTDIST,
           "NANOGPT_ARGS": TINY_NANOGPT, "GENERATE_ARGS": TINY_GENERATE, "GPTDIST_CACHE": str(download_cache),
           "CURVE_STEPS": "30", "CORPUS_MB": "1", "TOKENS": "200000"}
    calls = {tmp_path / "compare.jsonl": ["compare", "shipped", "generate"],
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
    generation = {r["shape"]: r for r in rows if r.get("benchmark") == "generate"}
    kinds = ("", " modern")
    assert set(generation) == {f"124M{kind} generate b{batch}" for kind in kinds for batch in (1, 8)}
    for row in generation.values():
        assert row["gptdist"]["same_tokens"] and row["transformers"]["same_tokens"]
        assert row["gptdist_recompute"]["same_tokens"] and row["vs_recompute"] > 0 < row["vs_transformers"]
    assert generation["124M generate b8"]["batch_size"] == 8
    # the table for docs/performance.md
    assert "| 124M mb16 | gptdist |" in stdout
    assert "| 124M generate b1 | gptdist vs transformers |" in stdout
    assert "| 124M checkpoint | gptdist save | training stopped" in stdout


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
           "NANOGPT_ARGS": TINY_NANOGPT, "GENERATE_ARGS": TINY_GENERATE, "RESULTS": str(results),
           "TOKENS": "200000",
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
    (generation,) = [r for r in rows if r["shape"] == "124M generate b1"]
    assert generation["gptdist"]["tokens_per_sec"] > 0 and generation["transformers"]["same_tokens"]
    ratios = {(r["shape"], r["label"]) for r in rows if r["label"].startswith("ratio ")}
    assert ("124M mb16", "ratio gptdist / nanogpt") in ratios
