import pytest

from gptdist import config
from gptdist.errors import UserError


def test_contract_keys_exist():
    cfg = config.Config().to_dict()
    contract = {
        "run": ["out_dir", "seed"], "data": ["dir"],
        "model": ["preset", "vocab_size", "context_length", "emb_dim", "n_heads", "n_layers", "drop_rate",
                  "qkv_bias"],
        "train": ["micro_batch_size", "grad_accum_steps", "max_steps", "epochs", "precision", "grad_clip",
                  "compile"],
        "optim": ["lr", "weight_decay", "betas"], "schedule": ["warmup_steps", "initial_lr", "min_lr"],
        "eval": ["interval", "batches"], "checkpoint": ["interval", "keep", "resume"],
        "logging": ["interval", "wandb"], "sample": ["prompt", "max_new_tokens", "temperature", "top_k"],
    }
    for section, keys in contract.items():
        assert set(keys) <= set(cfg[section]), section


def test_yaml_and_overrides_are_typed(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  preset: gpt2-small\n  n_layers: 2\noptim:\n  lr: 4e-4\n")
    cfg = config.load(str(path), ["train.max_steps=7", "optim.betas=[0.8, 0.9]", "train.grad_clip=null",
                                  "sample.prompt=Hello there", "model.qkv_bias=true", "train.precision=bf16"])
    assert cfg.model.emb_dim == 768 and cfg.model.n_layers == 2 and cfg.model.context_length == 1024
    assert cfg.optim.lr == 4e-4 and isinstance(cfg.optim.lr, float)
    assert cfg.train.max_steps == 7 and cfg.optim.betas == (0.8, 0.9) and cfg.train.grad_clip is None
    assert cfg.sample.prompt == "Hello there" and cfg.model.qkv_bias is True and cfg.train.precision == "bf16"
    config.save(cfg, tmp_path / "saved.yaml")
    assert config.load(str(tmp_path / "saved.yaml"), []) == cfg


@pytest.mark.parametrize("overrides, message", [
    (["train.nonsense=1"], "unknown config key train.nonsense; valid keys of train: micro_batch_size"),
    (["bogus.key=1"], "unknown config section 'bogus'; valid sections: run, data"),
    (["train.max_steps=ten"], "config key train.max_steps: expected int, got str 'ten'"),
    (["model.qkv_bias=3"], "config key model.qkv_bias: expected bool"),
    (["train.precision=fp8"], "train.precision: 'fp8' is not one of auto, fp32, bf16, fp16"),
    (["model.preset=gpt5"], "unknown preset 'gpt5'; known presets: gpt2-small"),
    (["noequals"], "is not of the form section.key=value"),
])
def test_config_errors_name_the_key(overrides, message):
    with pytest.raises(UserError, match=None) as err:
        config.load(None, overrides)
    assert message in str(err.value)


def test_missing_config_file(tmp_path):
    with pytest.raises(UserError, match="config file .*nope.yaml does not exist"):
        config.load(str(tmp_path / "nope.yaml"), [])


def test_a_key_that_is_a_python_keyword_reads_and_writes_by_its_own_name(tmp_path):
    cfg = config.load(None, ["checkpoint.async=false"])
    assert cfg.checkpoint.async_ is False and config.load(None, []).checkpoint.async_ is True
    assert cfg.to_dict()["checkpoint"]["async"] is False
    config.save(cfg, tmp_path / "config.yaml")  # a run's saved config loads back as it was
    assert config.load(str(tmp_path / "config.yaml"), []).checkpoint.async_ is False
    with pytest.raises(UserError, match=r"unknown config key checkpoint.async_; valid keys of checkpoint: "
                                        r".*\basync\b"):
        config.load(None, ["checkpoint.async_=true"])


def test_defaults_that_depend_on_other_keys_are_resolved_once_when_the_config_is_read():
    cfg = config.build({"model": {"context_length": 48}, "train": {"parallel": "fsdp", "grad_clip": 0}})
    assert cfg.data.stride == 48 and cfg.checkpoint.sharded is True and cfg.train.grad_clip is None
    plain = config.build({"data": {"stride": 7}, "checkpoint": {"sharded": False}})
    assert plain.data.stride == 7 and plain.checkpoint.sharded is False and plain.train.grad_clip == 1.0
    assert config.build({}).checkpoint.sharded is False  # ddp: one file
