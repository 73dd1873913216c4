"""Generation: the book's sampling rules, the KV cache giving the recomputed tokens under every model option,
batches of padded prompts, a context that fills up, a compiled step, and the command line."""

from types import SimpleNamespace

import pytest
import torch
from inputs import train_args
from processes import run_main

from gptdist.config import ModelConfig
from gptdist.model.gpt import GPTModel
from gptdist.model.sampling import generate
from gptdist.tokenizer import EOT_TOKEN


class Scripted(torch.nn.Module):
    """Always predicts token `favourite` most strongly, then `second` (row r of a batch: favourites[r])."""

    def __init__(self, *favourites, second=5, vocab=50257):
        super().__init__()
        self.favourites, self.second, self.vocab = favourites, second, vocab
        self.cfg = SimpleNamespace(context_length=8, n_layers=0, vocab_size=vocab)
        self.anchor = torch.nn.Parameter(torch.zeros(()))  # where generation finds the device

    def forward(self, idx, cache=None):
        logits = torch.zeros(idx.shape[0], idx.shape[1], self.vocab)
        logits[..., self.second] = 9.0
        for row in range(idx.shape[0]):
            logits[row, :, self.favourites[row % len(self.favourites)]] = 10.0
        return logits


def test_generation_stops_at_end_of_text():
    assert generate(Scripted(EOT_TOKEN), [[1, 2, 3]], max_new_tokens=10) == [[]]


def test_rows_of_a_batch_end_each_at_its_own_end_of_text():
    assert generate(Scripted(EOT_TOKEN, 7), [[1, 2, 3], [4]], max_new_tokens=4) == [[], [7, 7, 7, 7]]


def test_greedy_when_temperature_is_zero_or_top_k_is_one():
    assert generate(Scripted(7), [[1]], 4, temperature=0.0) == [[7, 7, 7, 7]]
    assert generate(Scripted(7), [[1]], 4, temperature=5.0, top_k=1) == [[7, 7, 7, 7]]


def test_top_k_keeps_only_the_k_likeliest():
    generator = torch.Generator().manual_seed(0)
    out = generate(Scripted(7), [[1]], 200, temperature=100.0, top_k=2, generator=generator)
    assert set(out[0]) == {7, 5}


# Every model option alone and all together (each changes what the cache must reproduce).
MODERN = dict(positions="rotary", norm="rmsnorm", qk_norm=True, activation="relu2", logit_softcap=5.0)
VARIANTS = {"gpt2": {}, "rotary": dict(positions="rotary"), "rmsnorm": dict(norm="rmsnorm"),
            "qk-norm": dict(qk_norm=True), "relu2": dict(activation="relu2"),
            "soft-cap": dict(logit_softcap=5.0),
            "tied-sliced": dict(tie_embeddings=True, vocab_padding="slice", vocab_multiple=128),
            "no-bias": dict(bias=False, qkv_bias=False), "all": dict(MODERN, tie_embeddings=True, bias=False)}


def random_model(context_length=32, seed=0, **options) -> GPTModel:
    """A small GPTModel with every weight drawn wide (N(0, 0.5)): its greedy tokens are far from ties."""
    torch.manual_seed(seed)
    cfg = ModelConfig(emb_dim=32, n_heads=4, n_layers=2, context_length=context_length, drop_rate=0.0,
                      **options)
    model = GPTModel(cfg).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0, 0.5)
    return model


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_cache_gives_the_recomputed_greedy_tokens_and_padded_rows_their_own(variant):
    model = random_model(**VARIANTS[variant])
    prompts = [[464, 3290, 318, 257, 1332], [40], [11, 50256, 17]]
    alone = [generate(model, [prompt], 25, eos_id=None, cache=False)[0] for prompt in prompts]  # 30 <= 32
    assert [generate(model, [prompt], 25, eos_id=None)[0] for prompt in prompts] == alone
    assert generate(model, prompts, 25, eos_id=None) == alone  # left-padded into one batch
    assert len(set(map(tuple, alone))) == 3  # three different continuations: the test can tell rows apart


@pytest.mark.parametrize("variant", ["gpt2", "all"])
def test_a_full_context_slides_and_the_cache_is_rebuilt_from_the_kept_tokens(variant):
    """Past the context, each token is the model's greedy choice after the window the cache holds: the last
    three quarters of the context at each slide, growing until full again."""
    model, context = random_model(**VARIANTS[variant]), 32
    prompt = list(range(100, 140))  # longer than the context: its last 32 tokens are the first window
    out = generate(model, [prompt], 60, eos_id=None)[0]
    sequence, start = list(prompt), len(prompt) - context
    for token in out:
        if len(sequence) - start > context:
            start = len(sequence) - (context - context // 4)
        with torch.no_grad():
            assert model(torch.tensor([sequence[start:]]))[0, -1].argmax().item() == token
        sequence.append(token)
    assert start > len(prompt)  # it slid more than once


def test_a_compiled_step_gives_the_eager_tokens_and_compiles_once():
    from torch._dynamo.utils import counters

    model = random_model(**VARIANTS["all"])
    prompts = [[464, 3290, 318], [40, 1000, 2000, 3000, 11]]
    counters.clear()
    compiled = generate(model, prompts, 40, eos_id=None, step=torch.compile(model))  # slides too: 45 > 32
    assert compiled == generate(model, prompts, 40, eos_id=None)
    assert counters["stats"]["unique_graphs"] == 1


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


def test_stream_prompt_file_samples_and_no_cache_on_the_command_line(trained_run, tmp_path):
    greedy = ["--checkpoint", trained_run, "--temperature", "0", "--max-new-tokens", "12"]
    plain = run_main("gptdist.generate", *greedy)
    streamed = run_main("gptdist.generate", *greedy, "--stream")
    recomputed = run_main("gptdist.generate", *greedy, "--no-cache")
    assert plain.returncode == streamed.returncode == recomputed.returncode == 0, plain.stderr
    assert streamed.stdout == plain.stdout == recomputed.stdout
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("I had always thought\n\nJack Gisburn\n")  # a blank line is not a prompt
    sampled = run_main("gptdist.generate", "--checkpoint", trained_run, "--prompt-file", prompts,
                       "--num-samples", "2", "--batch-size", "3", "--max-new-tokens", "8")
    assert sampled.returncode == 0, sampled.stderr
    headers = [line for line in sampled.stdout.splitlines() if line.startswith("==> ")]
    assert headers == [f"==> prompt {p}, sample {s} <==" for p in (1, 2) for s in (1, 2)]
    texts = [text.split("\n", 1)[1] for text in sampled.stdout.split("==> ")[1:]]
    assert [text.startswith("I had always thought") for text in texts] == [True, True, False, False]
    assert all(text.startswith("Jack Gisburn") for text in texts[2:])
    by_prompt = run_main("gptdist.generate", *greedy, "--prompt-file", prompts, "--no-cache")
    together = run_main("gptdist.generate", *greedy, "--prompt-file", prompts)
    assert by_prompt.returncode == 0 and by_prompt.stdout == together.stdout  # padded rows: the same text


@pytest.mark.parametrize("flags, message", [
    (["--stream", "--num-samples", "2"], "--stream prints one sequence; this asks for 2 (--prompt-file, "
                                         "--num-samples)"),
    (["--compile", "--no-cache"], "--compile compiles the cached one-token step; --no-cache has none"),
])
def test_generation_flags_that_cannot_go_together_are_one_line(trained_run, flags, message):
    result = run_main("gptdist.generate", "--checkpoint", trained_run, *flags)
    assert result.returncode == 2 and result.stderr.strip() == f"gptdist.generate: error: {message}"


def test_an_empty_prompt_file_is_one_line(trained_run, tmp_path):
    (tmp_path / "prompts.txt").write_text("\n \n")
    prompts = tmp_path / "prompts.txt"
    result = run_main("gptdist.generate", "--checkpoint", trained_run, "--prompt-file", prompts)
    assert result.returncode == 2
    assert "holds no prompt (one per line)" in result.stderr and len(result.stderr.splitlines()) == 1
