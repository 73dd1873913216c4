"""What a user runs, run as a user runs it: every command and every console script of pyproject.toml in a new
interpreter (never forked from the tests' preloaded server), end to end, with its exit status, its output
and a stderr without a warning; and forked commands against the same commands run fresh."""

import os
import re
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from inputs import UNINTERRUPTED, newest_model, same_weights, train_args, write_hellaswag, write_lm_eval_tasks
from processes import LAUNCHERS, PYTHON, REPO, kill_job, run_main, wait_for

SCRIPTS = Path(sysconfig.get_path("scripts"))  # where pip put gptdist's console scripts and torchrun
WARNING = re.compile(r"warn", re.IGNORECASE)


def fresh_env() -> dict:
    """The test process's environment without the preloaded server's launchers on PATH."""
    path = [folder for folder in os.environ["PATH"].split(os.pathsep)
            if not LAUNCHERS or Path(folder) != LAUNCHERS]
    return {**os.environ, "PATH": os.pathsep.join(path)}


def script(name: str) -> str:
    path = SCRIPTS / name
    assert path.is_file(), f"no console script {path}: install gptdist (pip install -e '.[dev]')"
    return str(path)


def fresh(*command, cwd=REPO, expect=0) -> subprocess.CompletedProcess:
    """A command in new interpreters only (its own and every one it starts), to its end: its exit status
    `expect` and, when it succeeds, no warning on stderr."""
    result = subprocess.run(list(map(str, command)), capture_output=True, text=True, cwd=cwd,
                            env=fresh_env(), timeout=600)
    assert result.returncode == expect, result.stdout[-2000:] + result.stderr[-3000:]
    if expect == 0:
        warned = [line for line in result.stderr.splitlines() if WARNING.search(line)]
        assert not warned, "\n".join(warned)
    return result


@pytest.mark.slow
def test_every_command_and_console_script_end_to_end_in_new_interpreters(tmp_path, download_cache,
                                                                          uninterrupted):
    data, run = tmp_path / "data", tmp_path / "run"
    prepared = fresh(script("gptdist-prepare"), "--dataset", "verdict", "--out", data)  # the cache's copy
    assert f"prepared {data}: 1 documents, 5,146 tokens" in prepared.stdout

    # two workers under torchrun, killed with SIGKILL once step 8 is saved, resumed by the console script
    # under torchrun: the uninterrupted run's weights (made by forked processes), bit for bit
    args = train_args(data, run, *UNINTERRUPTED)
    agent = subprocess.Popen([script("torchrun"), "--standalone", "--nproc_per_node=2", "-m",
                              "gptdist.train", *map(str, args)], cwd=REPO, env=fresh_env(),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for((run / "checkpoints" / "step_00000008.pt").exists, agent)
    kill_job(agent, run)
    assert not (run / "checkpoints" / "step_00000024.pt").exists(), "the run ended before the kill"
    resumed = fresh(script("torchrun"), "--standalone", "--nproc_per_node=2", "--no-python",
                    script("gptdist-train"), *args)
    assert "resumed from" in resumed.stdout and "step     24/24" in resumed.stdout, resumed.stdout[-2000:]
    assert same_weights(newest_model(run), uninterrupted)

    generated = fresh(script("gptdist-generate"), "--checkpoint", run, "--max-new-tokens", 5)
    assert generated.stdout.startswith("Every effort moves you")
    evaluated = fresh(script("gptdist-evaluate"), "--checkpoint", run, "--data", data)
    assert re.search(r"^val: loss [\d.]+ \| perplexity [\d.]+$", evaluated.stdout, re.M), evaluated.stdout
    hellaswag = write_hellaswag(tmp_path / "hellaswag.jsonl")
    scored = fresh(sys.executable, "-m", "gptdist.evaluate", "--checkpoint", run, "--task", "hellaswag",
                   "--hellaswag-file", hellaswag)
    assert "hellaswag" in scored.stdout.lower() and "acc" in scored.stdout, scored.stdout
    tasks = write_lm_eval_tasks(tmp_path / "tasks", hellaswag)
    harness = fresh(sys.executable, "-m", "gptdist.evaluate", "--checkpoint", run, "--task", "lm-eval",
                    "--include-path", tasks, "--tasks", "local_hellaswag", "--limit", 4)
    assert "local_hellaswag" in harness.stdout and "acc" in harness.stdout, harness.stdout

    exported = fresh(script("gptdist-export"), "--checkpoint", run, "--out", tmp_path / "export")
    assert "model_type gpt2" in exported.stdout and (tmp_path / "export" / "config.json").is_file()
    bench = fresh(script("gptdist-bench"), "train", "--config", REPO / "configs" / "verdict-tiny.yaml",
                  f"data.dir={data}", "model.emb_dim=32", "model.n_heads=2", "model.n_layers=1",
                  "model.context_length=32", "--steps", 2, "--warmup", 1)
    assert '"benchmark": "train"' in bench.stdout and '"world_size": 1' in bench.stdout
    planned = fresh(script("gptdist-plan"), "--config", REPO / "configs" / "verdict-tiny.yaml",
                    f"data.dir={data}", "--nodes", 2, "--gpus-per-node", 2)
    assert "world size 4" in planned.stdout and "memory per GPU" in planned.stdout, planned.stdout


def test_forked_and_fresh_commands_print_the_same(tmp_path, verdict_data):
    run = tmp_path / "run"
    assert run_main("gptdist.train", *train_args(verdict_data, run, "train.max_steps=2")).returncode == 0
    commands = [
        ["-m", "gptdist.train", "--help"],
        ["-m", "gptdist.train", "--config", tmp_path / "missing.yaml"],  # a one-line error, exit status 2
        ["-m", "gptdist.generate", "--checkpoint", run, "--max-new-tokens", 8, "--num-samples", 2],
        ["-m", "gptdist.evaluate", "--checkpoint", run, "--data", verdict_data, "--batches", 2],
        ["-m", "gptdist.export", "--checkpoint", run, "--out", run],  # refuses to write over the run
        ["-m", "gptdist.plan", "--config", REPO / "configs" / "verdict-tiny.yaml", f"data.dir={verdict_data}",
         "--gpus-per-node", 2, "--json"],
    ]
    for command in commands:
        command = list(map(str, command))
        forked = subprocess.run([PYTHON, *command], capture_output=True, text=True, cwd=REPO, timeout=600)
        new = subprocess.run([sys.executable, *command], capture_output=True, text=True, cwd=REPO,
                             env=fresh_env(), timeout=600)
        same = (forked.returncode, forked.stdout, forked.stderr) == (new.returncode, new.stdout, new.stderr)
        assert same, (command, forked, new)
    assert "usage: gptdist.train" in subprocess.run([sys.executable, *commands[0]], capture_output=True,
                                                    text=True, cwd=REPO).stdout
