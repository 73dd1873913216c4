"""The modern recipe's model options together, through every road a GPT-2 model takes: compiled, with
activation checkpointing and FP8, under ddp and fsdp with both checkpoint forms, resumed bit for bit,
then generate, evaluate and HellaSwag; and export refuses them in one line."""


import pytest
import torch
from inputs import newest_model, same_weights, train_args, write_hellaswag
from processes import run_main, train

from gptdist.checkpoint import sharded, store
from gptdist.config import ModelConfig
from gptdist.model.gpt import GPTModel

MODERN = ("model.positions=rotary", "model.norm=rmsnorm", "model.qk_norm=true", "model.activation=relu2",
          "model.logit_softcap=15", "model.zero_init_projections=true", "model.bias=false",
          "model.drop_rate=0.0")


@pytest.mark.slow
@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_modern_options_train_and_resume_bit_for_bit_under_two_processes(tmp_path, verdict_data, parallel):
    run = (*MODERN, "checkpoint.interval=2", "checkpoint.keep=5", "eval.interval=100",
           f"train.parallel={parallel}", *(["checkpoint.sharded=true"] if parallel == "fsdp" else []))
    whole, halves = tmp_path / "whole", tmp_path / "halves"
    train(2, *train_args(verdict_data, whole, *run, "train.max_steps=4"))
    train(2, *train_args(verdict_data, halves, *run, "train.max_steps=2"))
    train(2, *train_args(verdict_data, halves, *run, "train.max_steps=4"))  # resumes
    ends = [store.checkpoint_paths(folder / "checkpoints")[-1] for folder in (whole, halves)]
    if parallel == "ddp":
        assert same_weights(newest_model(whole), newest_model(halves))
        return
    cfg = ModelConfig(**store.read(ends[0])["config"]["model"])
    reached = []
    for end in ends:
        model = GPTModel(cfg)
        sharded.load_model(end, model)
        reached.append(model.state_dict())
    assert same_weights(*reached) and not any("pos_emb" in name for name in reached[0])


def test_modern_options_compile_checkpoint_activations_and_serve_every_command(tmp_path, verdict_data):
    out = tmp_path / "run"
    options = ("train.max_steps=2", "train.compile=true", "train.activation_checkpointing=blocks")
    result = run_main("gptdist.train", *train_args(verdict_data, out, *MODERN, *options))
    assert result.returncode == 0, result.stderr[-3000:]
    generated = run_main("gptdist.generate", "--checkpoint", out, "--max-new-tokens", "5")
    assert generated.returncode == 0 and generated.stdout.startswith("Every effort moves you")
    evaluated = run_main("gptdist.evaluate", "--checkpoint", out, "--data", verdict_data, "--batches", "1")
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    scored = run_main("gptdist.evaluate", "--task", "hellaswag", "--checkpoint", out, "--hellaswag-file",
                      write_hellaswag(tmp_path / "hellaswag.jsonl"))
    assert scored.returncode == 0 and '"acc"' in scored.stdout, scored.stderr[-2000:]
    exported = run_main("gptdist.export", "--checkpoint", out, "--out", tmp_path / "hf")
    assert exported.returncode == 0 and "model_type gptdist" in exported.stdout, exported.stderr[-2000:]


def test_modern_options_train_with_float8(tmp_path, verdict_data):
    pytest.importorskip("torchao")
    options = ("train.max_steps=1", "train.float8=tensorwise")
    result = run_main("gptdist.train", *train_args(verdict_data, tmp_path / "run", *MODERN, *options))
    assert result.returncode == 0, result.stderr[-3000:]
    assert torch.isfinite(newest_model(tmp_path / "run")["trf_blocks.0.att.qkv.weight"]).all()
