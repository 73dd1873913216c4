"""FSDP2 (train.parallel: fsdp) with real torchrun and gloo on CPU: the same training as DDP, checkpoints
that move between parallelisms and world sizes, sharded checkpoints, a killed worker restarted."""

import json
import shutil
import subprocess

import pytest
from inputs import metrics_rows, newest_model, same_weights, train_args
from processes import REPO, kill_a_worker_once_saved, run_main, start_restartable, torchrun_command, train
from stand_ins import tmpfs

from gptdist import config
from gptdist.checkpoint import sharded, store
from gptdist.model.gpt import GPTModel

pytestmark = pytest.mark.slow

# fp32 and no dropout, so that ddp and fsdp compute the same numbers; two micro-batches per step,
# so that the gradient accumulation without reduction is part of it.
RUN = ("train.max_steps=8", "train.grad_accum_steps=2", "checkpoint.interval=4", "checkpoint.keep=10",
       "eval.interval=4", "logging.interval=2", "model.drop_rate=0.0", "model.emb_dim=64",
       "train.precision=fp32")


def close(a: dict, b: dict, tolerance=1e-5) -> bool:
    return a.keys() == b.keys() and all((a[k] - b[k]).abs().max() <= tolerance for k in a)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, verdict_data):
    """The same 8 steps on 2 processes: ddp, fsdp writing one file, and fsdp with its default, sharded
    checkpoints."""
    root = tmp_path_factory.mktemp("fsdp")
    train(2, *train_args(verdict_data, root / "ddp", *RUN))
    train(2, *train_args(verdict_data, root / "fsdp", *RUN, "train.parallel=fsdp",
                         "checkpoint.sharded=false"))
    train(2, *train_args(verdict_data, root / "sharded", *RUN, "train.parallel=fsdp"))
    return root


def optimizer_moments(out):
    state = store.read(store.checkpoint_paths(out / "checkpoints")[-1])["optimizer"]["state"]
    return {f"{name}.{key}": value for name, values in state.items() for key, value in values.items()}


def test_fsdp_run_ends_on_the_ddp_runs_weights_and_moments(runs):
    assert close(newest_model(runs / "fsdp"), newest_model(runs / "ddp"))
    assert close(optimizer_moments(runs / "fsdp"), optimizer_moments(runs / "ddp"))
    norms = [[r["grad_norm"] for r in metrics_rows(runs / kind) if "grad_norm" in r]
             for kind in ("ddp", "fsdp")]
    assert norms[0] == pytest.approx(norms[1], rel=1e-4)  # clipped by the norm of the whole gradient


@pytest.mark.parametrize("source, nproc, parallel",
                         [("ddp", 2, "fsdp"), ("fsdp", 2, "ddp"), ("fsdp", 1, "fsdp")],
                         ids=["ddp-to-fsdp", "fsdp-to-ddp", "fsdp-2-to-1-process"])
def test_a_checkpoint_resumes_under_the_other_parallelism_and_world_size(tmp_path, verdict_data, runs, source,
                                                                       nproc, parallel):
    middle = runs / source / "checkpoints" / "step_00000004.pt"
    out = tmp_path / "resumed"
    train(nproc, *train_args(verdict_data, out, *RUN, f"train.parallel={parallel}",
                             "checkpoint.sharded=false", f"checkpoint.resume={middle}"))
    resume = next(r for r in metrics_rows(out) if r.get("event") == "resume")
    assert resume["step"] == 4 and resume["world_size"] == nproc
    # the same data order from step 5 on, and the same updates: the uninterrupted run's weights
    assert close(newest_model(out), newest_model(runs / source))


def test_sharded_checkpoints_are_checksummed_folders_of_the_same_state(runs):
    folders = store.checkpoint_paths(runs / "sharded" / "checkpoints")
    assert [f.name for f in folders] == ["step_00000004", "step_00000008"]
    assert all(f.is_dir() for f in folders)
    checksums = json.loads((folders[-1] / sharded.CHECKSUMS).read_text())
    assert set(checksums) == {"__0_0.distcp", "__1_0.distcp", ".metadata", "states.pt"}
    assert not list((runs / "sharded" / "checkpoints").glob(".*"))  # no temporary left
    rows = [r for r in metrics_rows(runs / "sharded") if r.get("event") == "checkpoint"]
    assert [r["step"] for r in rows] == [4, 8] and all(r["bytes"] > 0 for r in rows)

    payload = store.read(folders[-1])
    assert payload["progress"]["step"] == 8 and "model" not in payload and len(payload["rng"]["ranks"]) == 2
    model = GPTModel(config.build({"model": payload["config"]["model"]}).model)
    sharded.load_model(folders[-1], model)
    assert close(model.state_dict(), newest_model(runs / "fsdp"), tolerance=0)

    generated = run_main("gptdist.generate", "--checkpoint", runs / "sharded", "--max-new-tokens", "3")
    assert generated.returncode == 0, generated.stderr[-2000:]
    assert "Every effort moves you" in generated.stdout


@pytest.mark.parametrize("nproc, parallel", [(1, "fsdp"), (2, "ddp")],
                         ids=["fsdp-1-process", "ddp-2-processes"])
def test_a_sharded_checkpoint_resumes_on_another_world_size(tmp_path, verdict_data, runs, nproc, parallel):
    middle = runs / "sharded" / "checkpoints" / "step_00000004"
    out = tmp_path / "resumed"
    train(nproc, *train_args(verdict_data, out, *RUN, f"train.parallel={parallel}",
                             "checkpoint.sharded=true", f"checkpoint.resume={middle}"))
    assert close(newest_model(runs / "fsdp"), _sharded_model(out))


def _sharded_model(out):
    newest = store.checkpoint_paths(out / "checkpoints")[-1]
    model = GPTModel(config.build({"model": store.read(newest)["config"]["model"]}).model)
    sharded.load_model(newest, model)
    return model.state_dict()


def test_a_damaged_shard_is_found_and_the_previous_checkpoint_is_used(tmp_path, runs):
    folder = tmp_path / "checkpoints"
    for step in ("step_00000004", "step_00000008"):
        (folder / step).mkdir(parents=True)
        for file in (runs / "sharded" / "checkpoints" / step).iterdir():
            (folder / step / file.name).write_bytes(file.read_bytes())
    shard = folder / "step_00000008" / "__1_0.distcp"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    warnings = []
    payload = store.newest_good(folder, report=warnings.append)
    assert payload["progress"]["step"] == 4
    assert warnings == [f"warning: checkpoint {folder / 'step_00000008'} fails its checksum: __1_0.distcp is "
                        "damaged; trying the previous checkpoint"]


@pytest.mark.parametrize("sharded", [False, True], ids=["one-file", "sharded"])
def test_killed_fsdp_worker_is_restarted_and_ends_on_the_uninterrupted_weights(tmp_path, verdict_data, runs,
                                                                               sharded):
    out = tmp_path / "run"
    overrides = ["train.parallel=fsdp", f"checkpoint.sharded={str(sharded).lower()}"]
    first = out / "checkpoints" / ("step_00000004" if sharded else "step_00000004.pt")
    agent = start_restartable(2, *train_args(verdict_data, out, *RUN, *overrides), logs=tmp_path / "logs")
    kill_a_worker_once_saved(agent, first, tmp_path / "logs")
    final = _sharded_model(out) if sharded else newest_model(out)
    assert same_weights(final, newest_model(runs / "fsdp"))


def test_a_full_disk_during_a_sharded_write_leaves_no_partial_folder(tmp_path, verdict_data):
    disk = tmp_path / "disk"
    tmpfs(disk, "100m")
    try:
        out = disk / "run"
        sharded = ("train.parallel=fsdp", "checkpoint.sharded=true", "eval.at_start=false")
        train(2, *train_args(verdict_data, out, *RUN, *sharded, "train.max_steps=1"))
        free = shutil.disk_usage(disk).free
        (disk / "filler").write_bytes(b"\0" * (free - 256 * 1024))  # room for logs, not a checkpoint
        command = torchrun_command(2, *train_args(verdict_data, out, *RUN, *sharded, "train.max_steps=2"))
        result = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=600)
        assert result.returncode != 0
        assert "cannot write checkpoint" in result.stderr, result.stderr[-3000:]
        assert "step_00000002" in result.stderr
        folder = out / "checkpoints"
        assert [p.name for p in folder.iterdir()] == ["step_00000001"]  # the failed write's folder is gone
        assert store.read(folder / "step_00000001")["progress"]["step"] == 1
    finally:
        subprocess.run(["umount", str(disk)])
