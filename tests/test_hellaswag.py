"""HellaSwag: scores equal an independent reference, the same on any number of ranks, and in training runs."""

import json
import subprocess

import pytest
import torch
from inputs import metrics_rows, train_args, write_hellaswag
from processes import PYTHON, REPO, run_main
from stand_ins import random_hf_gpt2

from gptdist import tokenizer
from gptdist.errors import UserError
from gptdist.evaluation import hellaswag

transformers = pytest.importorskip("transformers")


def reference_scores(model, path, context_length) -> dict:
    """acc and acc_norm by transformers' logits, one ending at a time, as build-nanogpt scores them."""
    correct = correct_norm = 0
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    for row in rows:
        sums, means = [], []
        for ending in row["endings"]:
            context, tokens = tokenizer.encode(row["ctx"]), tokenizer.encode(" " + ending)
            sequence = (context + tokens)[-(context_length + 1) :]
            with torch.no_grad():
                logp = torch.log_softmax(model(torch.tensor([sequence[:-1]])).logits[0].double(), -1)
            picked = logp[torch.arange(len(sequence) - 1), torch.tensor(sequence[1:])][-len(tokens) :]
            sums.append(picked.sum().item())
            means.append(picked.mean().item())
        correct += max(range(4), key=sums.__getitem__) == row["label"]
        correct_norm += max(range(4), key=means.__getitem__) == row["label"]
    return {"task": "hellaswag", "items": len(rows), "acc": correct / len(rows),
            "acc_norm": correct_norm / len(rows)}


@pytest.fixture(scope="module")
def hf_model(tmp_path_factory):
    """A random Hugging Face GPT-2 with a context short enough that one item is cut from the left."""
    folder = tmp_path_factory.mktemp("hellaswag-model")
    model = random_hf_gpt2(folder, n_positions=40, std=0.3, seed=1)
    return folder, model


def evaluate_hellaswag(*args, nproc=1):
    """gptdist.evaluate --task hellaswag: in this process, or on `nproc` processes under torchrun."""
    if nproc == 1:
        result = run_main("gptdist.evaluate", "--task", "hellaswag", *args)
    else:
        command = [PYTHON, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
                   "-m", "gptdist.evaluate", "--task", "hellaswag", *map(str, args)]
        result = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    (line,) = result.stdout.splitlines()  # the result is one JSON line
    return json.loads(line)


def test_scores_equal_an_independent_reference(tmp_path, hf_model):
    folder, model = hf_model
    data = write_hellaswag(tmp_path / "hellaswag.jsonl")
    assert max(len(tokenizer.encode(json.loads(line)["ctx"])) for line in data.read_text().splitlines()) > 40
    scores = evaluate_hellaswag("--gpt2-dir", folder, "--hellaswag-file", data)
    assert scores == reference_scores(model, data, 40)
    assert scores["items"] == 11 and 0 < scores["acc_norm"] < 1


def test_ranks_split_the_items_and_sum_them_exactly(tmp_path, hf_model):
    folder, _ = hf_model
    data = write_hellaswag(tmp_path / "hellaswag.jsonl")
    alone = evaluate_hellaswag("--gpt2-dir", folder, "--hellaswag-file", data, "--batch-size", "4")
    assert evaluate_hellaswag("--gpt2-dir", folder, "--hellaswag-file", data, "--batch-size", "4",
                              nproc=2) == alone
    assert evaluate_hellaswag("--gpt2-dir", folder, "--hellaswag-file", data, "--limit", "5")["items"] == 5


def test_a_malformed_file_is_one_line_naming_the_line(tmp_path, hf_model):
    data = write_hellaswag(tmp_path / "hellaswag.jsonl")
    lines = data.read_text().splitlines()
    lines[2] = json.dumps({**json.loads(lines[2]), "endings": ["only", "three", "endings"]})
    data.write_text("\n".join(lines) + "\n")
    result = run_main("gptdist.evaluate", "--task", "hellaswag", "--gpt2-dir", hf_model[0],
                      "--hellaswag-file", data)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert f"{data}:3 is not a HellaSwag item" in result.stderr


def test_a_model_without_gpt2s_vocabulary_is_refused(tmp_path):
    random_hf_gpt2(tmp_path / "small", vocab_size=1000)
    data = write_hellaswag(tmp_path / "hellaswag.jsonl")
    result = run_main("gptdist.evaluate", "--task", "hellaswag", "--gpt2-dir", tmp_path / "small",
                        "--hellaswag-file", data)
    assert result.returncode == 2 and "beyond the model's vocabulary of 1000 tokens" in result.stderr


def test_the_official_set_offline_is_a_clear_error(monkeypatch):
    # nothing listens on port 9
    monkeypatch.setattr(hellaswag, "VAL_URL", "http://127.0.0.1:9/hellaswag_val.jsonl")
    with pytest.raises(UserError, match=r"cannot download hellaswag_val.jsonl .*place the file at"):
        hellaswag.official_val()


def test_a_cached_file_that_is_not_the_official_set_is_refused(tmp_path, monkeypatch):
    cached = tmp_path / "hellaswag" / "hellaswag_val.jsonl"
    cached.parent.mkdir()
    write_hellaswag(cached)
    before = cached.read_bytes()
    monkeypatch.setenv("GPTDIST_CACHE", str(tmp_path))
    with pytest.raises(UserError, match="not HellaSwag's official validation set.*delete it to download"):
        hellaswag.official_val()
    assert cached.read_bytes() == before  # it may be the user's: said, not deleted


def test_the_official_sets_hash_is_gits(tmp_path):
    data = write_hellaswag(tmp_path / "hellaswag.jsonl")
    git = subprocess.run(["git", "hash-object", str(data)], capture_output=True, text=True, check=True)
    assert hellaswag.git_blob_sha1(data) == git.stdout.strip()


@pytest.mark.slow
@pytest.mark.parametrize("nproc, parallel", [(1, "ddp"), (2, "fsdp")])
def test_training_scores_hellaswag_at_its_interval(tmp_path, verdict_data, nproc, parallel):
    data = write_hellaswag(tmp_path / "hellaswag.jsonl")
    out = tmp_path / "run"
    args = train_args(verdict_data, out, "train.max_steps=4", "eval.hellaswag_interval=2",
                      f"eval.hellaswag_file={data}", f"train.parallel={parallel}")
    command = [PYTHON, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "gptdist.train", *map(str, args)]
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [row for row in metrics_rows(out) if "hellaswag_acc_norm" in row]
    assert [row["step"] for row in rows] == [0, 2, 4] and all(row["hellaswag_items"] == 11 for row in rows)
    final = evaluate_hellaswag("--checkpoint", out, "--hellaswag-file", data, "--batch-size", "4")
    assert (rows[-1]["hellaswag_acc"], rows[-1]["hellaswag_acc_norm"]) == (final["acc"], final["acc_norm"])
