import pytest
import torch
from conftest import run_main, train_args

from gptdist.model.sampling import generate
from gptdist.tokenizer import EOT_TOKEN


class Scripted(torch.nn.Module):
    """Always predicts token `favourite` most strongly, then `second`."""

    def __init__(self, favourite, second=5, vocab=50257):
        super().__init__()
        self.favourite, self.second, self.vocab = favourite, second, vocab

    def forward(self, idx):
        logits = torch.zeros(idx.shape[0], idx.shape[1], self.vocab)
        logits[..., self.favourite] = 10.0
        logits[..., self.second] = 9.0
        return logits


def test_generation_stops_at_end_of_text():
    out = generate(Scripted(EOT_TOKEN), torch.tensor([[1, 2, 3]]), max_new_tokens=10, context_size=8)
    assert out.tolist() == [[1, 2, 3]]


def test_greedy_when_temperature_is_zero_or_top_k_is_one():
    start = torch.tensor([[1]])
    assert generate(Scripted(7), start, 4, 8, temperature=0.0).tolist() == [[1, 7, 7, 7, 7]]
    assert generate(Scripted(7), start, 4, 8, temperature=5.0, top_k=1).tolist() == [[1, 7, 7, 7, 7]]


def test_top_k_keeps_only_the_k_likeliest():
    generator = torch.Generator().manual_seed(0)
    out = generate(Scripted(7), torch.tensor([[1]]), 200, 8, temperature=100.0, top_k=2, generator=generator)
    assert set(out[0, 1:].tolist()) == {7, 5}


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, verdict_data):
    out = tmp_path_factory.mktemp("gen") / "run"
    result = run_main("gptdist.train", *train_args(verdict_data, out, "train.max_steps=20"))
    assert result.returncode == 0, result.stderr[-2000:]
    return out


def test_same_seed_same_text(trained_run):
    args = ["--checkpoint", trained_run, "--max-new-tokens", "15", "--temperature", "1.5", "--top-k", "0"]
    first = run_main("gptdist.generate", *args, "--seed", "1")
    again = run_main("gptdist.generate", *args, "--seed", "1")
    other = run_main("gptdist.generate", *args, "--seed", "2")
    assert first.returncode == 0, first.stderr
    assert first.stdout == again.stdout != other.stdout
    assert first.stdout.startswith("Every effort moves you")


def test_checkpoint_file_and_run_folder_give_the_same_greedy_text(trained_run):
    newest = sorted((trained_run / "checkpoints").iterdir())[-1]
    by_folder = run_main("gptdist.generate", "--checkpoint", trained_run, "--temperature", "0")
    by_file = run_main("gptdist.generate", "--checkpoint", newest, "--temperature", "0")
    assert by_folder.returncode == 0 and by_folder.stdout == by_file.stdout


def test_missing_checkpoint_is_one_clear_line(tmp_path):
    result = run_main("gptdist.generate", "--checkpoint", tmp_path / "nowhere")
    assert result.returncode == 2
    nowhere = tmp_path / "nowhere"
    assert result.stderr.strip() == f"gptdist.generate: error: checkpoint {nowhere} does not exist"
    (tmp_path / "empty").mkdir()
    result = run_main("gptdist.generate", "--checkpoint", tmp_path / "empty")
    assert result.returncode == 2 and "holds no checkpoints" in result.stderr
