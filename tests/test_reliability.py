"""Faults injected for real, and bad input refused: kills, damaged checkpoints, divergence, full disks."""

import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO, run_module, torchrun_command, train_args

from gptdist import checkpoint

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def train(nproc, data, out, *overrides):
    command = torchrun_command(nproc, *train_args(data, out, *overrides)) if nproc > 1 else \
        [sys.executable, "-m", "gptdist.train", *train_args(data, out, *overrides)]
    return subprocess.run(command, capture_output=True, text=True, env=ENV, cwd=REPO, timeout=600)


@pytest.mark.slow
def test_sigkill_at_random_moments_never_leaves_an_unloadable_newest_checkpoint(tmp_path, verdict_data):
    out = tmp_path / "run"
    folder = out / "checkpoints"
    rng = random.Random(0)
    args = train_args(verdict_data, out, "train.max_steps=100000", "checkpoint.interval=1", "checkpoint.keep=3",
                      "eval.interval=100000", "logging.interval=1")
    for _trial in range(8):
        proc = subprocess.Popen([sys.executable, "-m", "gptdist.train", *args], cwd=REPO, env=ENV,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        newest_before = checkpoint.checkpoint_paths(folder)[-1] if folder.exists() else None
        deadline = time.time() + 120
        while (checkpoint.checkpoint_paths(folder) or [None])[-1] == newest_before:  # training, saving each step
            assert proc.poll() is None and time.time() < deadline
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 1.0))  # somewhere in a step, an eval or a save
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        newest = checkpoint.checkpoint_paths(folder)[-1]
        payload = checkpoint.read(newest)  # the newest checkpoint always loads and verifies
        assert payload["progress"]["step"] == checkpoint.step_of(newest)
    steps = payload["progress"]["step"]
    assert steps >= 8  # every restart resumed and made progress
    final = train(1, verdict_data, out, f"train.max_steps={steps + 1}", "checkpoint.interval=1")
    assert final.returncode == 0 and f"resumed from {newest}" in final.stdout


def test_damaged_newest_checkpoint_is_reported_and_the_previous_used(tmp_path, verdict_data):
    out = tmp_path / "run"
    assert train(1, verdict_data, out, "train.max_steps=3", "checkpoint.interval=1").returncode == 0
    newest = out / "checkpoints" / "step_00000003.pt"
    data = bytearray(newest.read_bytes())
    data[len(data) // 2] ^= 0xFF  # a flipped byte inside the weights
    newest.write_bytes(bytes(data))
    result = train(1, verdict_data, out, "train.max_steps=4", "checkpoint.interval=1")
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"warning: checkpoint {newest}" in result.stdout
    assert "resumed from" in result.stdout and "step_00000002.pt at step 2" in result.stdout


@pytest.mark.slow
@pytest.mark.parametrize("before, after", [(2, 1), (1, 2)])
def test_resume_on_another_world_size_continues_the_data_and_the_weights(tmp_path, verdict_data, before, after):
    common = ("model.drop_rate=0.0", "checkpoint.interval=4", "eval.interval=1000", "train.micro_batch_size=4")
    accum = {1: "train.grad_accum_steps=2", 2: "train.grad_accum_steps=1"}  # global batch 8 either way
    reference = tmp_path / "reference"
    assert train(before, verdict_data, reference, "train.max_steps=16", accum[before], *common).returncode == 0
    moved = tmp_path / "moved"
    assert train(before, verdict_data, moved, "train.max_steps=8", accum[before], *common).returncode == 0
    result = train(after, verdict_data, moved, "train.max_steps=16", accum[after], *common)
    assert result.returncode == 0, result.stderr[-2000:]
    resume = [json.loads(line) for line in (moved / "metrics.jsonl").read_text().splitlines() if '"resume"' in line]
    assert resume[-1]["step"] == 8 and resume[-1]["world_size"] == after
    final_moved = checkpoint.read(checkpoint.checkpoint_paths(moved / "checkpoints")[-1])
    final_reference = checkpoint.read(checkpoint.checkpoint_paths(reference / "checkpoints")[-1])
    assert final_moved["sampler"] == final_reference["sampler"]  # the same place in the same order
    assert final_moved["progress"] == final_reference["progress"]
    a, b = final_moved["model"], final_reference["model"]
    assert all(torch.allclose(a[k], b[k], rtol=1e-4, atol=1e-5) for k in a)


def test_diverging_run_stops_clearly_and_never_saves_non_finite_weights(tmp_path, verdict_data):
    out = tmp_path / "run"
    result = train(1, verdict_data, out, "optim.lr=1e30", "train.grad_clip=null", "train.max_steps=50",
                   "train.max_bad_steps=3", "checkpoint.interval=1", "schedule.warmup_steps=0")
    assert result.returncode == 2
    assert "training diverged: 3 steps in a row with a non-finite loss or gradient norm (seen at step 4" in result.stderr
    assert "1 update(s) skipped up to step 4" in result.stdout and "Traceback" not in result.stderr
    for path in checkpoint.checkpoint_paths(out / "checkpoints"):
        assert all(torch.isfinite(t).all() for t in checkpoint.read(path)["model"].values())


def tmpfs(path: Path, size: str):
    path.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs to fill: {mounted.stderr.strip()}")


def test_full_disk_while_saving_is_a_clear_error_and_keeps_the_previous(tmp_path, verdict_data):
    disk = tmp_path / "disk"
    tmpfs(disk, "100m")
    try:
        out = disk / "run"
        assert train(1, verdict_data, out, "train.max_steps=1").returncode == 0
        saved = out / "checkpoints" / "step_00000001.pt"
        before = saved.read_bytes()
        free = shutil.disk_usage(disk).free
        (disk / "filler").write_bytes(b"\0" * (free - 256 * 1024))  # room for logs, not a checkpoint
        result = train(1, verdict_data, out, "train.max_steps=2")
        assert result.returncode == 2, result.stderr[-2000:]
        assert "cannot write checkpoint" in result.stderr and "No space left on device" in result.stderr
        assert "Traceback" not in result.stderr
        assert saved.read_bytes() == before and checkpoint.read(saved)
        assert [p.name for p in (out / "checkpoints").iterdir()] == ["step_00000001.pt"]  # no partial file left
    finally:
        subprocess.run(["umount", str(disk)])


def test_unwritable_out_dir_is_a_clear_error_and_keeps_the_previous(tmp_path, verdict_data):
    out = tmp_path / "run"
    assert train(1, verdict_data, out, "train.max_steps=1").returncode == 0
    folder = out / "checkpoints"
    if os.geteuid() == 0:
        locked = subprocess.run(["chattr", "+i", str(folder)], capture_output=True, text=True)
        if locked.returncode != 0:
            pytest.skip(f"root, and cannot make {folder} immutable: {locked.stderr.strip()}")
        unlock = ["chattr", "-i", str(folder)]
    else:
        folder.chmod(0o500)
        unlock = ["chmod", "700", str(folder)]
    try:
        result = train(1, verdict_data, out, "train.max_steps=2")
    finally:
        subprocess.run(unlock)
    assert result.returncode == 2
    assert re.search(r"cannot write checkpoint .*step_00000002.pt: (Operation not permitted|Permission denied)",
                     result.stderr), result.stderr
    assert checkpoint.read(folder / "step_00000001.pt")


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
        manifest["splits"]["train"]["shards"][0]["sha256"] = checkpoint.hashlib.sha256(tokens.tobytes()).hexdigest()
    else:
        manifest["format"] = "gptdist-shards/9"
    (data / "manifest.json").write_text(json.dumps(manifest))
    result = run_module("gptdist.train", *train_args(data, tmp_path / "run", "train.max_steps=2"))
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "run" / "checkpoints").exists()


def test_code_never_unpickles_or_shells_out():
    source = "\n".join(p.read_text() for p in (REPO / "gptdist").glob("*.py"))
    loads = re.findall(r"torch\.load\(([^)]*)\)", source)
    assert loads and all("weights_only=True" in call for call in loads)
    assert "yaml.load(" not in source and "yaml.safe_load(" in source
    assert "shell=True" not in source and "os.system(" not in source and "import pickle" not in source
