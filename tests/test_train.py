"""Real training runs: torchrun with gloo on CPU, kill and resume, config and data errors."""

import os
import signal
import subprocess
import typing

import pytest
import torch
from inputs import UNINTERRUPTED, metrics_rows, newest_model, train_args
from processes import (
    PYTHON,
    REPO,
    kill_job,
    run_main,
    run_module,
    run_processes,
    torchrun_command,
    train,
    wait_for,
)

from gptdist import config
from gptdist.checkpoint import store
from gptdist.errors import UserError


@pytest.mark.slow
def test_two_process_run_learns_and_records_everything(tmp_path, verdict_data):
    out = tmp_path / "run"
    result = train(2, *train_args(verdict_data, out, "train.epochs=3", "eval.interval=20",
                                     "checkpoint.interval=20", "logging.interval=5"))
    assert result.returncode == 0, result.stderr[-3000:]
    records = metrics_rows(out)
    start = records[0]
    assert start["event"] == "start" and start["world_size"] == 2 and start["tokens_per_step"] == 2 * 4 * 32
    assert start["setup_s"] >= start["data_verify_s"] >= 0
    first_step = [r for r in records if r.get("event") == "first_step"]
    assert len(first_step) == 1 and first_step[0]["step"] == 1 and first_step[0]["seconds"] > 0
    steps = [r for r in records if "loss" in r]
    evals = [r for r in records if "val_loss" in r]
    assert {"step", "epoch", "loss", "lr", "grad_norm", "tokens_seen", "tokens_per_sec", "mfu",
            "eta_s"} <= set(steps[0])
    assert all(0 < r["mfu"] < 1 for r in steps) and all(r["eval_s"] > 0 for r in evals)
    assert steps[-1]["eta_s"] == 0 and steps[0]["eta_s"] > steps[len(steps) // 2]["eta_s"] > 0
    assert steps[-1]["step"] == start["total_steps"] and steps[-1]["epoch"] == pytest.approx(3.0)
    assert "| mfu " in result.stdout and "| eta " in result.stdout
    assert evals[0]["train_loss"] > evals[-1]["train_loss"] + 2.0  # it learns
    assert evals[-1]["val_ppl"] == pytest.approx(2.718281828 ** evals[-1]["val_loss"], rel=1e-6)
    assert (out / "config.yaml").is_file() and (out / "loss.png").stat().st_size > 1000
    assert "sample: 'Every effort moves you" in result.stdout
    assert result.stdout.count("eval step") == len(evals)  # rank 0 prints; rank 1 does not
    saved = torch.load(store.checkpoint_paths(out / "checkpoints")[-1], weights_only=True)
    assert not any(k.startswith(("module.", "_orig_mod.")) for k in saved["model"])
    assert len(saved["rng"]["ranks"]) == 2 and saved["progress"]["step"] == start["total_steps"]
    assert saved["step"] == start["total_steps"] and saved["epoch"] == pytest.approx(3.0)
    assert saved["tokens_seen"] == start["total_steps"] * start["tokens_per_step"]
    assert {"model", "optimizer", "scaler", "sampler", "config", "format", "checksum"} <= set(saved)


@pytest.mark.slow
def test_killed_run_resumes_bit_for_bit(tmp_path, verdict_data, uninterrupted):
    killed = tmp_path / "killed"
    proc = subprocess.Popen(torchrun_command(2, *train_args(verdict_data, killed, *UNINTERRUPTED)), cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    wait_for((killed / "checkpoints" / "step_00000008.pt").exists, proc)
    kill_job(proc, killed)  # the whole job dies at once, as on a node failure
    assert not (killed / "checkpoints" / "step_00000024.pt").exists(), "the run ended before the kill"

    result = train(2, *train_args(verdict_data, killed, *UNINTERRUPTED))
    assert result.returncode == 0, result.stderr[-3000:]
    resumes = [r for r in metrics_rows(killed) if r.get("event") == "resume"]
    assert len(resumes) == 1 and resumes[0]["step"] >= 8
    b = newest_model(killed)
    assert uninterrupted.keys() == b.keys()
    assert all(torch.equal(uninterrupted[k], b[k]) for k in b)


VARIANTS = ["eager", "compile", "blocks", "fsdp", "fsdp+blocks+compile"]  # see tests/dist_grad_check.py


@pytest.mark.slow
def test_accumulated_gradients_equal_one_process(tmp_path, verdict_data):
    script = REPO / "tests" / "dist_grad_check.py"
    result = subprocess.run([*torchrun_command(2)[:5], str(script), str(verdict_data), *VARIANTS],
                            capture_output=True, text=True, cwd=REPO, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    for variant in VARIANTS:
        assert f"{variant}: gradients equal on 2 ranks and to one process's" in result.stdout, result.stdout
        assert "and so do the loss and its sum" in result.stdout.split(f"{variant}: ")[1].splitlines()[0]


def test_single_process_run_without_torchrun(tmp_path, verdict_data):
    out = tmp_path / "solo"
    result = run_module("gptdist.train",
                        *train_args(verdict_data, out, "train.max_steps=3", "logging.interval=1"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert [r["step"] for r in metrics_rows(out) if "loss" in r] == [1, 2, 3]
    assert [r["step"] for r in metrics_rows(out) if "val_loss" in r] == [0, 3]  # eval.at_start, and the end
    # run again: it resumes at the end and trains no further
    again = run_main("gptdist.train", *train_args(verdict_data, out, "train.max_steps=3"))
    assert again.returncode == 0 and "resumed from" in again.stdout
    assert [r["step"] for r in metrics_rows(out) if "val_loss" in r] == [0, 3]  # no evaluation at a resume
    skipped = run_main("gptdist.train", *train_args(verdict_data, tmp_path / "late", "train.max_steps=1",
                                                    "eval.at_start=false"))
    late = [r["step"] for r in metrics_rows(tmp_path / "late") if "val_loss" in r]
    assert late == [1], skipped.stderr[-2000:]


@pytest.mark.parametrize("overrides, message", [
    (["train.bogus=1"], "unknown config key train.bogus; valid keys of train:"),
    (["train.max_steps=many"], "config key train.max_steps: expected int"),
    (["data.dir=/nonexistent/data"], "data folder /nonexistent/data does not exist"),
    (["model.vocab_size=1000"],
     "was tokenized for a vocabulary of 50257 tokens but model.vocab_size is 1000"),
    (["model.context_length=1024"], "too few for one sample"),
    (["train.micro_batch_size=200"], "larger than the train split"),
    (["model.preset=gpt9"], "unknown preset 'gpt9'"),
])
def test_bad_config_or_data_is_one_clear_line(tmp_path, verdict_data, overrides, message):
    result = run_main("gptdist.train", *train_args(verdict_data, tmp_path / "run"), *overrides)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_checkpoints_of_another_architecture_are_refused(tmp_path, verdict_data):
    out = tmp_path / "run"
    assert run_main("gptdist.train", *train_args(verdict_data, out, "train.max_steps=1")).returncode == 0
    before = sorted(p.read_bytes() for p in (out / "checkpoints").iterdir())
    result = run_main("gptdist.train",
                      *train_args(verdict_data, out, "train.max_steps=2", "model.n_layers=2"))
    assert result.returncode == 2
    assert "another architecture (model.n_layers: 1 there, 2 here)" in result.stderr
    assert sorted(p.read_bytes() for p in (out / "checkpoints").iterdir()) == before


@pytest.mark.slow
def test_signal_to_one_rank_stops_every_rank_at_the_same_step(tmp_path, verdict_data):
    out = tmp_path / "run"
    args = train_args(verdict_data, out, "train.max_steps=100000", "logging.interval=1",
                      "checkpoint.interval=100000",
                      "eval.interval=100000")
    agent = subprocess.Popen(torchrun_command(2, *args), cwd=REPO, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    metrics = out / "metrics.jsonl"
    wait_for(lambda: metrics.exists() and '"step": 3,' in metrics.read_text(), agent)
    workers = run_processes(out)
    assert len(workers) == 2
    os.kill(max(workers), signal.SIGUSR1)  # one worker only: the other learns it from the agreement
    stdout, stderr = agent.communicate(timeout=300)
    assert agent.returncode == 0, stderr[-3000:]
    assert "stopped by" in stdout
    saved = store.checkpoint_paths(out / "checkpoints")
    assert len(saved) == 1 and store.step_of(saved[0]) >= 3
    assert len(store.read(saved[0])["rng"]["ranks"]) == 2  # both ranks took part in the final save


@pytest.fixture(scope="module")
def saved_run(tmp_path_factory, verdict_data):
    out = tmp_path_factory.mktemp("saved") / "run"
    assert run_main("gptdist.train", *train_args(verdict_data, out, "train.max_steps=1")).returncode == 0
    return out


def flipped(key, value):
    """Another valid value of an architecture key: the other boolean or choice, twice the number, a number
    for none."""
    if isinstance(value, bool):
        return not value
    if value is None:
        return 15.0
    if isinstance(value, str):
        return next(choice for choice in typing.get_args(typing.get_type_hints(config.ModelConfig)[key])
                    if choice != value)
    return 2 * value


@pytest.mark.parametrize("key", config.ARCHITECTURE_KEYS)
def test_a_resume_with_any_architecture_key_changed_stops_with_one_line(saved_run, verdict_data, key):
    newest = store.checkpoint_paths(saved_run / "checkpoints")[-1]
    saved = store.read(newest)["config"]["model"][key]
    before = newest.read_bytes()
    result = run_main("gptdist.train", *train_args(verdict_data, saved_run, "train.max_steps=2",
                                                   f"model.{key}={str(flipped(key, saved)).lower()}"))
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip().splitlines() == [
        f"gptdist.train: error: {newest} holds a checkpoint of another architecture (model.{key}: {saved!r} "
        f"there, {flipped(key, saved)!r} here); use another run.out_dir or the checkpoint's model settings"]
    assert store.checkpoint_paths(saved_run / "checkpoints") == [newest] and newest.read_bytes() == before


def test_a_checkpoint_from_before_model_bias_resumes_and_bias_is_an_architecture_key():
    from gptdist.checkpoint.resume import check_architecture
    from gptdist.config import ModelConfig

    older = {k: v for k, v in vars(ModelConfig()).items() if k != "bias"}  # written before model.bias existed
    check_architecture(older, ModelConfig(), "old.pt")
    with pytest.raises(UserError, match=r"another architecture \(model.bias: True there, False here\)"):
        check_architecture(older, ModelConfig(bias=False), "old.pt")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1])
def test_signal_checkpoints_at_the_next_step_and_exits_cleanly(tmp_path, verdict_data, sig):
    out = tmp_path / "run"
    args = train_args(verdict_data, out, "train.max_steps=100000", "logging.interval=1",
                      "checkpoint.interval=100000")
    proc = subprocess.Popen([PYTHON, "-m", "gptdist.train", *args], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = out / "metrics.jsonl"
    wait_for(lambda: metrics.exists() and '"step": 3,' in metrics.read_text(), proc)
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr[-2000:]
    assert f"stopped by {sig.name}" in stdout
    saved = store.checkpoint_paths(out / "checkpoints")
    assert len(saved) == 1 and store.step_of(saved[0]) >= 3
    stopped_at = store.step_of(saved[0])
    again = run_main("gptdist.train", *train_args(verdict_data, out, f"train.max_steps={stopped_at + 2}"))
    assert again.returncode == 0 and f"at step {stopped_at}" in again.stdout
