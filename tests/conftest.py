"""The tests' fixtures: the environment of every process (environment.py), the preloaded server the commands
are forked from (processes.py), prepared shards and reference runs made once per session, stand-ins; and
the rule that no test is skipped without a reason on the allow-list (skips.py).

Helpers live by role: processes.py (running and killing commands), inputs.py (corpora, arguments, what a
run wrote), stand_ins.py (nanoGPT, transformers' GPT-2, unwritable folders, a disk to fill)."""

import os
import shutil
from pathlib import Path

import filelock
import pytest
from environment import VERDICT
from inputs import UNINTERRUPTED, newest_model, train_args, write_paragraphs
from processes import preloaded_server, run_module, train
from stand_ins import NANOGPT_STAND_IN

pytest_plugins = ["skips"]


# The files that take longest, first: the test processes (pytest-xdist, whole files each) take files in
# this order as they free up, so the longest ones never start last (.ci/run prints the slowest tests).
LONGEST_FIRST = ["test_stalls.py", "test_benchmarks.py", "test_fresh.py", "test_checkpoint_ranks.py",
                 "test_train.py", "test_slurm.py", "test_time_to_loss.py", "test_training_step.py",
                 "test_fsdp.py", "test_reliability.py", "test_launch.py", "test_modern_model.py",
                 "test_wandb.py", "test_muon.py", "test_hellaswag.py"]


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: each file's own order kept


@pytest.fixture(scope="session", autouse=True)
def _preloaded_server():
    """The server that this test process's launchers hand their commands to, for the whole session."""
    with preloaded_server():
        yield


@pytest.fixture(scope="session")
def download_cache(tmp_path_factory) -> Path:
    """A GPTDIST_CACHE seeded with The Verdict, as if downloaded before."""
    cache = tmp_path_factory.mktemp("gptdist-cache")
    shutil.copy(VERDICT, cache / "the-verdict.txt")
    return cache


@pytest.fixture(autouse=True)
def _isolated_cache(monkeypatch, tmp_path_factory, request):
    """Every test gets a GPTDIST_CACHE: the seeded one where asked for, else an empty one."""
    if "download_cache" in request.fixturenames:
        cache = request.getfixturevalue("download_cache")
    else:
        cache = tmp_path_factory.mktemp("empty-cache")
    monkeypatch.setenv("GPTDIST_CACHE", str(cache))


def made_once(tmp_path_factory, worker_id: str, name: str, make) -> Path:
    """The folder `name` that `make(folder)` fills: made once per session, by the first of the session's
    test processes (pytest-xdist's workers) to ask for it, and read by all of them."""
    if worker_id == "master":  # one test process
        folder = tmp_path_factory.mktemp(name)
        make(folder)
        return folder
    folder = tmp_path_factory.getbasetemp().parent / name  # the session's folder, above every worker's
    with filelock.FileLock(f"{folder}.lock"):
        if not (folder / ".made").exists():
            shutil.rmtree(folder, ignore_errors=True)  # a worker that failed to make it left a part
            folder.mkdir()
            make(folder)
            (folder / ".made").touch()
    return folder


@pytest.fixture(scope="session")
def verdict_data(tmp_path_factory, worker_id, download_cache) -> Path:
    """The Verdict prepared into shards (once per session)."""

    def prepare(folder: Path) -> None:
        result = run_module("gptdist.prepare", "--dataset", "verdict", "--out", folder / "verdict",
                            env={"GPTDIST_CACHE": str(download_cache)})
        assert result.returncode == 0, result.stderr

    return made_once(tmp_path_factory, worker_id, "data", prepare) / "verdict"


@pytest.fixture(scope="session")
def paragraphs_data(tmp_path_factory, worker_id) -> Path:
    """The Verdict's paragraphs prepared as 83 documents (once per session)."""

    def prepare(folder: Path) -> None:
        result = run_module("gptdist.prepare", "--input", write_paragraphs(folder / "text"), "--out",
                            folder / "paragraphs", "--workers", "1")
        assert result.returncode == 0, result.stderr

    return made_once(tmp_path_factory, worker_id, "paragraphs", prepare) / "paragraphs"


@pytest.fixture(scope="session")
def uninterrupted(tmp_path_factory, worker_id, verdict_data) -> dict:
    """The final weights of UNINTERRUPTED on two processes (torchrun --standalone)."""

    def run(folder: Path) -> None:
        train(2, *train_args(verdict_data, folder / "run", *UNINTERRUPTED))

    return newest_model(made_once(tmp_path_factory, worker_id, "uninterrupted", run) / "run")


@pytest.fixture(scope="session")
def nanogpt(tmp_path_factory) -> Path:
    """A nanoGPT checkout ($GPTDIST_NANOGPT_DIR), or a stand-in with its model.py's interface."""
    if os.environ.get("GPTDIST_NANOGPT_DIR"):
        return Path(os.environ["GPTDIST_NANOGPT_DIR"])
    folder = tmp_path_factory.mktemp("nanogpt")
    (folder / "model.py").write_text(NANOGPT_STAND_IN)
    return folder
