"""Hugging Face folders of models that no transformers architecture computes: gptdist's own modelling
code (model/remote/) beside the weights, named by `auto_map` in config.json.

`AutoModelForCausalLM.from_pretrained(DIR, trust_remote_code=True)` loads them with no network
and no gptdist; the weights keep gptdist's names (vocabulary rows unpadded, a tied head held
once), so reading one back is a plain copy.
"""

from importlib import resources
from pathlib import Path

import torch

from .. import config
from ..config import ModelConfig
from ..errors import UserError
from ..tokenizer import EOT_TOKEN

MODEL_TYPE = "gptdist"
CODE_FILES = ("configuration_gptdist.py", "modeling_gptdist.py")
AUTO_MAP = {"AutoConfig": "configuration_gptdist.GPTDistConfig",
            "AutoModelForCausalLM": "modeling_gptdist.GPTDistForCausalLM"}
# The model options the code reads from config.json (configuration_gptdist.py), besides
# tie_word_embeddings: every one that changes the function.
KEYS = ("vocab_size", "context_length", "emb_dim", "n_heads", "n_layers", "qkv_bias", "bias", "positions",
        "rotary_base", "norm", "qk_norm", "activation", "logit_softcap")


def code_files() -> dict[str, bytes]:
    package = resources.files("gptdist.model.remote")
    return {name: package.joinpath(name).read_bytes() for name in CODE_FILES}


def config_json(cfg: ModelConfig, dtype: torch.dtype) -> dict:
    return {"architectures": ["GPTDistForCausalLM"], "model_type": MODEL_TYPE, "auto_map": AUTO_MAP,
            **{key: getattr(cfg, key) for key in KEYS}, "tie_word_embeddings": cfg.tie_embeddings,
            "drop_rate": cfg.drop_rate, "bos_token_id": EOT_TOKEN, "eos_token_id": EOT_TOKEN,
            "use_cache": True, "torch_dtype": str(dtype).removeprefix("torch.")}


def read_config(hp: dict, path: Path) -> ModelConfig:
    """The architecture in a gptdist config.json (`hp`, read from `path`)."""
    missing = [key for key in KEYS if key not in hp]
    if missing:
        raise UserError(f"{path} lacks {', '.join(missing)}: not a config.json gptdist exported")
    model = {key: hp[key] for key in KEYS} | {"tie_embeddings": hp.get("tie_word_embeddings", False)}
    try:
        return config.build({"model": model}).model
    except UserError as err:
        raise UserError(f"{path}: {err}") from None


def weights(cfg: ModelConfig, tensors: dict[str, torch.Tensor], folder: Path) -> dict[str, torch.Tensor]:
    """gptdist's weights from the folder's tensors: a tied head, if saved too, must be the embedding."""
    head = tensors.get("out_head.weight")
    if cfg.tie_embeddings and head is not None:
        if not torch.equal(head, tensors["tok_emb.weight"]):
            raise UserError(f"{folder / 'config.json'} says tie_word_embeddings true, but the weights hold "
                            "an out_head.weight of their own")
        tensors = {name: tensor for name, tensor in tensors.items() if name != "out_head.weight"}
    return {name: tensor.float().contiguous() for name, tensor in tensors.items()}


def hf_tensors(state: dict[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().to(dtype).contiguous() for name, tensor in state.items()}
