"""Hugging Face GPT-NeoX folders: the architecture in transformers that computes a gptdist model with
rotary positions and GPT-2's other choices (LayerNorm, GELU, no QK-norm, no soft-cap), once NeoX's
parallel residual is off and its rotary covers every channel.

NeoX lays out its fused query/key/value rows head by head ((head, q|k|v, channel)) where gptdist
lays them out q, k, v first ((q|k|v, head, channel)); its LayerNorms and linear layers always have
biases (zero ones where the model has none: the same function). A NeoX folder that computes
something else (Pythia's parallel residual and partial rotary, another activation) is refused
in one line naming the key.
"""

import math
from pathlib import Path

import torch

from .. import config
from ..config import ModelConfig
from ..errors import UserError
from ..tokenizer import EOT_TOKEN

MODEL_TYPE = "gpt_neox"
GELU_TANH = ("gelu_new", "gelu_pytorch_tanh")
LAYER_NORM_EPS = 1e-5
PREFIX = "gpt_neox."
HEAD = "embed_out.weight"  # transformers 5 calls it lm_head and reads this name too


def computes(cfg: ModelConfig) -> bool:
    """Whether transformers' GPTNeoXForCausalLM computes `cfg`'s function."""
    return (cfg.positions == "rotary" and cfg.norm == "layernorm" and not cfg.qk_norm
            and cfg.activation == "gelu" and cfg.logit_softcap is None)


def config_json(cfg: ModelConfig, dtype: torch.dtype) -> dict:
    return {
        "architectures": ["GPTNeoXForCausalLM"], "model_type": MODEL_TYPE, "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.emb_dim, "num_hidden_layers": cfg.n_layers, "num_attention_heads": cfg.n_heads,
        "intermediate_size": 4 * cfg.emb_dim, "hidden_act": "gelu_new",
        "max_position_embeddings": cfg.context_length,
        # transformers 4 reads these two; 5 turns them into its rope_parameters
        "rotary_pct": 1.0, "rotary_emb_base": cfg.rotary_base,
        "use_parallel_residual": False, "attention_bias": True, "layer_norm_eps": LAYER_NORM_EPS,
        "attention_dropout": cfg.drop_rate, "hidden_dropout": cfg.drop_rate, "initializer_range": 0.02,
        "tie_word_embeddings": cfg.tie_embeddings, "bos_token_id": EOT_TOKEN, "eos_token_id": EOT_TOKEN,
        "use_cache": True, "torch_dtype": str(dtype).removeprefix("torch."),
    }


def layer_names(layer: int) -> list[tuple[str, str]]:
    """(gptdist's name, NeoX's name) of one block's tensors, weights and biases."""
    ours, theirs = f"trf_blocks.{layer}.", f"{PREFIX}layers.{layer}."
    pairs = [("norm1", "input_layernorm"), ("norm2", "post_attention_layernorm"),
             ("att.qkv", "attention.query_key_value"), ("att.out_proj", "attention.dense"),
             ("ff.fc", "mlp.dense_h_to_4h"), ("ff.proj", "mlp.dense_4h_to_h")]
    return [(f"{ours}{a}.{kind}", f"{theirs}{b}.{kind}") for a, b in pairs for kind in ("weight", "bias")]


def tensor_names(cfg: ModelConfig) -> list[tuple[str, str]]:
    names = [("tok_emb.weight", f"{PREFIX}embed_in.weight")]
    names += [pair for layer in range(cfg.n_layers) for pair in layer_names(layer)]
    names += [("final_norm.weight", f"{PREFIX}final_layer_norm.weight"),
              ("final_norm.bias", f"{PREFIX}final_layer_norm.bias")]
    return names + ([] if cfg.tie_embeddings else [("out_head.weight", HEAD)])


def qkv_rows(tensor: torch.Tensor, heads: int, to_neox: bool) -> torch.Tensor:
    """The fused qkv rows (weight or bias) reordered between gptdist's (q|k|v, head, channel) and NeoX's
    (head, q|k|v, channel)."""
    rest = tensor.shape[1:]
    first, second = (3, heads) if to_neox else (heads, 3)
    return tensor.reshape(first, second, -1, *rest).transpose(0, 1).reshape(-1, *rest)


def hf_tensors(cfg: ModelConfig, state: dict[str, torch.Tensor],
               dtype: torch.dtype) -> dict[str, torch.Tensor]:
    tensors = {}
    for ours, theirs in tensor_names(cfg):
        tensor = state.get(ours)
        if tensor is None:  # a bias the model has none of: zero
            tensor = torch.zeros(state[ours.removesuffix("bias") + "weight"].shape[0])
        if ".att.qkv." in ours:
            tensor = qkv_rows(tensor, cfg.n_heads, to_neox=True)
        tensors[theirs] = tensor.detach().to(dtype).contiguous()
    return tensors


def read_config(hp: dict, path: Path) -> ModelConfig:
    """The gptdist model a NeoX config.json describes, or one line naming what gptdist cannot compute."""
    rope = hp.get("rope_parameters") or {}
    found = {"use_parallel_residual": (hp.get("use_parallel_residual", True), (False,)),
             "rotary_pct": (rope.get("partial_rotary_factor", hp.get("rotary_pct", 0.25)), (1, 1.0)),
             "hidden_act": (hp.get("hidden_act", "gelu"), GELU_TANH),
             "intermediate_size": (hp.get("intermediate_size"), (4 * hp.get("hidden_size", 0),))}
    for key, (value, supported) in found.items():
        if value not in supported:
            raise UserError(f"{path}: {key} {value!r} is not what gptdist's model computes "
                            f"({', '.join(map(repr, supported))})")
    if not math.isclose(hp.get("layer_norm_eps", LAYER_NORM_EPS), LAYER_NORM_EPS):
        raise UserError(f"{path}: layer_norm_eps {hp['layer_norm_eps']} is not gptdist's {LAYER_NORM_EPS}")
    try:
        model = {"vocab_size": hp["vocab_size"], "context_length": hp["max_position_embeddings"],
                 "emb_dim": hp["hidden_size"], "n_heads": hp["num_attention_heads"],
                 "n_layers": hp["num_hidden_layers"], "positions": "rotary", "qkv_bias": True, "bias": True,
                 "rotary_base": float(rope.get("rope_theta", hp.get("rotary_emb_base", 10000.0))),
                 "tie_embeddings": hp.get("tie_word_embeddings", False)}
        return config.build({"model": model}).model
    except KeyError as err:
        raise UserError(f"{path} lacks {err}") from None
    except UserError as err:
        raise UserError(f"{path}: {err}") from None


def weights(cfg: ModelConfig, tensors: dict[str, torch.Tensor], folder: Path) -> dict[str, torch.Tensor]:
    """gptdist's weights from a NeoX folder's tensors (a saved rotary table or causal mask ignored)."""
    tensors = {name: tensor for name, tensor in tensors.items()
               if not name.endswith((".rotary_emb.inv_freq", ".attention.bias", ".attention.masked_bias"))}
    if "lm_head.weight" in tensors:  # transformers 5's name for the head
        tensors[HEAD] = tensors.pop("lm_head.weight")
    head = tensors.pop(HEAD, None)
    embedding = tensors.get(f"{PREFIX}embed_in.weight")
    if cfg.tie_embeddings and head is not None and not torch.equal(head, embedding):
        raise UserError(f"{folder / 'config.json'} says tie_word_embeddings true, but the weights hold a "
                        "head of their own")
    if not cfg.tie_embeddings:
        if head is None:
            raise UserError(f"the GPT-NeoX weights in {folder} lack the head ({HEAD})")
        tensors[HEAD] = head
    state = {}
    try:
        for ours, theirs in tensor_names(cfg):
            tensor = tensors.pop(theirs)
            state[ours] = qkv_rows(tensor, cfg.n_heads, to_neox=False) if ".att.qkv." in ours else tensor
    except KeyError as err:
        raise UserError(f"the GPT-NeoX weights in {folder} lack tensor {err}") from None
    if tensors:
        raise UserError(f"unexpected tensors in {folder}: {', '.join(sorted(tensors)[:5])}")
    return {name: tensor.float().contiguous() for name, tensor in state.items()}
