"""Launches without SLURM: c10d rendezvous across agents, and workers restarted under --max-restarts."""

import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import REPO, free_port, kill_a_worker_once_saved, newest_model, same_weights, train_args

pytestmark = pytest.mark.slow

RUN = ("train.max_steps=24", "checkpoint.interval=4", "checkpoint.keep=10", "eval.interval=12",
       "model.drop_rate=0.1", "model.emb_dim=64", "model.context_length=64")
# torchrun sets OMP_NUM_THREADS=1 only when it starts several local processes; the thread
# count changes CPU matmul rounding, so every agent gets it explicitly.
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def torchrun(*launch_args):
    return [sys.executable, "-m", "torch.distributed.run", *launch_args, "-m", "gptdist.train"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, verdict_data):
    """One agent with two processes, never interrupted."""
    out = tmp_path_factory.mktemp("reference") / "run"
    result = subprocess.run(torchrun("--standalone", "--nproc_per_node=2") + train_args(verdict_data, out, *RUN),
                            capture_output=True, text=True, env=ENV, cwd=REPO, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return newest_model(out)


def test_two_agents_meeting_by_c10d_match_one_agent(tmp_path, verdict_data, reference):
    out = tmp_path / "run"
    port = free_port()
    # The rendezvous store lives in the test, as on a dedicated host: an agent hosting it could
    # leave before the other finished shutting the rendezvous down (a torchrun race, exit 1).
    store = torch.distributed.TCPStore("127.0.0.1", port, is_master=True, wait_for_workers=False)
    agents = [
        subprocess.Popen(torchrun("--nnodes=2", "--nproc_per_node=1", f"--node_rank={rank}", "--rdzv-backend=c10d",
                                  f"--rdzv-endpoint=127.0.0.1:{port}", "--rdzv-id=two-agents", "--rdzv-conf=is_host=0")
                         + train_args(verdict_data, out, *RUN), env=ENV, cwd=REPO,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for rank in range(2)
    ]
    outputs = [agent.communicate(timeout=600)[0] for agent in agents]
    del store
    assert [a.returncode for a in agents] == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
    assert same_weights(newest_model(out), reference)


@pytest.mark.parametrize("rendezvous", ["standalone", "c10d"])
def test_killed_worker_is_restarted_and_ends_on_the_uninterrupted_weights(tmp_path, verdict_data, reference,
                                                                          rendezvous):
    out = tmp_path / "run"
    launch = ["--standalone"] if rendezvous == "standalone" else \
        ["--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{free_port()}", "--nnodes=1"]
    agent = subprocess.Popen(torchrun(*launch, "--nproc_per_node=2", "--max-restarts=1")
                             + train_args(verdict_data, out, *RUN), env=ENV, cwd=REPO,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    kill_a_worker_once_saved(agent, out / "checkpoints" / "step_00000008.pt")
    assert same_weights(newest_model(out), reference)


@pytest.mark.parametrize("outcome", ["finished", "failed"])
def test_multi_node_script_succeeds_exactly_when_training_finished(tmp_path, verdict_data, outcome):
    """launch/multi-node.sh on two agents (c10d, one hosting the store): torchrun alone may exit 1 after
    a successful run; the script's status follows rank 0's outcome file."""
    out = tmp_path / "run"
    port = free_port()
    overrides = RUN if outcome == "finished" else (*RUN, "model.n_heads=3")  # 64 wide: heads do not divide it
    env = {**ENV, "NNODES": "2", "NPROC_PER_NODE": "1", "RDZV_ENDPOINT": f"127.0.0.1:{port}", "RDZV_ID": "script",
           "GPTDIST_OUTCOME_FILE": str(tmp_path / "outcome")}
    agents = [subprocess.Popen(["bash", "launch/multi-node.sh", *train_args(verdict_data, out, *overrides)], env=env,
                               cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
              for _ in range(2)]
    outputs = [agent.communicate(timeout=600)[0] for agent in agents]
    statuses = [agent.returncode for agent in agents]
    if outcome == "finished":
        assert statuses == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
        assert json.loads((tmp_path / "outcome").read_text()) == {"outcome": "finished", "step": 24}
    else:
        assert 0 not in statuses and not (tmp_path / "outcome").exists()
        assert "model.n_heads" in outputs[0] + outputs[1]
