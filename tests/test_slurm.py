"""slurm/train.sbatch on a real single-node SLURM cluster, started by tests/slurm/cluster.sh."""

import json
import os
import re
import shutil
import subprocess
import time

import pytest
from conftest import REPO, train_args

pytestmark = pytest.mark.slow
CLUSTER = REPO / "tests" / "slurm" / "cluster.sh"


@pytest.fixture(scope="module")
def slurm():
    """A running cluster: started (and installed) by our script, or skip saying why not."""
    if os.geteuid() != 0 and not shutil.which("sbatch"):
        pytest.skip("SLURM is not installed and installing it needs root")
    if not shutil.which("apt-get") and not shutil.which("sbatch"):
        pytest.skip("SLURM is not installed and there is no apt-get to install it")
    already_up = shutil.which("sinfo") and subprocess.run(["sinfo"], capture_output=True).returncode == 0
    result = subprocess.run(["bash", str(CLUSTER), "up"], capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        pytest.skip(f"could not start a SLURM cluster: {result.stderr.strip()[-500:]}")
    yield
    if not already_up:
        subprocess.run(["bash", str(CLUSTER), "down"], capture_output=True, timeout=60)


def sbatch(tmp_path, *args, wait=False):
    env = {**os.environ, "NPROC_PER_NODE": "2"}
    command = ["sbatch", "--parsable", "--cpus-per-task=1", "--ntasks-per-node=1", f"--output={tmp_path}/job.log",
               *(["--wait"] if wait else []), str(REPO / "slurm" / "train.sbatch"), *args]
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO, timeout=600)
    job = re.search(r"^(\d+)", result.stdout.strip())
    return result, job.group(1) if job else None


def job_info(job: str) -> dict:
    text = subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True).stdout
    return dict(re.findall(r"(\w+)=(\S+)", text))


def wait_for_end(job: str, timeout=400) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        info = job_info(job)
        if info.get("JobState") in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL"):
            return info
        time.sleep(1)
    subprocess.run(["scancel", job])
    raise AssertionError(f"job {job} did not end in {timeout} s: {job_info(job)}")


def test_job_runs_to_completion_and_leaves_a_checkpoint(slurm, tmp_path, verdict_data):
    out = tmp_path / "run"
    result, job = sbatch(tmp_path, *train_args(verdict_data, out, "train.max_steps=6"), wait=True)
    log = (tmp_path / "job.log").read_text() if (tmp_path / "job.log").exists() else ""
    assert result.returncode == 0, result.stderr + log[-3000:]
    assert wait_for_end(job)["JobState"] == "COMPLETED"
    assert (out / "checkpoints" / "step_00000006.pt").is_file()
    assert "on 1 node(s) x 2" in log and "training" in log


def test_preempted_job_checkpoints_requeues_resumes_and_finishes(slurm, tmp_path, verdict_data):
    out = tmp_path / "run"
    result, job = sbatch(tmp_path, *train_args(verdict_data, out, "train.max_steps=60", "logging.interval=1",
                                               "checkpoint.interval=1000"))
    assert result.returncode == 0, result.stderr
    metrics = out / "metrics.jsonl"
    deadline = time.time() + 300
    while not metrics.exists() or '"step": 3,' not in metrics.read_text():
        assert time.time() < deadline, (tmp_path / "job.log").read_text()[-3000:]
        assert job_info(job).get("JobState") in ("PENDING", "RUNNING", "CONFIGURING")
        time.sleep(0.5)
    subprocess.run(["scancel", "--signal=USR1", "--batch", job], check=True)
    info = wait_for_end(job)
    log = (tmp_path / "job.log").read_text()
    assert info["JobState"] == "COMPLETED" and info["Restarts"] == "1", log[-3000:]
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    resumes = [r for r in rows if r.get("event") == "resume"]
    assert len(resumes) == 1 and 3 <= resumes[0]["step"] < 60
    assert f"step_{resumes[0]['step']:08d}.pt" in resumes[0]["checkpoint"]
    assert max(r["step"] for r in rows if "loss" in r) == 60
    assert (out / "checkpoints" / "step_00000060.pt").is_file()
    assert "got SIGUSR1" in log and "requeueing job" in log and "(restart 1)" in log


def test_failing_training_ends_failed(slurm, tmp_path, verdict_data):
    result, job = sbatch(tmp_path, *train_args(verdict_data, tmp_path / "run", "train.no_such_key=1"), wait=True)
    info = wait_for_end(job)
    assert info["JobState"] == "FAILED" and info["ExitCode"] != "0:0"
    assert result.returncode != 0
    assert "unknown config key train.no_such_key" in (tmp_path / "job.log").read_text()
