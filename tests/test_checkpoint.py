import pytest
import torch

from gptdist import checkpoint, distributed
from gptdist.errors import UserError

SOLO = distributed.Dist(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))


class Box:
    def __init__(self, value):
        self.value = value

    def state_dict(self):
        return {"value": self.value}

    def load_state_dict(self, state):
        self.value = state["value"]


def save_steps(folder, steps, keep=10):
    saver = checkpoint.Checkpointer(folder, keep, SOLO)
    for step in steps:
        saver.save(step, {"box": Box(torch.full((3,), float(step)))}, {"model": {}}, {"step": step})
    return saver


def test_saves_are_weights_only_loadable_and_pruned(tmp_path):
    save_steps(tmp_path, [1, 2, 3, 4], keep=2)
    paths = checkpoint.checkpoint_paths(tmp_path)
    assert [p.name for p in paths] == ["step_00000003.pt", "step_00000004.pt"]
    raw = torch.load(paths[-1], weights_only=True)
    assert raw["format"] == checkpoint.FORMAT and "checksum" in raw
    assert torch.equal(raw["box"]["value"], torch.full((3,), 4.0))
    assert not list(tmp_path.glob(".*tmp"))


def test_damaged_newest_checkpoint_falls_back_to_the_previous(tmp_path):
    save_steps(tmp_path, [1, 2])
    newest = tmp_path / "step_00000002.pt"
    newest.write_bytes(newest.read_bytes()[:-100])  # truncated
    reports = []
    payload = checkpoint.newest_good(tmp_path, report=reports.append)
    assert payload["path"].endswith("step_00000001.pt")
    assert "step_00000002.pt cannot be loaded" in reports[0]


def test_altered_content_fails_the_checksum(tmp_path):
    save_steps(tmp_path, [1])
    path = tmp_path / "step_00000001.pt"
    payload = torch.load(path, weights_only=True)
    payload["box"]["value"][0] = 99.0
    torch.save(payload, path)
    with pytest.raises(UserError, match="fails its checksum"):
        checkpoint.read(path)


def test_pickled_classes_are_never_loaded(tmp_path):
    path = tmp_path / "step_00000001.pt"
    torch.save({"format": checkpoint.FORMAT, "evil": Box(1)}, path)
    with pytest.raises(UserError, match="cannot be loaded"):
        checkpoint.read(path)
