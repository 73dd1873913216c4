import json
import subprocess

import pytest
import torch
from inputs import TINY
from processes import REPO, run_main
from stand_ins import make_unwritable

from gptdist import distributed
from gptdist.checkpoint import store
from gptdist.checkpoint.checkpointer import Checkpointer
from gptdist.checkpoint.snapshot import HostSnapshot
from gptdist.errors import UserError

SOLO = distributed.Dist(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))


class Box:
    def __init__(self, value):
        self.value = value

    def state_dict(self):
        return {"value": self.value}

    def load_state_dict(self, state):
        self.value = state["value"]


def save_steps(folder, steps, keep=10, background=True):
    saver = Checkpointer(folder, keep, SOLO, background)
    for step in steps:
        saver.save(step, {"box": Box(torch.full((3,), float(step)))}, {"model": {}}, {"step": step})
    saver.close()  # the last write completes
    return saver


@pytest.mark.parametrize("background", [True, False], ids=["async", "blocking"])
def test_saves_are_weights_only_loadable_and_pruned(tmp_path, background):
    save_steps(tmp_path, [1, 2, 3, 4], keep=2, background=background)
    paths = store.checkpoint_paths(tmp_path)
    assert [p.name for p in paths] == ["step_00000003.pt", "step_00000004.pt"]
    raw = torch.load(paths[-1], weights_only=True)
    assert raw["format"] == store.FORMAT and "checksum" in raw
    assert torch.equal(raw["box"]["value"], torch.full((3,), 4.0))
    assert not list(tmp_path.glob(".*tmp"))


def test_damaged_newest_checkpoint_falls_back_to_the_previous(tmp_path):
    save_steps(tmp_path, [1, 2])
    newest = tmp_path / "step_00000002.pt"
    newest.write_bytes(newest.read_bytes()[:-100])  # truncated
    reports = []
    payload = store.newest_good(tmp_path, report=reports.append)
    assert payload["path"].endswith("step_00000001.pt")
    assert "step_00000002.pt cannot be loaded" in reports[0]


def test_altered_content_fails_the_checksum(tmp_path):
    save_steps(tmp_path, [1])
    path = tmp_path / "step_00000001.pt"
    payload = torch.load(path, weights_only=True)
    payload["box"]["value"][0] = 99.0
    torch.save(payload, path)
    with pytest.raises(UserError, match="fails its checksum"):
        store.read(path)


def test_pickled_classes_are_never_loaded(tmp_path):
    path = tmp_path / "step_00000001.pt"
    torch.save({"format": store.FORMAT, "evil": Box(1)}, path)
    with pytest.raises(UserError, match="cannot be loaded"):
        store.read(path)


def test_a_background_save_writes_the_state_of_its_step_not_a_later_one(tmp_path):
    box = Box(torch.zeros(1000))
    saver = Checkpointer(tmp_path, 3, SOLO)
    assert saver.save(1, {"box": box}, {"model": {}}, {"step": 1}) is None  # returns before the write
    box.value += 1  # the next step changes the state in place while the write goes on
    saved = saver.wait()
    assert saved.step == 1 and saved.bytes == (tmp_path / "step_00000001.pt").stat().st_size
    assert torch.equal(store.read(saved.path)["box"]["value"], torch.zeros(1000))
    saver.save(2, {"box": box}, {"model": {}}, {"step": 2})
    saver.close()
    assert torch.equal(store.read(tmp_path / "step_00000002.pt")["box"]["value"], torch.ones(1000))


def test_the_snapshot_reuses_its_buffers_and_copies_a_tied_weight_once():
    weight = torch.randn(8, 4)
    state = {"tok_emb.weight": weight, "out_head.weight": weight, "step": torch.tensor(3.0), "lr": 0.1}
    snapshot = HostSnapshot(torch.device("cpu"))
    first = snapshot.take(state)
    assert first["tok_emb.weight"] is first["out_head.weight"] and first["lr"] == 0.1
    assert first["tok_emb.weight"] is not weight and torch.equal(first["tok_emb.weight"], weight)
    assert snapshot.bytes == (32 + 1) * 4
    second = snapshot.take(state)
    assert second["tok_emb.weight"] is first["tok_emb.weight"]  # the same host memory, save after save


def test_a_failed_background_write_is_one_line_and_keeps_the_older_checkpoints(tmp_path):
    save_steps(tmp_path, [1])
    saver = Checkpointer(tmp_path, 1, SOLO)
    undo = make_unwritable(tmp_path)
    try:
        saver.save(2, {"box": Box(torch.ones(3))}, {"model": {}}, {"step": 2})
        with pytest.raises(UserError, match=r"cannot write checkpoint .*step_00000002.pt: (Permission denied|"
                                            r"Operation not permitted); older checkpoints .* are intact"):
            saver.wait()
    finally:
        subprocess.run(undo, check=True)
    assert [p.name for p in tmp_path.iterdir()] == ["step_00000001.pt"]
    store.read(tmp_path / "step_00000001.pt")


def test_a_half_written_file_of_a_killed_run_is_removed(tmp_path):
    save_steps(tmp_path, [1])
    (tmp_path / ".step_00000002.pt.tmp").write_bytes(b"PK\x03\x04half")  # torch.save's zip, cut short
    (tmp_path / ".step_00000003.pt.tmp").write_bytes(b"")  # killed before its first byte
    half_sharded = tmp_path / ".step_00000004.tmp"
    half_sharded.mkdir()
    (half_sharded / "__0_0.distcp").write_bytes(b"shard")
    (half_sharded / ".metadata.tmp").write_bytes(b"index")
    Checkpointer(tmp_path, 3, SOLO).close()
    assert [p.name for p in tmp_path.iterdir()] == ["step_00000001.pt"]


def test_pruning_and_cleanup_delete_only_what_a_save_wrote(tmp_path):
    """A file or folder with a checkpoint's name (or a temporary's) that no save wrote, or a link, is kept."""
    precious = tmp_path.parent / f"{tmp_path.name}-precious.txt"
    precious.write_text("years of work")
    users = {"step_00000000/notes.txt": b"my notes", "step_00000001.pt": b"not a torch file",
             ".step_00000009.tmp/thesis.tex": b"draft", ".step_00000008.pt.tmp": b"my own temp"}
    for name, content in users.items():
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(content)
    (tmp_path / "step_00000000.pt").symlink_to(precious)
    save_steps(tmp_path, [2, 3, 4], keep=1)
    for name, content in users.items():
        assert (tmp_path / name).read_bytes() == content, name
    assert (tmp_path / "step_00000000.pt").is_symlink() and precious.read_text() == "years of work"
    own = [p.name for p in store.checkpoint_paths(tmp_path) if p.name.endswith(".pt") and not p.is_symlink()]
    assert own == ["step_00000001.pt", "step_00000004.pt"]  # the user's file, and the newest save alone


def test_bench_checkpoint_reports_what_a_blocking_and_a_background_save_cost(verdict_data):
    result = run_main("gptdist.bench", "checkpoint", "--config", REPO / "configs" / "verdict-tiny.yaml",
                      "--rounds", "2", f"data.dir={verdict_data}", *TINY)
    assert result.returncode == 0, result.stderr[-2000:]
    row = json.loads(result.stdout.strip().splitlines()[-1])
    assert 0 < row["stall_s"] < row["blocking_s"] and row["write_s"] > 0
    # the snapshot is the state the file holds, once: no second copy for serialisation
    assert 0.9 * row["bytes"] < row["snapshot_host_bytes"] <= row["bytes"]
    (rank,) = row["ranks"]  # and what a second run adds at its peak, starting afresh and resuming
    assert rank["fresh_start_peak_added_mb"] > 0 and rank["resume_peak_added_mb"] > 0
    excess = (rank["resume_peak_added_mb"] - rank["fresh_start_peak_added_mb"]) * 2**20 / row["bytes"]
    assert row["resume_over_fresh_of_checkpoint"] == [pytest.approx(excess, abs=1e-3)]
