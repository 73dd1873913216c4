"""Checkpoints written by an earlier gptdist (format 2: FeedForward's layers by position) load and resume.

The earlier gptdist is the real one: the package as it was at FORMAT_2_COMMIT, taken from this
repository's history, trains in a process of its own; today's resumes from its checkpoint and
must reach, bit for bit, the weights the earlier one reached without a break.
"""

import io
import subprocess
import tarfile

import pytest
import torch
from inputs import newest_model, same_weights, train_args
from processes import REPO, train

from gptdist.checkpoint import sharded, store
from gptdist.config import ModelConfig
from gptdist.model.gpt import GPTModel

pytestmark = pytest.mark.slow

FORMAT_2_COMMIT = "730723f"  # the last gptdist that wrote gptdist-checkpoint/2
RUN = ("train.max_steps=4", "checkpoint.interval=2", "checkpoint.keep=10", "eval.interval=100",
       "model.drop_rate=0.1")


@pytest.fixture(scope="module")
def format_2_gptdist(tmp_path_factory):
    """A folder holding the gptdist package of FORMAT_2_COMMIT."""
    command = ["git", "-C", str(REPO), "archive", FORMAT_2_COMMIT, "gptdist"]
    archive = subprocess.run(command, capture_output=True)
    if archive.returncode != 0:
        pytest.skip(f"this checkout's history lacks {FORMAT_2_COMMIT}: {archive.stderr.decode().strip()}")
    folder = tmp_path_factory.mktemp("gptdist-format-2")
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(folder, filter="data")
    return folder


def test_a_format_2_checkpoint_file_resumes_to_the_same_weights(tmp_path, verdict_data, format_2_gptdist):
    earlier = tmp_path / "earlier"
    train(None, *train_args(verdict_data, earlier, *RUN), cwd=format_2_gptdist)
    middle = earlier / "checkpoints" / "step_00000002.pt"
    assert store.read(middle)["format"] == "gptdist-checkpoint/2"
    assert any(".ff.layers.0." in name for name in torch.load(middle, weights_only=True)["model"])

    today = tmp_path / "today"
    train(None, *train_args(verdict_data, today, *RUN, f"checkpoint.resume={middle}"))
    assert same_weights(newest_model(today), newest_model(earlier))  # read with today's names
    assert store.read(store.checkpoint_paths(today / "checkpoints")[-1])["format"] == store.FORMAT


def test_a_format_2_sharded_checkpoint_resumes_to_the_same_weights(tmp_path, verdict_data, format_2_gptdist):
    sharded_run = ("train.parallel=fsdp", "checkpoint.sharded=true", "model.drop_rate=0.0")
    earlier = tmp_path / "earlier"
    train(2, *train_args(verdict_data, earlier, *RUN, *sharded_run), cwd=format_2_gptdist)
    middle, end = store.checkpoint_paths(earlier / "checkpoints")  # steps 2 and 4
    assert store.read(middle)["format"] == "gptdist-checkpoint/2" and sharded.is_sharded(middle)

    today = tmp_path / "today"
    resumed = train_args(verdict_data, today, *RUN, *sharded_run, f"checkpoint.resume={middle}")
    train(2, *resumed)
    cfg = ModelConfig(**store.read(end)["config"]["model"])
    reached, expected = GPTModel(cfg), GPTModel(cfg)
    sharded.load_model(store.checkpoint_paths(today / "checkpoints")[-1], reached)
    sharded.load_model(end, expected)  # format 2 itself, read by today's gptdist
    assert same_weights(reached.state_dict(), expected.state_dict())
