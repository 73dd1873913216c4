import os
import subprocess

import pytest
from inputs import metrics_rows, train_args, write_hellaswag, write_lm_eval_tasks
from processes import REPO, run_module, torchrun_command
from wandb_offline import history, run_ids

pytest.importorskip("wandb")


def offline_runs(out_dir):
    return sorted((out_dir / "wandb").glob("offline-run-*"))


@pytest.mark.slow
def test_two_process_offline_run_is_one_run_with_the_history_and_resumes_its_id(tmp_path, verdict_data):
    out = tmp_path / "run"
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_API_KEY": "x" * 40}
    hellaswag_file = write_hellaswag(tmp_path / "hellaswag.jsonl")
    tasks = write_lm_eval_tasks(tmp_path / "tasks", hellaswag_file)
    overrides = ("logging.wandb=true", "logging.wandb_project=gptdist-test", "logging.wandb_tags=[ci, tiny]",
                 "logging.interval=2", "eval.interval=4", "eval.hellaswag_interval=4",
                 f"eval.hellaswag_file={hellaswag_file}", "eval.lm_eval_tasks=[local_hellaswag]",
                 f"eval.lm_eval_include_path={tasks}")
    result = subprocess.run(torchrun_command(2,
                                             *train_args(verdict_data, out, "train.max_steps=8", *overrides)),
                            capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    runs = offline_runs(out)
    assert len(runs) == 1  # rank 0 only
    (log,) = runs[0].glob("run-*.wandb")
    rows = history(log)
    losses = {row["_step"]: row["loss"] for row in rows if "loss" in row}
    metrics = metrics_rows(out)
    assert losses == {r["step"]: r["loss"] for r in metrics if "loss" in r}
    assert {r["_step"]: r["val_loss"] for r in rows if "val_loss" in r} == \
        {r["step"]: r["val_loss"] for r in metrics if "val_loss" in r}
    logged = {r["_step"]: r["mfu"] for r in rows if "mfu" in r}
    assert logged == {r["step"]: r["mfu"] for r in metrics if "mfu" in r}
    hellaswag = {r["_step"]: r["hellaswag_acc_norm"] for r in rows if "hellaswag_acc_norm" in r}
    assert hellaswag == {r["step"]: r["hellaswag_acc_norm"] for r in metrics if "hellaswag_acc_norm" in r}
    assert sorted(hellaswag) == [0, 4, 8]
    acc = "lm_eval/local_hellaswag/acc"
    lm_eval = {r["_step"]: r[acc] for r in rows if acc in r}
    assert lm_eval == {r["step"]: r[acc] for r in metrics if "lm_eval_s" in r}
    assert sorted(lm_eval) == [0, 4, 8]
    # eval.at_start: the curve starts at the initial loss
    assert min(r["_step"] for r in rows if "val_loss" in r) == 0
    media = {key.split("/")[0] for row in rows for key in row if "/" in key}  # stored as nested keys
    assert media == {"samples", "loss_plot", "lm_eval"}
    tables = [row for row in rows if "samples/_type" in row]
    assert [t["samples/_type"] for t in tables] == ["table-file"] * 3 and tables[-1]["samples/nrows"] == 3
    (run_id,) = run_ids(log)

    resumed = subprocess.run(torchrun_command(2,
                                              *train_args(verdict_data, out, "train.max_steps=12",
                                                          *overrides)),
                             capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    runs = offline_runs(out)
    assert len(runs) == 2 and all(r.name.endswith(run_id) for r in runs)
    (second_log,) = runs[1].glob("run-*.wandb")
    assert run_ids(second_log) == {run_id}
    assert max(row["_step"] for row in history(second_log) if "loss" in row) == 12
    for path in out.rglob("*"):  # the API key is never written anywhere
        if path.is_file():
            assert b"x" * 40 not in path.read_bytes(), path
    assert "x" * 40 not in result.stdout + result.stderr + resumed.stdout + resumed.stderr


@pytest.mark.slow
def test_wandb_dir_is_honoured_when_set(tmp_path, verdict_data):
    out, elsewhere = tmp_path / "run", tmp_path / "wandb-files"
    elsewhere.mkdir()
    env = {"WANDB_MODE": "offline", "WANDB_DIR": str(elsewhere), "WANDB_API_KEY": "x" * 40}
    result = run_module("gptdist.train",
                        *train_args(verdict_data, out, "train.max_steps=2", "logging.wandb=true"),
                        env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(offline_runs(elsewhere)) == 1 and not (out / "wandb").exists()


def test_wandb_true_without_wandb_installed_fails_at_start(tmp_path, verdict_data):
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    (blocker / "wandb.py").write_text("raise ImportError('no wandb here')\n")
    env = {"PYTHONPATH": f"{blocker}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    result = run_module("gptdist.train", *train_args(verdict_data, tmp_path / "run", "logging.wandb=true"),
                        env=env)
    assert result.returncode == 2
    assert "logging.wandb is true but wandb is not installed" in result.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_mixture_shows_its_tokens_and_val_loss_by_source(tmp_path, verdict_data, paragraphs_data):
    out = tmp_path / "run"
    mixture = (f"data.sources=[{{name: books, dir: {verdict_data}}}, "
               f"{{name: paragraphs, dir: {paragraphs_data}}}]")
    env = {"WANDB_MODE": "offline", "WANDB_API_KEY": "x" * 40}
    result = run_module("gptdist.train", *train_args(verdict_data, out, mixture, "train.max_steps=2",
                                                     "logging.interval=1", "logging.wandb=true"), env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = offline_runs(out)
    rows = history(next(run.glob("*.wandb")))
    logged = {key for row in rows for key in row}
    assert {"tokens_by_source/books", "tokens_by_source/paragraphs", "val_loss_by_source/books",
            "val_loss_by_source/paragraphs"} <= logged, sorted(logged)
    last = [row for row in rows if "tokens_by_source/books" in row][-1]
    assert last["tokens_by_source/books"] + last["tokens_by_source/paragraphs"] == last["tokens_seen"]
