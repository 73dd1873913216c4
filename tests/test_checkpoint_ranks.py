"""Checkpoints and models that scale with the ranks, with real torchrun and gloo on CPU: under ddp only
rank 0 holds a save's host copy; at a resume only rank 0 opens the checkpoint file, the others
receive its state over the process group, which adds little to their memory; model.init_from is not
read again at a resume, and under fsdp only rank 0 reads it; a save that waits for the previous
write says so; an fsdp model is never whole on any rank; 4 processes resume bit for bit, under ddp
and under fsdp from shards and from one file."""

import json
import shutil
import subprocess

import pytest
from inputs import metrics_rows, newest_model, same_weights, train_args
from processes import PYTHON, REPO, hooks_env, start, torchrun_command, train, wait_for

from gptdist.checkpoint import pretrained, sharded, store

pytestmark = pytest.mark.slow

# a state of ~26M parameters (two 50304 x 256 matrices: the embedding and the untied head), ~300 MB
# with AdamW's moments, against little compute: what a save adds to a rank's memory stands out
BIG_STATE = ("model.emb_dim=256", "model.n_heads=2", "model.n_layers=1", "model.context_length=16",
             "train.micro_batch_size=1", "model.drop_rate=0.0")


def test_under_ddp_a_save_copies_the_state_on_rank_0_only_and_a_resume_adds_little_elsewhere(verdict_data):
    command = [PYTHON, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=4", "-m",
               "gptdist.bench", "checkpoint", "--config", REPO / "configs" / "verdict-tiny.yaml",
               "--rounds", "1", f"data.dir={verdict_data}", *BIG_STATE]
    result = subprocess.run(list(map(str, command)), capture_output=True, text=True, cwd=REPO,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    size_mb = report["bytes"] / 2**20
    ranks = {row["rank"]: row for row in report["ranks"]}
    assert sorted(ranks) == [0, 1, 2, 3] and size_mb > 250
    assert 0.9 * size_mb < ranks[0]["snapshot_mb"] <= size_mb, ranks[0]  # the state, once
    for rank in (1, 2, 3):  # no snapshot, no buffers: under 15% of the checkpoint
        assert ranks[rank]["snapshot_mb"] == 0, ranks[rank]
        assert ranks[rank]["host_added_by_save_mb"] < 0.15 * size_mb, (rank, ranks[rank], size_mb)
        assert ranks[rank]["snapshot_s"] is None and ranks[rank]["write_s"] is None
    assert ranks[0]["snapshot_s"] > 0 and ranks[0]["write_s"] > 0 and ranks[0]["waited_s"] >= 0
    # A second run beside it, to two steps, starting afresh and resuming the newest checkpoint: what each
    # adds to the host memory of ranks 1-3 at its peak. Reading, hashing and holding the file would add all
    # of it, torch's broadcast_from_rank0 0.9 of it; one tensor at a time crosses over here (measured +50-81
    # MB of 304, the heap's luck).
    for rank in (1, 2, 3):
        resumed, fresh = ranks[rank]["resume_peak_added_mb"], ranks[rank]["fresh_start_peak_added_mb"]
        assert resumed - fresh < 0.5 * size_mb, (rank, ranks[rank], size_mb)


def no_dropout(data, out, *overrides):
    """train_args without dropout: runs that must reach the same weights in other ways."""
    return train_args(data, out, "model.drop_rate=0.0", *overrides)


def test_ranks_other_than_0_resume_without_opening_the_checkpoint(tmp_path, verdict_data):
    steps = ("checkpoint.interval=2", "checkpoint.keep=10", "eval.interval=100")
    out, whole = tmp_path / "run", tmp_path / "whole"
    train(2, *no_dropout(verdict_data, out, "train.max_steps=2", *steps))
    opened = tmp_path / "opened"
    guard = hooks_env(unreadable=out / "checkpoints", unreadable_ranks="1", opened=opened)
    resumed = train(2, *no_dropout(verdict_data, out, "train.max_steps=4", *steps), env=guard)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stdout
    # rank 0 read the checkpoint (the guard saw it); rank 1, which could not, never tried
    assert "step_00000002.pt" in (opened / "rank-0").read_text()
    assert not (opened / "rank-1").exists()
    train(2, *no_dropout(verdict_data, whole, "train.max_steps=4", *steps))
    assert same_weights(newest_model(out), newest_model(whole))  # what rank 1 received is rank 0's


def test_model_init_from_is_not_read_again_at_a_resume(tmp_path, verdict_data):
    source, out = tmp_path / "source", tmp_path / "run"
    train(1, *no_dropout(verdict_data, source, "train.max_steps=2"))
    first = train(2, *no_dropout(verdict_data, out, "train.max_steps=2", "checkpoint.interval=2",
                                 f"model.init_from={source}"))
    assert first.returncode == 0, first.stderr[-3000:]
    shutil.rmtree(source)  # its architecture is recorded in the run's checkpoints
    resumed = train(2, *no_dropout(verdict_data, out, "train.max_steps=4", "checkpoint.interval=2",
                                   f"model.init_from={source}"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stdout and "initialised from" not in resumed.stdout


def test_under_fsdp_model_init_from_is_read_by_rank_0_alone(tmp_path, verdict_data):
    source, opened = tmp_path / "source", tmp_path / "opened"
    train(1, *no_dropout(verdict_data, source, "train.max_steps=2"))
    guard = hooks_env(unreadable=source, unreadable_ranks="1", opened=opened)
    steps = ("train.max_steps=2", "checkpoint.interval=2", "eval.interval=100", f"model.init_from={source}")
    ddp = train(2, *no_dropout(verdict_data, tmp_path / "ddp", *steps))
    fsdp = train(2, *no_dropout(verdict_data, tmp_path / "fsdp", *steps, "train.parallel=fsdp",
                                "checkpoint.sharded=false"), env=guard)
    for result in (ddp, fsdp):
        assert result.returncode == 0, result.stderr[-3000:]
        assert "initialised from the weights of" in result.stdout
    # rank 0 read the source (the guard saw it); rank 1, which could not, never tried: it took its
    # shards from rank 0, and both runs started from the source's weights and trained alike
    assert "step_00000002.pt" in (opened / "rank-0").read_text()
    assert not (opened / "rank-1").exists()
    under_ddp, under_fsdp = newest_model(tmp_path / "ddp"), newest_model(tmp_path / "fsdp")
    assert under_ddp.keys() == under_fsdp.keys()
    assert all((under_ddp[name] - under_fsdp[name]).abs().max() <= 1e-5 for name in under_ddp)
    assert not same_weights(under_ddp, newest_model(source))  # trained on from there


def test_a_save_that_waits_for_the_previous_write_says_so_once(tmp_path, verdict_data):
    out, gate = tmp_path / "run", tmp_path / "gate"
    args = no_dropout(verdict_data, out, "train.max_steps=4", "checkpoint.interval=1", "checkpoint.keep=10",
                      "logging.interval=1")
    job = start(torchrun_command(2, *args), env=hooks_env(gate=gate), stderr=subprocess.STDOUT)
    # step 1's write is held until step 2's save has begun to wait for it
    wait_for((gate / "step_00000001.pt.awaited").exists, job)
    (gate / "all").touch()
    output, _ = job.communicate(timeout=600)
    assert job.returncode == 0, output[-3000:]
    assert output.count("waited") == 1 and "checkpoint.interval 1" in output, output
    events = [row for row in metrics_rows(out) if row.get("event") == "checkpoint"]
    assert [event["step"] for event in events] == [1, 2, 3, 4]
    assert all(event["waited_s"] + event["snapshot_s"] <= event["stall_s"] for event in events), events
    assert 0 < events[1]["waited_s"] <= events[0]["write_s"], events


def test_an_fsdp_rank_never_holds_the_whole_model(tmp_path, verdict_data):
    # 77M parameters (307 MB): two 50304 x 512 matrices and 8 blocks of 512
    shape = ("model.emb_dim=512", "model.n_heads=2", "model.n_layers=8", "model.context_length=16",
             "train.micro_batch_size=1", "train.max_steps=1", "eval.at_start=false", "eval.interval=100")
    peaks = {}
    for parallel in ("ddp", "fsdp"):
        out = tmp_path / parallel
        result = train(4, *no_dropout(verdict_data, out, f"train.parallel={parallel}", *shape))
        assert result.returncode == 0, result.stderr[-3000:]
        start = next(row for row in metrics_rows(out) if row.get("event") == "start")
        peaks[parallel] = start["host_peak_mb"]
    model_mb = 76.7e6 * 4 / 2**20
    print(f"host peaks at start, MB: {peaks}; the model's weights {model_mb:.0f} MB")
    # ddp: the whole model and its gradient buckets; fsdp: a quarter of it and one module at a time
    for rank in range(4):
        assert peaks["fsdp"][rank] < peaks["ddp"][rank] - 0.8 * model_mb, peaks


# DDP reduces a run's first backward in one bucket and lays its buckets out anew from the order its
# gradients came in; every run lays them out before its first step (parallelize.py), or over 4 ranks
# a resume's first step would sum in another order than the uninterrupted run's step there.
@pytest.mark.parametrize("parallel, form", [("ddp", "file"), ("fsdp", "sharded"), ("fsdp", "file")])
def test_four_processes_resume_bit_for_bit(tmp_path, verdict_data, parallel, form):
    run_of = ("checkpoint.interval=2", "checkpoint.keep=5", "eval.interval=100", f"train.parallel={parallel}",
              f"checkpoint.sharded={str(form == 'sharded').lower()}")
    whole, halves = tmp_path / "whole", tmp_path / "halves"
    for out, steps in ((whole, 4), (halves, 2), (halves, 4)):  # the third resumes the second
        result = train(4, *no_dropout(verdict_data, out, f"train.max_steps={steps}", *run_of))
        assert result.returncode == 0, result.stderr[-3000:]
    assert "resumed from" in result.stdout
    ends = [store.checkpoint_paths(out / "checkpoints")[-1] for out in (whole, halves)]
    assert all(sharded.is_sharded(end) == (form == "sharded") for end in ends)
    reached = [pretrained.from_checkpoint(end)[1] for end in ends]
    assert same_weights(*reached)
