import json

import numpy as np
import pytest
import torch
from inputs import metrics_rows, train_args
from openai_layout import HPARAMS, random_params, reference_logits, write_tf_checkpoint
from processes import run_main

from gptdist.checkpoint import pretrained, store
from gptdist.errors import UserError
from gptdist.model import gpt2
from gptdist.model.gpt import GPTModel

pytest.importorskip("tensorflow")


def load_openai(folder):
    cfg, state = pretrained.from_gpt2(folder)
    return pretrained.load_weights(GPTModel(cfg), state, str(folder)).eval()


@pytest.fixture(scope="module")
def openai_dir(tmp_path_factory):
    params = random_params()
    return write_tf_checkpoint(tmp_path_factory.mktemp("gpt2-small-random"), params), params


def test_loaded_model_matches_an_independent_reference(openai_dir):
    folder, params = openai_dir
    model = load_openai(folder)
    assert model.cfg.qkv_bias and model.cfg.tie_embeddings and model.cfg.context_length == HPARAMS["n_ctx"]
    assert model.out_head.weight is model.tok_emb.weight
    tokens = np.array([464, 3290, 318, 257, 1332, 286, 11, 50256, 17, 9])
    with torch.no_grad():
        ours = model(torch.from_numpy(tokens)[None])[0].double().numpy()
    np.testing.assert_allclose(ours[:, :50257], reference_logits(params, tokens), atol=2e-4, rtol=1e-4)
    assert np.isneginf(ours[:, 50257:]).all()  # the padded rows never compete


def test_shape_mismatch_is_reported(tmp_path):
    params = random_params()
    params["model/h1/mlp/c_fc/b"] = params["model/h1/mlp/c_fc/b"][:10]
    folder = write_tf_checkpoint(tmp_path / "bad", params)
    with pytest.raises(UserError, match=r"weight trf_blocks.1.ff.fc.bias has shape \(10,\), the model's "
                                        r"\(128,\)"):
        load_openai(folder)


def test_missing_variable_is_reported(tmp_path):
    params = random_params()
    del params["model/h0/ln_2/g"]
    folder = write_tf_checkpoint(tmp_path / "bad", params)
    with pytest.raises(UserError, match="lacks variable 'h0/ln_2/g'"):
        load_openai(folder)


def test_download_offline_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("GPTDIST_CACHE", str(tmp_path))
    monkeypatch.setattr(gpt2, "MIRRORS", ("http://127.0.0.1:9/{size}/{file}",))  # nothing listens on port 9
    with pytest.raises(UserError, match=r"cannot download checkpoint .*place the file at"):
        gpt2.download_gpt2("124M")
    assert not list(tmp_path.rglob("checkpoint"))


def test_training_continues_from_openai_weights(tmp_path, openai_dir, verdict_data):
    folder, _ = openai_dir
    out = tmp_path / "run"
    result = run_main("gptdist.train", *train_args(verdict_data, out, f"model.init_from={folder}",
                                                      "model.context_length=32", "train.max_steps=4"))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "initialised from the weights of" in result.stdout
    start = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert start["config"]["model"]["emb_dim"] == HPARAMS["n_embd"] and start["config"]["model"]["qkv_bias"]
    evals = [row["step"] for row in metrics_rows(out) if "val_loss" in row]
    reference = load_openai(folder)
    saved = store.read(store.checkpoint_paths(out / "checkpoints")[-1])["model"]
    qkv = "trf_blocks.0.att.qkv.weight"
    moved = (saved[qkv] - reference.state_dict()[qkv]).abs()
    assert 0 < moved.max() < 0.1  # trained a little from the loaded weights, not from scratch
    assert evals == [0, 4]  # the loaded weights' loss first (eval.at_start), then the end's


def test_evaluate_and_generate_from_openai_dir(tmp_path, openai_dir, verdict_data):
    folder, params = openai_dir
    result = run_main("gptdist.evaluate", "--gpt2-dir", folder, "--data", verdict_data,
                      "--context-length", "32")
    assert result.returncode == 0, result.stderr[-2000:]
    scores = json.loads(result.stdout.strip().splitlines()[-1])
    val = np.fromfile(verdict_data / "val-00000.bin", dtype="<u2").astype(np.int64)
    windows = [val[i * 32 : i * 32 + 33] for i in range((len(val) - 33) // 32 + 1)]
    losses = []
    for w in windows:
        logits = reference_logits(params, w[:-1])
        logits -= logits.max(-1, keepdims=True)
        logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
        losses.append(-logp[np.arange(32), w[1:]].mean())
    assert scores["val"]["loss"] == pytest.approx(np.mean(losses), abs=1e-3)
    assert scores["val"]["samples"] == len(windows)
    greedy = run_main("gptdist.generate", "--gpt2-dir", folder, "--temperature", "0", "--max-new-tokens", "5")
    assert greedy.returncode == 0 and greedy.stdout.startswith("Every effort moves you")


def test_openai_weights_export_to_hugging_face_with_the_reference_logits(tmp_path, openai_dir, monkeypatch):
    transformers = pytest.importorskip("transformers")
    folder, params = openai_dir
    result = run_main("gptdist.export", "--gpt2-dir", folder, "--out", tmp_path / "hf")
    assert result.returncode == 0, result.stderr[-2000:]
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    tokens = np.array([464, 3290, 318, 257, 1332, 286, 11, 50256, 17, 9])
    with torch.no_grad():
        logits = model(torch.from_numpy(tokens)[None]).logits[0].double().numpy()
    np.testing.assert_allclose(logits, reference_logits(params, tokens), atol=2e-4, rtol=1e-4)
