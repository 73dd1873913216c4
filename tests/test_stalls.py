"""A run that stalls says where, and heals: a frozen rank, a read that never returns, the same hang after
every restart, a slow rank, a loss spike and stacks on demand, each made from outside the product
(SIGSTOP, tests/hooks/sitecustomize.py) in real processes under torchrun."""

import json
import os
import re
import signal
import statistics
import subprocess
import threading
import time

import pytest
from inputs import UNINTERRUPTED, metrics_rows, newest_model, same_weights, train_args
from processes import hooks_env, rank_pids, run_main, start, torchrun_command, train, wait_for

from gptdist.checkpoint import store

pytestmark = pytest.mark.slow
HANG = "train.hang_timeout_s=5"


def logged(out) -> str:
    """What the run has written to metrics.jsonl so far."""
    return (out / "metrics.jsonl").read_text() if (out / "metrics.jsonl").exists() else ""


def lines_until(agent: subprocess.Popen, pattern: str) -> tuple[str, float]:
    """The agent's output up to the first line matching `pattern`, and when that line came."""
    seen = []
    for line in agent.stdout:
        seen.append(line)
        if re.search(pattern, line):
            return "".join(seen), time.monotonic()
    pytest.fail(f"no line matched {pattern!r}: {''.join(seen)[-3000:]}")


def test_a_frozen_rank_is_named_and_the_group_restarts_onto_the_uninterrupted_weights(tmp_path, verdict_data,
                                                                                       uninterrupted):
    out, gate = tmp_path / "run", tmp_path / "gate"
    # step 4's write goes through, step 8's is held: rank 0 stops at step 12's save, where rank 1 waits for
    # it; rank 1 is frozen there, then rank 0 goes on into step 13's collective, which rank 1 never reaches
    env = hooks_env(gate=gate)
    (gate / "step_00000004.pt").touch()
    agent = start(torchrun_command(2, *train_args(verdict_data, out, *UNINTERRUPTED, HANG),
                                   launch=["--standalone", "--max-restarts=1"]),
                  env=env, stderr=subprocess.STDOUT)
    wait_for((gate / "step_00000008.pt.held").exists, agent)
    os.kill(rank_pids(out)[1], signal.SIGSTOP)
    frozen = time.monotonic()
    (gate / "all").touch()
    before, named = lines_until(agent, r"^hang at step")
    rest = agent.communicate(timeout=300)[0]
    assert agent.returncode == 0, rest[-3000:]
    line = before.splitlines()[-1]
    print(f"SIGSTOP to the named line: {named - frozen:.1f} s: {line}")
    assert named - frozen < 5 + 10, line  # the hang timeout, then a few seconds to compare notes
    assert re.search(r"rank 1 \(\S+, pid \d+\) stopped answering", line), line
    folder = re.search(r"stacks in (\S+);", line).group(1)
    assert "Thread MainThread" in open(f"{folder}/rank_0.txt").read()  # the rank that waited said where
    assert "exiting with code 75" in line and "resumed from" in rest
    assert same_weights(newest_model(out), uninterrupted)


def test_a_read_that_never_returns_names_its_rank_and_phase_and_shows_where(tmp_path, verdict_data):
    out = tmp_path / "run"
    agent = start(torchrun_command(2, *train_args(verdict_data, out, "train.max_steps=40", HANG)),
                  env=hooks_env(stall="1:20"), stderr=subprocess.STDOUT)
    output = agent.communicate(timeout=300)[0]
    assert agent.returncode != 0 and "exitcode  : 75" in output, output[-3000:]
    line = next(line for line in output.splitlines() if line.startswith("hang at step"))
    assert line.startswith("hang at step 20: rank 1 (") and "in data of step 20" in line, line
    assert "while the others wait in forward/backward" in line, line
    stacks = (out / "hangs" / "step_20" / "rank_1.txt").read_text()
    assert "batches = self.loader.next()" in stacks, stacks  # where it is stuck: reading its batch
    assert (out / "hangs" / "step_20" / "rank_0.txt").is_file()


def test_without_the_watchdog_the_short_timeout_ends_a_hang_with_one_line(tmp_path, verdict_data):
    """After the first step every process group has dist.step_timeout_s: the rank that waits for a stuck
    one fails after it (not gloo's 30 minutes), in one line."""
    out = tmp_path / "run"
    agent = start(torchrun_command(2, *train_args(verdict_data, out, "train.max_steps=40",
                                                  "train.watchdog=false", "dist.step_timeout_s=4")),
                  env=hooks_env(stall="1:20"))
    _, stderr = agent.communicate(timeout=300)
    assert agent.returncode != 0
    assert ("gptdist.train: error: a collective in forward/backward of step 20 timed out after "
            "dist.step_timeout_s 4 s: another rank never reached it") in stderr, stderr[-3000:]
    assert "[rank0]: Traceback" not in stderr


def test_the_same_hang_after_every_restart_stops_with_no_progress(tmp_path, verdict_data):
    """launch/single-node.sh with restarts to spare: the third failure at step 20 (checkpoint 10) stops the
    run, the fourth attempt does not train, and the script exits 79."""
    out = tmp_path / "run"
    env = {**hooks_env(stall="1:20"), "MAX_RESTARTS": "3", "NPROC_PER_NODE": "2",
           "GPTDIST_OUTCOME_FILE": str(tmp_path / "outcome")}
    agent = start(["bash", "launch/single-node.sh",
                   *train_args(verdict_data, out, "train.max_steps=40", "checkpoint.interval=10", HANG)],
                  env=env, stderr=subprocess.STDOUT)
    output = agent.communicate(timeout=600)[0]
    assert agent.returncode == 79, output[-3000:]
    failures = [json.loads(line) for line in (out / "failures.jsonl").read_text().splitlines()]
    assert [(f["attempt"], f["step"], f["checkpoint"]) for f in failures] == [(0, 20, 10), (1, 20, 10),
                                                                              (2, 20, 10)]
    assert output.count("hang at step 20: rank 1") == 3  # the fourth attempt did not train
    assert ("no progress: the run failed at step 20 in 3 attempts in a row (hang), never past its newest "
            "checkpoint (step 10)") in output
    assert "exitcode  : 79" in output
    assert 'gptdist: training makes no progress ({"outcome": "no progress", "step": 20})' in output


def duty_cycle(pid: int, stop_s: float, run_s: float, until: threading.Event) -> None:
    """Slow a process from outside: stopped `stop_s`, running `run_s`, over and over."""
    while not until.is_set():
        try:
            os.kill(pid, signal.SIGSTOP)
            time.sleep(stop_s)
            os.kill(pid, signal.SIGCONT)
            time.sleep(run_s)
        except ProcessLookupError:
            return


@pytest.mark.parametrize("slowed", [True, False], ids=["rank-2-slowed", "even"])
def test_a_slowed_rank_is_named_with_its_ratio_and_an_even_run_names_none(tmp_path, verdict_data, slowed):
    out = tmp_path / "run"
    # logs every 20 steps: a window of 60 steps, over which a passing load on a shared machine evens out
    args = train_args(verdict_data, out, "train.max_steps=200", "train.micro_batch_size=2",
                      "logging.interval=20", "eval.interval=1000", "checkpoint.interval=1000")
    agent = start(torchrun_command(4, *args), stderr=subprocess.STDOUT)
    done = threading.Event()
    if slowed:
        wait_for(lambda: '"loss"' in logged(out), agent)
        threading.Thread(target=duty_cycle, args=(rank_pids(out)[2], 0.05, 0.05, done), daemon=True).start()
    output = agent.communicate(timeout=600)[0]
    done.set()
    assert agent.returncode == 0, output[-3000:]
    named = re.findall(r"slow rank: rank (\d+) \(\S+\) worked ([\d.]+)x", output)
    print(f"{'slowed 2x (50% duty)' if slowed else 'even'}: {named}")
    rows = [row for row in metrics_rows(out) if "work_s_max" in row]
    assert rows and all(row["work_s_min"] <= row["work_s_median"] <= row["work_s_max"] for row in rows)
    if not slowed:
        assert named == [], output
        return
    assert named and {rank for rank, _ in named} == {"2"}, output
    # near the slowdown: less where the machine is shared (a stopped rank frees a core for the others)
    assert 1.25 <= statistics.median(float(ratio) for _, ratio in named) <= 2.5, named
    assert "its extra time goes to compute" in output
    assert [row["slowest_rank"] for row in rows[-3:]] == [2, 2, 2]


def test_a_spike_is_skipped_leaving_weights_and_optimizer_as_they_were(tmp_path, verdict_data):
    """Step 150's batch is random tokens on every rank (a corrupt stretch of data), where the loss has
    flattened: it is skipped. The run goes to step 149, then on (resumed, its window with it) to 151."""
    out = tmp_path / "run"
    spiky = ("train.spike_zscore=6", "train.spike_warmup=20", "train.spike_window=32", "eval.interval=1000",
             "model.drop_rate=0.0", "logging.interval=1")
    train(2, *train_args(verdict_data, out, *spiky, "train.max_steps=149"))
    result = train(2, *train_args(verdict_data, out, *spiky, "train.max_steps=151", "checkpoint.interval=1",
                                  "checkpoint.keep=5"),
                   env=hooks_env(spike=150))
    spikes = [json.loads(line) for line in (out / "spikes.jsonl").read_text().splitlines()]
    print(f"spikes.jsonl: {spikes}")
    assert [spike["step"] for spike in spikes] == [150], spikes
    assert spikes[0]["loss_z"] > 6 and len(spikes[0]["windows_by_rank"]) == 2
    assert "step 150 skipped as a spike" in result.stdout
    before, after = (store.read(out / "checkpoints" / f"step_{step:08d}.pt") for step in (149, 150))
    assert same_weights(before["model"], after["model"])
    states = before["optimizer"]["state"], after["optimizer"]["state"]
    assert states[0].keys() == states[1].keys()
    assert all(same_weights(states[0][k], states[1][k]) for k in states[0])
    assert not same_weights(after["model"], store.read(out / "checkpoints" / "step_00000151.pt")["model"])
    assert [row["spikes_skipped"] for row in metrics_rows(out) if "loss" in row][-1] == 1


MODERN = ("model.positions=rotary", "model.norm=rmsnorm", "model.qk_norm=true", "model.activation=relu2",
          "model.logit_softcap=15", "model.zero_init_projections=true", "model.bias=false",
          "optim.optimizer=muon", "schedule.decay=wsd")


@pytest.mark.parametrize("recipe", [(), MODERN], ids=["gpt2", "modern"])
def test_a_clean_run_of_hundreds_of_steps_skips_no_spike(tmp_path, verdict_data, recipe):
    out = tmp_path / "run"
    result = run_main("gptdist.train", *train_args(verdict_data, out, *recipe, "train.max_steps=300",
                                                   "train.spike_zscore=6", "eval.interval=1000",
                                                   "checkpoint.interval=1000", "logging.interval=50"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert [row["spikes_skipped"] for row in metrics_rows(out) if "loss" in row][-1] == 0
    assert not (out / "spikes.jsonl").exists()


def test_sigusr2_writes_a_ranks_stacks_and_the_run_goes_on(tmp_path, verdict_data):
    out = tmp_path / "run"
    agent = start(torchrun_command(2, *train_args(verdict_data, out, "train.max_steps=300",
                                                  "logging.interval=1", "eval.interval=1000")),
                  stderr=subprocess.STDOUT)
    wait_for(lambda: '"loss"' in logged(out), agent)
    os.kill(rank_pids(out)[1], signal.SIGUSR2)
    wait_for(lambda: list((out / "stacks").glob("rank_1-*.txt")), agent)
    output = agent.communicate(timeout=300)[0]
    assert agent.returncode == 0, output[-3000:]
    stacks = next((out / "stacks").glob("rank_1-*.txt")).read_text()
    assert stacks.startswith("rank 1 on ") and "Thread MainThread" in stacks
    assert "stacks written to" in output and "step    300/300" in output
