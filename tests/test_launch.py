"""Launches without SLURM: c10d rendezvous across agents (launch/multi-node.sh), and workers restarted under
--max-restarts."""

import json
import os
import subprocess

import pytest
from inputs import UNINTERRUPTED, newest_model, same_weights, train_args
from processes import REPO, free_port, kill_a_worker_once_saved, start_restartable

pytestmark = pytest.mark.slow

@pytest.mark.parametrize("rendezvous", ["standalone", "c10d"])
def test_killed_worker_is_restarted_and_ends_on_the_uninterrupted_weights(tmp_path, verdict_data, rendezvous,
                                                                          uninterrupted):
    out, logs = tmp_path / "run", tmp_path / "logs"
    rendezvous = ["--standalone"] if rendezvous == "standalone" else \
        ["--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{free_port()}", "--nnodes=1"]
    agent = start_restartable(2, *train_args(verdict_data, out, *UNINTERRUPTED), logs=logs,
                              rendezvous=rendezvous)
    kill_a_worker_once_saved(agent, out / "checkpoints" / "step_00000008.pt", logs)
    assert same_weights(newest_model(out), uninterrupted)


@pytest.mark.parametrize("outcome", ["finished", "failed"])
def test_multi_node_script_succeeds_exactly_when_training_finished(tmp_path, verdict_data, uninterrupted,
                                                                   outcome):
    """launch/multi-node.sh on two agents (c10d, one hosting the store): torchrun alone may exit 1 after
    a successful run; the script's status follows rank 0's outcome file. Two agents meeting by c10d train
    as one agent does: the uninterrupted run's weights."""
    out = tmp_path / "run"
    port = free_port()
    # failed: 3 heads do not divide a width of 64
    overrides = UNINTERRUPTED if outcome == "finished" else (*UNINTERRUPTED, "model.n_heads=3")
    env = {**os.environ, "NNODES": "2", "NPROC_PER_NODE": "1", "RDZV_ENDPOINT": f"127.0.0.1:{port}",
           "RDZV_ID": "script", "GPTDIST_OUTCOME_FILE": str(tmp_path / "outcome")}
    agents = [subprocess.Popen(["bash", "launch/multi-node.sh", *train_args(verdict_data, out, *overrides)],
                               env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
              for _ in range(2)]
    outputs = [agent.communicate(timeout=600)[0] for agent in agents]
    statuses = [agent.returncode for agent in agents]
    if outcome == "finished":
        assert statuses == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
        assert json.loads((tmp_path / "outcome").read_text()) == {"outcome": "finished", "step": 24}
        assert same_weights(newest_model(out), uninterrupted)
    else:
        assert 0 not in statuses and not (tmp_path / "outcome").exists()
        assert "model.n_heads" in outputs[0] + outputs[1]
