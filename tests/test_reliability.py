"""Faults injected for real, and bad input refused: kills, damaged checkpoints, divergence, full disks."""

import hashlib
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from inputs import metrics_rows, newest_model, same_weights, train_args
from processes import (
    PYTHON,
    REPO,
    forked_pid,
    hooks_env,
    run_main,
    start,
    train,
    train_command,
    wait_for,
    wait_for_exit,
)
from stand_ins import make_unwritable, tmpfs

from gptdist import distributed
from gptdist.checkpoint import store
from gptdist.data import shards
from gptdist.errors import UserError
from gptdist.evaluation import model_card
from gptdist.files.replace import own_temporary_folder
from gptdist.observe import metrics
from gptdist.tokenizer import encode
from gptdist.training import runlock


def train_here(nproc, data, out, *overrides):
    """A run on `nproc` processes under torchrun; with one, in this process."""
    if nproc == 1:
        return run_main("gptdist.train", *train_args(data, out, *overrides))
    return train(nproc, *train_args(data, out, *overrides), check=False)


FOREVER = ("train.max_steps=100000", "eval.interval=100000", "logging.interval=1")


def start_training(data: Path, out: Path, *overrides: str, env=None) -> subprocess.Popen:
    """A training run in the background, in a process of its own."""
    return start(train_command(None, *train_args(data, out, *overrides)), env=env)


def logged(out: Path, step: int):
    """Whether run `out` has logged step `step`'s row (a condition for wait_for)."""
    rows = out / "metrics.jsonl"
    return lambda: rows.exists() and f'"step": {step},' in rows.read_text()


@pytest.mark.slow
def test_sigkill_at_random_moments_never_leaves_an_unloadable_newest_checkpoint(tmp_path, verdict_data):
    out = tmp_path / "run"
    folder = out / "checkpoints"
    rng = random.Random(0)
    args = train_args(verdict_data, out, "train.max_steps=100000", "checkpoint.interval=1",
                      "checkpoint.keep=3",
                      "eval.interval=100000", "logging.interval=1")
    for _trial in range(8):
        proc = subprocess.Popen([PYTHON, "-m", "gptdist.train", *args], cwd=REPO,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        newest_before = store.checkpoint_paths(folder)[-1] if folder.exists() else None
        deadline = time.time() + 120
        while (store.checkpoint_paths(folder) or [None])[-1] == newest_before:  # training, saving each step
            assert proc.poll() is None and time.time() < deadline
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 1.0))  # somewhere in a step, an eval or a save
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        wait_for_exit([proc.pid])
        newest = store.checkpoint_paths(folder)[-1]
        payload = store.read(newest)  # the newest checkpoint always loads and verifies
        assert payload["progress"]["step"] == store.step_of(newest)
    steps = payload["progress"]["step"]
    assert steps >= 8  # every restart resumed and made progress
    final = train_here(1, verdict_data, out, f"train.max_steps={steps + 1}", "checkpoint.interval=1")
    assert final.returncode == 0 and f"resumed from {newest}" in final.stdout


def test_damaged_newest_checkpoint_is_reported_and_the_previous_used(tmp_path, verdict_data):
    out = tmp_path / "run"
    assert train_here(1, verdict_data, out, "train.max_steps=3", "checkpoint.interval=1").returncode == 0
    newest = out / "checkpoints" / "step_00000003.pt"
    data = bytearray(newest.read_bytes())
    data[len(data) // 2] ^= 0xFF  # a flipped byte inside the weights
    newest.write_bytes(bytes(data))
    result = train_here(1, verdict_data, out, "train.max_steps=4", "checkpoint.interval=1")
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"warning: checkpoint {newest}" in result.stdout
    assert "resumed from" in result.stdout and "step_00000002.pt at step 2" in result.stdout


@pytest.mark.slow
@pytest.mark.parametrize("before, after", [(2, 1), (1, 2)])
def test_resume_on_another_world_size_continues_the_data_and_the_weights(tmp_path, verdict_data, before,
                                                                         after):
    common = ("model.drop_rate=0.0", "checkpoint.interval=4", "eval.interval=1000",
              "train.micro_batch_size=4")
    accum = {1: "train.grad_accum_steps=2", 2: "train.grad_accum_steps=1"}  # global batch 8 either way
    reference = tmp_path / "reference"
    assert train_here(before, verdict_data, reference, "train.max_steps=16", accum[before],
                 *common).returncode == 0
    moved = tmp_path / "moved"
    assert train_here(before, verdict_data, moved, "train.max_steps=8", accum[before],
                      *common).returncode == 0
    result = train_here(after, verdict_data, moved, "train.max_steps=16", accum[after], *common)
    assert result.returncode == 0, result.stderr[-2000:]
    resume = [row for row in metrics_rows(moved) if row.get("event") == "resume"]
    assert resume[-1]["step"] == 8 and resume[-1]["world_size"] == after
    final_moved = store.read(store.checkpoint_paths(moved / "checkpoints")[-1])
    final_reference = store.read(store.checkpoint_paths(reference / "checkpoints")[-1])
    assert final_moved["sampler"] == final_reference["sampler"]  # the same place in the same order
    assert final_moved["progress"] == final_reference["progress"]
    a, b = final_moved["model"], final_reference["model"]
    assert all(torch.allclose(a[k], b[k], rtol=1e-4, atol=1e-5) for k in a)


def test_diverging_run_stops_clearly_and_never_saves_non_finite_weights(tmp_path, verdict_data):
    out = tmp_path / "run"
    result = train_here(1, verdict_data, out, "optim.lr=1e30", "train.grad_clip=null", "train.max_steps=50",
                   "train.max_bad_steps=3", "checkpoint.interval=1", "schedule.warmup_steps=0")
    assert result.returncode == 2
    assert ("training diverged: 3 steps in a row with a non-finite loss or gradient norm (seen at step 4"
            in result.stderr)
    assert "1 update(s) skipped up to step 4" in result.stdout and "Traceback" not in result.stderr
    for path in store.checkpoint_paths(out / "checkpoints"):
        assert all(torch.isfinite(t).all() for t in store.read(path)["model"].values())


@pytest.mark.slow
def test_sigkill_during_a_background_write_keeps_the_previous_newest_and_resume_picks_it(tmp_path,
                                                                                         verdict_data):
    out = tmp_path / "run"
    folder = out / "checkpoints"
    gate = tmp_path / "gate"
    proc = start_training(verdict_data, out, *FOREVER, "checkpoint.interval=2", "checkpoint.keep=3",
                 "model.drop_rate=0.0", env=hooks_env(gate=gate))
    (gate / "step_00000002.pt").touch()  # step 2 is written; step 4's write is held
    wait_for((gate / "step_00000004.pt.held").exists, proc)
    assert (folder / ".step_00000004.pt.tmp").exists()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    wait_for_exit([proc.pid])
    assert [p.name for p in store.checkpoint_paths(folder)] == ["step_00000002.pt"]
    assert store.read(folder / "step_00000002.pt")["progress"]["step"] == 2

    resumed = train(None, *train_args(verdict_data, out, "train.max_steps=5", "model.drop_rate=0.0"))
    assert f"resumed from {folder / 'step_00000002.pt'} at step 2" in resumed.stdout
    assert not list(folder.glob(".*.tmp"))  # the half-written file was removed, never loaded
    whole = tmp_path / "whole"
    train(None, *train_args(verdict_data, whole, "train.max_steps=5", "model.drop_rate=0.0"))
    assert same_weights(newest_model(out), newest_model(whole))


@pytest.mark.slow
def test_sigusr1_during_a_background_write_exits_0_with_both_checkpoints_durable(tmp_path, verdict_data):
    out = tmp_path / "run"
    folder = out / "checkpoints"
    gate = tmp_path / "gate"
    proc = start_training(verdict_data, out, *FOREVER, "checkpoint.interval=2", "checkpoint.keep=10",
                 env=hooks_env(gate=gate))
    wait_for((gate / "step_00000002.pt.held").exists, proc)
    proc.send_signal(signal.SIGUSR1)
    wait_for(logged(out, 3), proc)  # the stop's save waits for step 2's write, held until now
    (gate / "all").touch()
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr[-2000:]
    stopped = int(re.search(r"stopped by SIGUSR1 after step (\d+)", stdout).group(1))
    paths = store.checkpoint_paths(folder)
    assert [store.step_of(p) for p in paths][0] == 2 and store.step_of(paths[-1]) == stopped
    for path in paths:
        store.read(path)
    events = [r for r in metrics_rows(out) if r.get("event") == "checkpoint"]
    assert [e["step"] for e in events] == [store.step_of(p) for p in paths]
    assert all(e["write_s"] > 0 and e["bytes"] > 0 for e in events), events
    assert events[0]["stall_s"] < events[0]["write_s"]  # training went on while step 2 was written


@pytest.mark.parametrize("when", ["final save", "background write"])
def test_a_full_disk_stops_the_run_with_one_line_and_keeps_the_previous_checkpoint(tmp_path, verdict_data,
                                                                                   when):
    disk = tmp_path / "disk"
    tmpfs(disk, "100m")
    try:
        out = disk / "run"
        assert train_here(1, verdict_data, out, "train.max_steps=1").returncode == 0
        saved = out / "checkpoints" / "step_00000001.pt"
        before = saved.read_bytes()
        free = shutil.disk_usage(disk).free
        (disk / "filler").write_bytes(b"\0" * (free - 256 * 1024))  # room for logs, not a checkpoint
        run = ("train.max_steps=2",) if when == "final save" else (*FOREVER, "checkpoint.interval=2")
        result = train_here(1, verdict_data, out, *run)
        assert result.returncode == 2, result.stderr[-2000:]
        assert re.search(r"cannot write checkpoint .*step_00000002.pt: No space left on device; older "
                         r"checkpoints in .* are intact", result.stderr), result.stderr[-2000:]
        assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
        # a failed background write stops the run at the step boundary after it, not later
        assert max(r["step"] for r in metrics_rows(out) if "loss" in r) <= 4
        assert saved.read_bytes() == before
        # no partial file left
        assert [p.name for p in (out / "checkpoints").iterdir()] == ["step_00000001.pt"]
    finally:
        subprocess.run(["umount", str(disk)])


def test_unwritable_out_dir_is_a_clear_error_and_keeps_the_previous(tmp_path, verdict_data):
    out = tmp_path / "run"
    assert train_here(1, verdict_data, out, "train.max_steps=1").returncode == 0
    folder = out / "checkpoints"
    unlock = make_unwritable(folder)
    try:
        result = train_here(1, verdict_data, out, "train.max_steps=2")
    finally:
        subprocess.run(unlock)
    assert result.returncode == 2
    assert re.search(r"cannot write checkpoint .*step_00000002.pt: (Operation not permitted|Permission "
                     r"denied)",
                     result.stderr), result.stderr
    assert store.read(folder / "step_00000001.pt")


def test_a_second_run_into_a_running_runs_folder_stops_at_once(tmp_path, verdict_data):
    out = tmp_path / "run"
    first = start_training(verdict_data, out, *FOREVER, "checkpoint.interval=100000")
    wait_for(logged(out, 2), first)
    config_before = (out / "config.yaml").read_bytes()
    second = train_here(1, verdict_data, out, "train.max_steps=3")
    assert second.returncode == 2 and "Traceback" not in second.stderr
    assert second.stderr.strip() == (f"gptdist.train: error: run.out_dir {out} is in use by another training "
                                     f"(process {forked_pid(first)} on {socket.gethostname()}, started "
                                     f"{second.stderr.split('started ')[1].split(')')[0]}); wait for it to "
                                     "end or choose another run.out_dir")
    assert (out / "config.yaml").read_bytes() == config_before and '"step": 4,' not in second.stdout
    first.send_signal(signal.SIGTERM)  # the first run goes on unharmed, and stops as usual
    stdout, stderr = first.communicate(timeout=120)
    assert first.returncode == 0, stderr[-2000:]
    rows = metrics_rows(out)
    assert [r["event"] for r in rows if "event" in r and r["event"] == "start"] == ["start"]  # one run's rows
    assert store.read(store.checkpoint_paths(out / "checkpoints")[-1])


def test_the_lock_of_a_killed_run_is_taken_over_with_a_line(tmp_path, verdict_data):
    out = tmp_path / "run"
    killed = start_training(verdict_data, out, *FOREVER, "checkpoint.interval=2")
    wait_for((out / "checkpoints" / "step_00000002.pt").exists, killed)  # written in the background: on disk
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    wait_for_exit([killed.pid])
    result = train_here(1, verdict_data, out, "train.max_steps=5")
    assert result.returncode == 0, result.stderr[-2000:]
    held = f"taking over {out / '.lock'}: the run that held it (process {forked_pid(killed)} on"
    assert held in result.stdout
    assert "resumed from" in result.stdout
    assert (out / ".lock").read_text() == ""  # released at the end


def test_an_evaluation_that_fails_never_costs_the_checkpoint_of_its_step(tmp_path, verdict_data):
    data = copy_data(verdict_data, tmp_path / "data")  # a val token past the vocabulary, not checked at start
    manifest = json.loads((data / "manifest.json").read_text())
    val = data / manifest["splits"]["val"]["shards"][0]["path"]
    tokens = np.fromfile(val, dtype="<u2")
    tokens[3] = 60000
    tokens.tofile(val)
    out = tmp_path / "run"
    result = train_here(1, data, out, "data.verify=false", "eval.at_start=false", "train.max_steps=4",
                   "eval.interval=4", "checkpoint.interval=4")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip() == (f"gptdist.train: error: the val split of {data} holds token id 60000 >= "
                                     "vocab_size 50257: the shards are damaged; python -m gptdist.prepare "
                                     f"--verify {data} names the shard")
    assert store.read(out / "checkpoints" / "step_00000004.pt")["progress"]["step"] == 4


def test_a_prompt_beyond_the_vocabulary_stops_the_run_before_it_trains(tmp_path):
    data = tmp_path / "small-vocab"  # a corpus of a 1000-token vocabulary (ids below 1000)
    data.mkdir()
    writer = {split: shards.ShardWriter(data, split, shards.token_dtype(1000),
                                        10_000) for split in shards.SPLITS}
    rng = np.random.default_rng(0)
    for split, count in (("train", 4000), ("val", 600)):
        writer[split].add_documents(rng.integers(0, 1000, count).astype("<u2"))
    shards.write_manifest(data,
                          {"format": shards.FORMAT, "tokenizer": "custom", "vocab_size": 1000,
                           "eot_token": 999,
                                 "dtype": "uint16", "splits": {s: w.close() for s, w in writer.items()}})
    out = tmp_path / "run"
    result = train_here(1, data, out, "model.vocab_size=1000", "train.max_steps=3")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    highest = max(encode("Every effort moves you"))
    assert (f"sample.prompt 'Every effort moves you' encodes to GPT-2 token id {highest}, beyond the model's "
            "vocabulary of 1000 tokens") in result.stderr
    assert not (out / "checkpoints").exists() and not (out / "metrics.jsonl").exists()


@pytest.mark.parametrize("case", ["new-folder", "read-only-copy"])
def test_an_unwritable_runs_folder_is_one_line(tmp_path, verdict_data, case):
    parent = tmp_path / "locked"
    parent.mkdir()
    out = parent / "run"
    if case == "read-only-copy":
        assert train_here(1, verdict_data, out, "train.max_steps=2").returncode == 0
    before = {p: p.read_bytes() for p in parent.rglob("*") if p.is_file()}
    target = out if case == "read-only-copy" else parent
    unlock = make_unwritable(target)
    try:
        result = train_here(1, verdict_data, out, "train.max_steps=4")
    finally:
        subprocess.run(unlock)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert re.fullmatch(rf"gptdist.train: error: cannot write in run.out_dir {out}: (Permission "
                        r"denied|Operation not permitted|Read-only file system); choose a run.out_dir this "
                        r"user can write to\n",
                        result.stderr), result.stderr
    assert {p: p.read_bytes() for p in parent.rglob("*") if p.is_file()} == before


def copy_data(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


@pytest.mark.parametrize("damage, message", [
    ("flip", "does not match its sha256 in the manifest"),
    ("truncate", "is truncated or altered"),
    ("token", "holds token id 60000 >= vocab_size 50257"),
    ("format", "unknown format 'gptdist-shards/9'"),
])
def test_damaged_data_is_refused_before_training(tmp_path, verdict_data, damage, message):
    data = copy_data(verdict_data, tmp_path / "data")
    shard = data / "train-00000.bin"
    manifest = json.loads((data / "manifest.json").read_text())
    tokens = np.fromfile(shard, dtype="<u2")
    if damage == "flip":
        tokens[100] ^= 1
        tokens.tofile(shard)
    elif damage == "truncate":
        tokens[:-1].tofile(shard)
    elif damage == "token":
        tokens[5] = 60000
        tokens.tofile(shard)
        manifest["splits"]["train"]["shards"][0]["sha256"] = hashlib.sha256(tokens.tobytes()).hexdigest()
    else:
        manifest["format"] = "gptdist-shards/9"
    (data / "manifest.json").write_text(json.dumps(manifest))
    result = run_main("gptdist.train", *train_args(data, tmp_path / "run", "train.max_steps=2"))
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "run" / "checkpoints").exists()


def test_code_never_unpickles_or_shells_out():
    source = "\n".join(p.read_text() for p in (REPO / "gptdist").rglob("*.py"))
    loads = re.findall(r"torch\.load\(([^)]*)\)", source)
    assert loads and all("weights_only=True" in call for call in loads)
    assert "yaml.load(" not in source and "yaml.safe_load(" in source
    assert "shell=True" not in source and "os.system(" not in source and "import pickle" not in source


def test_a_run_that_stops_at_its_start_leaves_no_folder_it_made(tmp_path):
    """A run that fails before writing anything but its lock removes run.out_dir if it made it; a folder
    that was there before, or one the run wrote into, stays."""
    solo = distributed.Dist(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))
    for out, before in ((tmp_path / "new", None), (tmp_path / "old", "my notes"), (tmp_path / "wrote", None)):
        if before:
            out.mkdir()
            (out / "notes.txt").write_text(before)
        with pytest.raises(UserError, match="stopped at its start"), runlock.owning(out, solo):
            if out.name == "wrote":
                (out / "metrics.jsonl").write_text("{}\n")
            raise UserError("stopped at its start")
    assert not (tmp_path / "new").exists()
    old = tmp_path / "old"
    assert (old / "notes.txt").read_text() == "my notes" and (old / ".lock").read_text() == ""
    assert (tmp_path / "wrote" / "metrics.jsonl").exists()


def test_what_processes_that_no_longer_run_left_in_the_temporary_folder_is_removed(tmp_path, monkeypatch):
    """The benchmarks' temporary folders (named for their host and process): a process that ended, reaped or
    a zombie, no longer needs its own; a running process's, another prefix's and another host's stay."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    reaped, zombie = subprocess.Popen(["true"]), subprocess.Popen(["true"])
    reaped.wait()
    wait_for_exit([zombie.pid])  # ended, not reaped
    host = socket.gethostname()
    for prefix, suffix in (("gptdist-bench", "-x1y2z3"), ("gptdist-gpu", "")):  # Python's and the scripts'
        stale = [tmp_path / f"{prefix}-{host}-{pid}{suffix}" for pid in (reaped.pid, zombie.pid)]
        kept = [tmp_path / f"{prefix}-{host}-{os.getpid()}{suffix}", tmp_path / f"else-{host}-{reaped.pid}",
                tmp_path / f"{prefix}-another-host-{reaped.pid}{suffix}"]
        for folder in stale + kept:
            folder.mkdir()
        if prefix == "gptdist-bench":
            made = own_temporary_folder(prefix)
        else:
            made = Path(subprocess.run(["bash", "-c", f"source benchmarks/common.sh; own_temporary {prefix}"],
                                       capture_output=True, text=True, cwd=REPO, check=True,
                                       env={**os.environ, "TMPDIR": str(tmp_path)}).stdout.strip())
        assert made.is_dir() and made.name.startswith(f"{prefix}-{host}-")
        assert not any(folder.exists() for folder in stale) and all(folder.exists() for folder in kept)
        shutil.rmtree(made)
        for folder in kept:
            folder.rmdir()
    zombie.wait()


def test_a_metrics_line_cut_short_by_a_kill_is_skipped_where_the_rows_are_read(tmp_path):
    path = tmp_path / "metrics.jsonl"
    rows = [{"step": 1, "loss": 9.0}, {"step": 2, "val_loss": 8.5, "train_loss": 8.6, "epoch": 0.1,
                                       "tokens_seen": 64}]
    torn = json.dumps({"step": 3, "val_loss": 8.0})[:17]  # the kill came mid-write; the resume wrote on
    path.write_text("\n".join([json.dumps(rows[0]), torn, json.dumps(rows[1])]) + "\n")
    assert metrics.read_rows(path) == rows
    assert [row["step"] for row in metrics.eval_history(path)] == [2]
    assert model_card.last_rows(path, None, ("val_loss",)) == {"val_loss": rows[1]}
