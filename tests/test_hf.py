"""Hugging Face GPT-2 folders: imported with equal logits, exported so that transformers computes
gptdist's logits."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from environment import VERDICT
from inputs import newest_model, train_args, write_hellaswag
from processes import REPO, run_main, run_module
from stand_ins import random_hf_gpt2

from gptdist import export, tokenizer
from gptdist.checkpoint import pretrained
from gptdist.config import PRETRAINED_KEYS
from gptdist.errors import UserError
from gptdist.model import hf, sampling
from gptdist.model.gpt import GPTModel

transformers = pytest.importorskip("transformers")
from safetensors.torch import load_file, save_file  # noqa: E402  (after the skip: an optional extra)

TOKENS = torch.tensor([[464, 3290, 318, 257, 1332, 286, 11, 50256, 17, 9, 1000, 50000]])


def gptdist_model(folder):
    cfg, state = pretrained.from_gpt2(folder)
    return pretrained.load_weights(GPTModel(cfg), state, str(folder)).eval()


def assert_same_logits(ours, theirs, tokens=TOKENS):
    with torch.no_grad():
        a, b = ours(tokens), theirs(tokens).logits
    vocab = b.shape[-1]
    torch.testing.assert_close(a[..., :vocab], b, atol=1e-4, rtol=0)
    assert torch.isneginf(a[..., vocab:]).all()  # padded rows never compete


@pytest.mark.parametrize("tie", [True, False])
def test_a_hugging_face_folder_loads_with_equal_logits(tmp_path, tie):
    theirs = random_hf_gpt2(tmp_path / "hf", tie=tie)
    ours = gptdist_model(tmp_path / "hf")
    assert ours.cfg.tie_embeddings == tie and (ours.out_head.weight is ours.tok_emb.weight) == tie
    assert ours.cfg.qkv_bias and ours.cfg.bias and ours.cfg.context_length == 64
    assert_same_logits(ours, theirs)


def test_the_hubs_gpt2_layout_loads(tmp_path):
    """`huggingface-cli download gpt2` gives tensors without the "transformer." prefix, and the mask
    buffers."""
    theirs = random_hf_gpt2(tmp_path / "hf")
    tensors = load_file(tmp_path / "hf" / hf.WEIGHTS)
    hub = {name.removeprefix("transformer."): tensor for name, tensor in tensors.items()}
    for i in range(2):
        hub[f"h.{i}.attn.bias"] = torch.tril(torch.ones(64, 64)).view(1, 1, 64, 64)
    assert "wte.weight" in hub and "lm_head.weight" not in hub
    save_file(hub, tmp_path / "hf" / hf.WEIGHTS, metadata={"format": "pt"})
    assert_same_logits(gptdist_model(tmp_path / "hf"), theirs)


def test_a_sharded_hugging_face_folder_loads(tmp_path):
    theirs = random_hf_gpt2(tmp_path / "hf", tie=False)
    theirs.save_pretrained(tmp_path / "sharded", max_shard_size="2MB")
    assert (tmp_path / "sharded" / hf.WEIGHTS_INDEX).is_file()
    assert len(list((tmp_path / "sharded").glob("*.safetensors"))) > 1
    assert_same_logits(gptdist_model(tmp_path / "sharded"), theirs)


@pytest.mark.parametrize("change, message", [
    ({"n_inner": 64}, "n_inner 64 is not GPT-2's"),
    ({"activation_function": "relu"}, "activation_function 'relu' is not GPT-2's"),
    ({"layer_norm_epsilon": 1e-6}, "layer_norm_epsilon 1e-06 is not GPT-2's"),
    ({"model_type": "llama"}, "model_type 'llama' is none of gpt2, gpt_neox, gptdist"),
    ({"tie_word_embeddings": False}, "lack tensor 'lm_head.weight'"),
])
def test_what_gptdist_cannot_compute_is_refused_in_one_line(tmp_path, change, message):
    random_hf_gpt2(tmp_path / "hf")
    path = tmp_path / "hf" / hf.CONFIG
    path.write_text(json.dumps({**json.loads(path.read_text()), **change}))
    with pytest.raises(UserError, match=message):
        pretrained.from_gpt2(tmp_path / "hf")


def test_generate_and_evaluate_read_a_hugging_face_folder(tmp_path, verdict_data):
    theirs = random_hf_gpt2(tmp_path / "hf")
    result = run_main("gptdist.generate", "--gpt2-dir", tmp_path / "hf", "--temperature", "0",
                        "--max-new-tokens", "8")
    assert result.returncode == 0, result.stderr[-2000:]
    prompt = torch.tensor([tokenizer.encode("Every effort moves you")])
    expected = theirs.generate(prompt, max_new_tokens=8, do_sample=False,
                               attention_mask=torch.ones_like(prompt))
    text = tokenizer.decode(t for t in expected[0].tolist() if t != tokenizer.EOT_TOKEN)
    assert result.stdout.rstrip("\n") == text
    scores = run_main("gptdist.evaluate", "--gpt2-dir", tmp_path / "hf", "--data", verdict_data, "--splits",
                      "val")
    assert scores.returncode == 0, scores.stderr[-2000:]
    assert json.loads(scores.stdout.splitlines()[-1])["val"]["loss"] > 0


def test_training_starts_from_a_hugging_face_folder(tmp_path, verdict_data):
    random_hf_gpt2(tmp_path / "hf")
    out = tmp_path / "run"
    tiny_steps = ("optim.lr=1e-12", "schedule.initial_lr=1e-12", "schedule.min_lr=1e-12", "train.max_steps=1")
    result = run_main("gptdist.train", *train_args(verdict_data, out, f"model.init_from={tmp_path / 'hf'}",
                                                      "model.drop_rate=0", *tiny_steps))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "initialised from the weights of" in result.stdout
    _, state = pretrained.from_gpt2(tmp_path / "hf")
    saved = newest_model(out)
    for name in ("trf_blocks.1.att.qkv.weight", "trf_blocks.0.ff.proj.bias", "pos_emb.weight"):
        torch.testing.assert_close(saved[name], state[name][: saved[name].shape[0]], atol=1e-6, rtol=0)
    assert saved["pos_emb.weight"].shape[0] == 32  # the run's shorter context keeps the first positions


def disagreeing_source(folder: Path, case: str) -> str:
    """A pretrained source that disagrees with a tiny run on The Verdict (context 32) in one way; returns
    what the one line must say."""
    if case == "vocabulary":
        random_hf_gpt2(folder, vocab_size=1000)
        return "tokenized for a vocabulary of 50257 tokens but"
    if case == "context":
        random_hf_gpt2(folder, n_positions=16)
        return "32 exceeds the"
    if case in ("tied-with-a-head-of-its-own", "untied-without-a-head"):
        random_hf_gpt2(folder, tie=case.startswith("untied"))
        settings = json.loads((folder / hf.CONFIG).read_text())
        settings["tie_word_embeddings"] = case.startswith("tied")  # what the weights are not
        (folder / hf.CONFIG).write_text(json.dumps(settings))
        tensors = load_file(folder / hf.WEIGHTS)
        tensors["lm_head.weight"] = torch.randn_like(tensors["transformer.wte.weight"])
        if case.startswith("untied"):
            del tensors["lm_head.weight"]
        save_file(tensors, folder / hf.WEIGHTS, metadata={"format": "pt"})
        return "tie_word_embeddings true, but" if case.startswith("tied") else "lack tensor 'lm_head.weight'"
    folder.mkdir()
    if case == "configuration-without-weights":
        (folder / hf.CONFIG).write_text(json.dumps({"model_type": "gpt2"}))
    return "neither a GPT-2 size"


DISAGREEMENTS = ["vocabulary", "context", "tied-with-a-head-of-its-own", "untied-without-a-head",
                 "configuration-without-weights", "empty-folder"]


@pytest.mark.parametrize("case", DISAGREEMENTS)
@pytest.mark.parametrize("command", ["gptdist.train", "gptdist.evaluate"])
def test_a_pretrained_source_that_disagrees_stops_before_any_work_and_is_left_as_it_was(
        tmp_path, verdict_data, command, case):
    source = tmp_path / "source"
    expected = disagreeing_source(source, case)
    before = {p: p.read_bytes() for p in source.rglob("*") if p.is_file()}
    if command == "gptdist.train":
        arguments = train_args(verdict_data, tmp_path / "run", f"model.init_from={source}")
        expected = {"empty-folder": "a folder that holds no model",
                    "configuration-without-weights": "a folder that holds no model"}.get(case, expected)
    else:
        arguments = ["--gpt2-dir", source, "--data", verdict_data, "--context-length", "32", "--batches", "1"]
    result = run_main(command, *arguments)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and expected in lines[0], result.stderr[-2000:]
    if command == "gptdist.train":
        assert "model.init_from" in lines[0] and not (tmp_path / "run" / "metrics.jsonl").exists()
    assert {p: p.read_bytes() for p in source.rglob("*") if p.is_file()} == before


# --- export ----------------------------------------------------------------------------

MODERN = ["model.positions=rotary", "model.norm=rmsnorm", "model.qk_norm=true", "model.activation=relu2",
          "model.logit_softcap=15", "model.zero_init_projections=true"]
VARIANTS = {
    "untied-no-qkv-bias-padded": [],  # gptdist's defaults: none of them is GPT-2's
    "tied-qkv-bias": ["model.tie_embeddings=true", "model.qkv_bias=true"],
    "no-bias-sliced": ["model.bias=false", "model.vocab_padding=slice", "model.vocab_multiple=128"],
    "sharded": ["checkpoint.sharded=true"],
    "zero-init": ["model.zero_init_projections=true"],  # an initialisation: still GPT-2's function
    # the modern recipe's options, each alone and all together (with a tied head, padding sliced, no
    # biases and a HellaSwag score for the model card)
    "rotary": ["model.positions=rotary"],
    "rotary-tied-no-bias": ["model.positions=rotary", "model.rotary_base=500", "model.tie_embeddings=true",
                            "model.bias=false"],
    "rmsnorm": ["model.norm=rmsnorm"],
    "qk-norm": ["model.qk_norm=true"],
    "relu2": ["model.activation=relu2"],
    "soft-cap": ["model.logit_softcap=15"],
    "modern": [*MODERN, "model.tie_embeddings=true", "model.vocab_padding=slice", "model.bias=false",
               "eval.hellaswag_interval=3", "eval.hellaswag_items=4"],
}
# the transformers class that computes each: GPT-2 unless said here (no transformers class computes the
# others: they carry gptdist's code)
CLASSES = {"rotary": "GPTNeoXForCausalLM", "rotary-tied-no-bias": "GPTNeoXForCausalLM",
           **dict.fromkeys(["rmsnorm", "qk-norm", "relu2", "soft-cap", "modern"], "GPTDistForCausalLM")}
GPT2_FILES = ["README.md", "config.json", "merges.txt", "model.safetensors", "tokenizer_config.json",
              "vocab.json"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, verdict_data):
    """A short run of each variant: its run folder."""
    runs = {}
    hellaswag_file = write_hellaswag(tmp_path_factory.mktemp("hellaswag") / "hellaswag.jsonl")
    for name, overrides in VARIANTS.items():
        out = tmp_path_factory.mktemp("export") / name
        result = run_main("gptdist.train",
                          *train_args(verdict_data, out, "train.max_steps=3", "eval.at_start=false",
                                      f"eval.hellaswag_file={hellaswag_file}", *overrides))
        assert result.returncode == 0, result.stderr[-2000:]
        runs[name] = out
    return runs


def exported(trained, variant, out, *flags):
    result = run_main("gptdist.export", "--checkpoint", trained[variant], "--out", out, *flags)
    assert result.returncode == 0, result.stderr[-2000:]
    return out


@pytest.mark.parametrize("variant", VARIANTS)
def test_an_export_loads_in_transformers_with_equal_logits_and_greedy_text(tmp_path, trained, variant,
                                                                           monkeypatch):
    out = exported(trained, variant, tmp_path / "hf")
    remote = CLASSES.get(variant) == "GPTDistForCausalLM"
    code = ["configuration_gptdist.py", "modeling_gptdist.py"] if remote else []
    assert sorted(p.name for p in out.iterdir()) == sorted(GPT2_FILES + code)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    theirs = transformers.AutoModelForCausalLM.from_pretrained(out, trust_remote_code=remote).eval()
    assert type(theirs).__name__ == CLASSES.get(variant, "GPT2LMHeadModel")
    cfg, state = pretrained.from_checkpoint(trained[variant])
    ours = pretrained.load_weights(GPTModel(cfg), state, variant).eval()
    assert_same_logits(ours, theirs)
    prompt = tokenizer.encode("Every effort moves you")
    expected = sampling.generate(ours, [prompt], 20, eos_id=None)[0]
    greedy = theirs.generate(torch.tensor([prompt]), max_new_tokens=20, min_new_tokens=20, do_sample=False,
                             attention_mask=torch.ones(1, len(prompt), dtype=torch.long))
    assert greedy[0].tolist()[len(prompt) :] == expected
    tok = transformers.AutoTokenizer.from_pretrained(out, trust_remote_code=remote)
    text = VERDICT.read_text()[:2000]
    assert tok(text)["input_ids"] == tokenizer.encode(text) and tok.eos_token_id == tokenizer.EOT_TOKEN
    back_cfg, back_state = pretrained.from_gpt2(out)  # --gpt2-dir and model.init_from read it so
    # GPT-2 and NeoX folders have every bias (zero where the model has none): the same function
    keys = [key for key in PRETRAINED_KEYS if remote or key not in ("qkv_bias", "bias")]
    assert {key: getattr(back_cfg, key) for key in keys} == {key: getattr(cfg, key) for key in keys}
    if remote:
        assert back_state.keys() == state.keys()
        assert all(torch.equal(back_state[name], state[name]) for name in state)
    else:
        back = pretrained.load_weights(GPTModel(back_cfg), back_state, "back").eval()
        with torch.no_grad():
            vocab = cfg.vocab_size
            torch.testing.assert_close(back(TOKENS)[..., :vocab], ours(TOKENS)[..., :vocab], atol=1e-5,
                                       rtol=0)


def test_a_gptdist_export_loads_where_gptdist_is_not_installed(tmp_path, trained):
    out = exported(trained, "modern", tmp_path / "hf")
    blocker = tmp_path / "blocker" / "gptdist"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('no gptdist here')\n")
    code = ("import sys, torch, transformers\n"
            f"model = transformers.AutoModelForCausalLM.from_pretrained({str(out)!r},\n"
            "                                                           trust_remote_code=True)\n"
            "print(model(torch.tensor([[464, 3290, 318]])).logits.shape)\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(blocker.parent)}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                            cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "torch.Size([1, 3, 50257])"


def test_a_modern_export_in_bf16_matches_gptdist_in_bf16(tmp_path, trained, monkeypatch):
    out = exported(trained, "modern", tmp_path / "hf", "--dtype", "bf16")
    assert {t.dtype for t in load_file(out / hf.WEIGHTS).values()} == {torch.bfloat16}
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    theirs = transformers.AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True,
                                                               dtype=torch.bfloat16).eval()
    cfg, state = pretrained.from_checkpoint(trained["modern"])
    ours = pretrained.load_weights(GPTModel(cfg), state, "modern").eval().to(torch.bfloat16)
    with torch.no_grad():
        a, b = ours(TOKENS).float(), theirs(TOKENS).logits.float()
    # both in bf16 (8 bits of mantissa): within a few of its steps at the logits' scale
    scale = a.abs().max().item()
    assert (a - b).abs().max().item() <= 0.02 * scale
    assert (a.argmax(-1) == b.argmax(-1)).float().mean().item() >= 0.9


def test_the_model_card_says_what_the_model_is_and_how_it_was_trained(tmp_path, trained, verdict_data):
    card = (exported(trained, "modern", tmp_path / "modern") / "README.md").read_text()
    rows = [json.loads(line) for line in (trained["modern"] / "metrics.jsonl").read_text().splitlines()]
    val = [row for row in rows if "val_loss" in row][-1]
    swag = [row for row in rows if "hellaswag_acc" in row][-1]
    assert card.startswith("---\nlibrary_name: transformers\n")
    for line in ("| `positions` | `rotary` |", "| `norm` | `rmsnorm` |", "| `qk_norm` | `True` |",
                 "| `activation` | `relu2` |", "| `logit_softcap` | `15.0` |",
                 "| `tie_embeddings` | `True` |",
                 f"- data: `{verdict_data.name}`: prepared by gptdist.prepare", "- steps: 3",
                 f"- validation loss: {val['val_loss']:.4f} at step 3",
                 f"- HellaSwag: acc {swag['hellaswag_acc']:.4f}", "trust_remote_code=True"):
        assert line in card, line
    manifest = json.loads((verdict_data / "manifest.json").read_text())
    assert f"{manifest['splits']['train']['tokens']:,} training tokens" in card
    plain = (exported(trained, "tied-qkv-bias", tmp_path / "plain") / "README.md").read_text()
    assert "transformers' GPT-2 (`GPT2LMHeadModel`)" in plain and "trust_remote_code" not in plain
    assert "HellaSwag" not in plain  # never measured in that run


def test_generate_reads_an_export_as_it_reads_the_checkpoint(tmp_path, trained):
    out = exported(trained, "modern", tmp_path / "hf")
    greedy = ["--temperature", "0", "--max-new-tokens", "12"]
    from_export = run_main("gptdist.generate", "--gpt2-dir", out, *greedy)
    from_checkpoint = run_main("gptdist.generate", "--checkpoint", trained["modern"], *greedy)
    assert from_export.returncode == 0, from_export.stderr[-2000:]
    assert from_export.stdout == from_checkpoint.stdout


def test_export_in_bf16(tmp_path, trained):
    result = run_main("gptdist.export", "--checkpoint", trained["tied-qkv-bias"], "--out", tmp_path / "hf",
                        "--dtype", "bf16")
    assert result.returncode == 0, result.stderr[-2000:]
    tensors = load_file(tmp_path / "hf" / hf.WEIGHTS)
    assert {t.dtype for t in tensors.values()} == {torch.bfloat16} and "lm_head.weight" not in tensors
    assert json.loads((tmp_path / "hf" / hf.CONFIG).read_text())["torch_dtype"] == "bfloat16"


def test_an_earlier_export_is_replaced_only_with_overwrite(tmp_path, trained):
    out = tmp_path / "hf"
    assert run_main("gptdist.export", "--checkpoint", trained["tied-qkv-bias"], "--out", out).returncode == 0
    refused = run_main("gptdist.export", "--checkpoint", trained["sharded"], "--out", out)
    assert refused.returncode == 2 and "already holds an export folder; pass --overwrite" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    replaced = run_main("gptdist.export", "--checkpoint", trained["sharded"], "--out", out, "--overwrite")
    assert replaced.returncode == 0, replaced.stderr[-2000:]
    assert json.loads((out / hf.CONFIG).read_text())["tie_word_embeddings"] is False  # the sharded run's
    assert [p.name for p in tmp_path.iterdir()] == ["hf"]  # no temporary or old folder left beside it


def test_a_failed_export_leaves_the_earlier_one_as_it_was(tmp_path, trained, monkeypatch):
    out = tmp_path / "hf"
    assert run_main("gptdist.export", "--checkpoint", trained["tied-qkv-bias"], "--out", out).returncode == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def disk_full(folder, *args):
        (folder / hf.CONFIG).write_text("{}")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(hf, "write", disk_full)
    with pytest.raises(SystemExit) as exit_:
        export.main(["--checkpoint", str(trained["sharded"]), "--out", str(out), "--overwrite"])
    assert exit_.value.code == 2
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["hf"]


def test_export_without_safetensors_says_what_to_install(tmp_path, trained):
    blocker = tmp_path / "blocker" / "safetensors"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('no safetensors here')\n")
    env = {"PYTHONPATH": f"{blocker.parent}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    result = run_module("gptdist.export", "--checkpoint", trained["sharded"], "--out", tmp_path / "hf",
                        env=env)
    assert result.returncode == 2
    assert result.stderr.strip() == ("gptdist.export: error: Hugging Face folders need safetensors: "
                                     "pip install 'gptdist[hf]'")
    assert not (tmp_path / "hf").exists()


def test_a_vocabulary_smaller_than_the_tokenizer_is_refused(tmp_path):
    random_hf_gpt2(tmp_path / "small", vocab_size=1000)
    result = run_main("gptdist.export", "--gpt2-dir", tmp_path / "small", "--out", tmp_path / "hf")
    assert result.returncode == 2
    assert "model.vocab_size 1000 is smaller than the GPT-2 tokenizer's 50257 tokens" in result.stderr
    assert not (tmp_path / "hf").exists()


def test_training_starts_from_a_gptdist_run(tmp_path, trained, verdict_data):
    out = tmp_path / "continued"
    tiny_steps = ("optim.lr=1e-12", "schedule.initial_lr=1e-12", "schedule.min_lr=1e-12", "train.max_steps=1")
    result = run_main("gptdist.train",
                      *train_args(verdict_data, out, f"model.init_from={trained['tied-qkv-bias']}",
                                                      "model.context_length=16", *tiny_steps))
    assert result.returncode == 0, result.stderr[-2000:]
    start = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert start["config"]["model"]["tie_embeddings"] and start["config"]["model"]["context_length"] == 16
    source, saved = newest_model(trained["tied-qkv-bias"]), newest_model(out)
    torch.testing.assert_close(saved["trf_blocks.0.att.qkv.bias"], source["trf_blocks.0.att.qkv.bias"],
                               atol=1e-6, rtol=0)
    torch.testing.assert_close(saved["pos_emb.weight"], source["pos_emb.weight"][:16], atol=1e-6, rtol=0)


def test_gptdist_imports_without_the_hugging_face_extras(tmp_path):
    blocker = tmp_path / "blocker"
    for name in ("safetensors", "transformers"):
        (blocker / name).mkdir(parents=True)
        (blocker / name / "__init__.py").write_text(f"raise ImportError('no {name} here')\n")
    code = "import gptdist.train, gptdist.evaluate, gptdist.generate, gptdist.export, gptdist.bench"
    env = {**os.environ, "PYTHONPATH": f"{blocker}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO)
    assert result.returncode == 0, result.stderr[-2000:]


@pytest.mark.parametrize("change, message", [
    ({"use_parallel_residual": True}, "use_parallel_residual True is not what gptdist's model computes"),
    ({"rotary_pct": 0.25}, "rotary_pct 0.25 is not what gptdist's model computes"),
    ({"hidden_act": "relu"}, "hidden_act 'relu' is not what gptdist's model computes"),
])
def test_a_gpt_neox_folder_gptdist_cannot_compute_is_refused_in_one_line(tmp_path, trained, change, message):
    """A Pythia-style NeoX (parallel residual, a quarter of the channels rotated) is not gptdist's model."""
    out = exported(trained, "rotary", tmp_path / "hf")
    settings = json.loads((out / hf.CONFIG).read_text())
    (out / hf.CONFIG).write_text(json.dumps({**settings, **change}))
    with pytest.raises(UserError, match=message):
        pretrained.from_gpt2(out)


def test_training_starts_from_a_gptdist_export(tmp_path, trained, verdict_data):
    out = exported(trained, "modern", tmp_path / "hf")
    run = tmp_path / "continued"
    tiny_steps = ("optim.lr=1e-12", "schedule.initial_lr=1e-12", "schedule.min_lr=1e-12", "train.max_steps=1",
                  "optim.weight_decay=0")
    result = run_main("gptdist.train", *train_args(verdict_data, run, f"model.init_from={out}", *tiny_steps))
    assert result.returncode == 0, result.stderr[-2000:]
    start = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])["config"]["model"]
    assert start["positions"] == "rotary" and start["norm"] == "rmsnorm" and start["logit_softcap"] == 15
    source, saved = newest_model(trained["modern"]), newest_model(run)
    for name in ("trf_blocks.0.att.qkv.weight", "trf_blocks.0.ff.proj.weight", "final_norm.weight"):
        torch.testing.assert_close(saved[name], source[name], atol=1e-6, rtol=0)
