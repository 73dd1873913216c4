"""benchmarks/time_to_loss.sh on a CPU with tiny models: the three programs trained for the same budget,
a learning-rate sweep first, the curves and the summary (nanoGPT's side: conftest's `nanogpt`)."""

import json
import subprocess

import pytest
from processes import REPO


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
def test_the_document_options_are_compared_on_the_modern_recipe(tmp_path, paragraphs_data, nanogpt):
    results, plot = tmp_path / "results.jsonl", tmp_path / "curves.png"
    tiny = ["model.n_layers=1", "model.emb_dim=32", "model.n_heads=2", "model.context_length=32",
            "train.micro_batch_size=4"]
    command = ["bash", "benchmarks/time_to_loss.sh", str(nanogpt), "--data", str(paragraphs_data),
               "--documents", "--budget", "2", "--results", str(results), "--plot", str(plot), *tiny]
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    variants = {"modern", "modern+documents", "modern+documents+mask"}
    assert set(summary["final_val_loss"]) == variants and summary["seconds_to_target"]["modern"] is not None
    curves = {row["program"]: row for row in map(json.loads, results.read_text().splitlines())}
    masked = curves["modern+documents+mask"]["overrides"]
    assert masked == ["data.windows=documents", "model.document_mask=true"]
    assert all(row["points"][-1][2] < row["points"][0][2] for row in curves.values())  # each learned
    assert plot.stat().st_size > 0
