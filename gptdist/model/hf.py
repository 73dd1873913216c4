"""Hugging Face folders: read one into gptdist, write one from gptdist's weights.

A GPT-2 folder as `huggingface-cli download gpt2` or `GPT2LMHeadModel.save_pretrained` leaves it:
config.json (model_type gpt2) and model.safetensors, or shards listed in
model.safetensors.index.json. Tensor names come from gpt2.TENSORS, the table OpenAI's checkpoints
are read with too. A model with rotary positions and GPT-2's other choices is written as
transformers' GPT-NeoX (hf_neox.py); one that no transformers architecture computes (RMSNorm,
QK-norm, ReLU², a soft-cap) with gptdist's own modelling code (model_type gptdist: hf_remote.py).
Reading and writing need safetensors only, not transformers. A folder gptdist writes also holds
GPT-2's tokenizer (vocab.json, merges.txt, tokenizer_config.json) and a model card (README.md), so
that AutoModelForCausalLM and AutoTokenizer load it offline and `huggingface-cli upload` is all that
remains.
"""

import json
import math
from pathlib import Path

import torch

from ..config import ModelConfig
from ..errors import UserError
from ..tokenizer import BPE_FILES, EOT_TOKEN, GPT2_VOCAB_SIZE, bpe_files
from . import gpt2, hf_neox, hf_remote

EOT_TEXT = "<|endoftext|>"
CONFIG = "config.json"
WEIGHTS = "model.safetensors"
WEIGHTS_INDEX = "model.safetensors.index.json"
TOKENIZER_CONFIG = "tokenizer_config.json"
MODEL_CARD = "README.md"
# Buffers some GPT-2 files carry besides the weights: the causal mask, rebuilt by every model.
MASK_BUFFERS = (".attn.bias", ".attn.masked_bias")
# What GPTModel computes, as GPT-2 config values; a file asking for anything else is refused.
GELU_TANH = ("gelu_new", "gelu_pytorch_tanh")
LAYER_NORM_EPS = 1e-5


def safetensors_torch():
    try:
        import safetensors.torch
    except ImportError:
        raise UserError("Hugging Face folders need safetensors: pip install 'gptdist[hf]'") from None
    return safetensors.torch


def is_hf_folder(folder: Path) -> bool:
    folder = Path(folder)
    weights = (folder / WEIGHTS).is_file() or (folder / WEIGHTS_INDEX).is_file()
    return (folder / CONFIG).is_file() and weights


def _read_config(folder: Path) -> tuple[ModelConfig, str]:
    """The folder's architecture and model_type (gpt2 or gptdist)."""
    path = folder / CONFIG
    try:
        hp = json.loads(path.read_text())
        for other in (hf_remote, hf_neox):
            if hp.get("model_type") == other.MODEL_TYPE:
                return other.read_config(hp, path), other.MODEL_TYPE
        if hp.get("model_type") != "gpt2":
            raise UserError(f"{path}: model_type {hp.get('model_type')!r} is none of gpt2, gpt_neox, "
                            "gptdist; only those load")
        cfg = gpt2.architecture(hp["vocab_size"], hp["n_positions"], hp["n_embd"], hp["n_head"],
                                hp["n_layer"], tie_embeddings=hp.get("tie_word_embeddings", True))
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise UserError(f"{path} is missing or malformed ({type(err).__name__}: {err})") from None
    differences = {
        "n_inner": (hp.get("n_inner"), (None, 4 * cfg.emb_dim)),
        "activation_function": (hp.get("activation_function", "gelu_new"), GELU_TANH),
        "scale_attn_weights": (hp.get("scale_attn_weights", True), (True,)),
        "scale_attn_by_inverse_layer_idx": (hp.get("scale_attn_by_inverse_layer_idx", False), (False,)),
    }
    for key, (value, supported) in differences.items():
        if value not in supported:
            raise UserError(f"{path}: {key} {value!r} is not GPT-2's ({', '.join(map(repr, supported))}): "
                            "gptdist's model cannot compute it")
    if not math.isclose(hp.get("layer_norm_epsilon", LAYER_NORM_EPS), LAYER_NORM_EPS):
        raise UserError(f"{path}: layer_norm_epsilon {hp['layer_norm_epsilon']} is not GPT-2's "
                        f"{LAYER_NORM_EPS}")
    return cfg, "gpt2"


def _read_tensors(folder: Path) -> dict[str, torch.Tensor]:
    load_file = safetensors_torch().load_file
    files = [WEIGHTS]
    if not (folder / WEIGHTS).is_file():  # sharded: the index maps every tensor to its file
        try:
            files = sorted(set(json.loads((folder / WEIGHTS_INDEX).read_text())["weight_map"].values()))
        except (OSError, ValueError, KeyError, AttributeError) as err:
            raise UserError(f"{folder / WEIGHTS_INDEX} is malformed ({type(err).__name__}: {err})") from None
    tensors = {}
    for name in files:
        try:
            tensors.update(load_file(folder / name))
        except Exception as err:  # safetensors raises its own error types for damaged files
            raise UserError(f"cannot read {folder / name} ({type(err).__name__}: {err})") from None
    return tensors


def read(folder: Path) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """The architecture and fp32 weights (GPTModel's names) of the model in a Hugging Face folder."""
    folder = Path(folder)
    cfg, model_type = _read_config(folder)
    for other in (hf_remote, hf_neox):
        if model_type == other.MODEL_TYPE:
            return cfg, other.weights(cfg, _read_tensors(folder), folder)
    # save_pretrained of GPT2LMHeadModel prefixes "transformer."; the hub's gpt2 files were saved without it.
    tensors = {name if name.startswith(("transformer.", gpt2.HF_HEAD)) else "transformer." + name: tensor
               for name, tensor in _read_tensors(folder).items() if not name.endswith(MASK_BUFFERS)}
    state = {}
    try:
        for ours, theirs, _, transposed in gpt2.tensor_names(cfg.n_layers):
            tensor = tensors.pop(theirs)
            state[ours] = tensor.T if transposed else tensor
    except KeyError as err:
        raise UserError(f"the GPT-2 weights in {folder} lack tensor {err}") from None
    head = tensors.pop(gpt2.HF_HEAD, None)  # tied: absent, or the token embedding once more
    if cfg.tie_embeddings and head is not None and not torch.equal(head, state["tok_emb.weight"]):
        raise UserError(f"{folder / CONFIG} says tie_word_embeddings true, but the weights hold a "
                        f"{gpt2.HF_HEAD} of their own; set it to false there if the head is untied")
    if not cfg.tie_embeddings:
        if head is None:
            raise UserError(f"the GPT-2 weights in {folder} lack tensor {gpt2.HF_HEAD!r} "
                            "(config.json: tie_word_embeddings false)")
        state["out_head.weight"] = head
    if tensors:
        raise UserError(f"unexpected tensors in {folder}: {', '.join(sorted(tensors)[:5])}")
    return cfg, {name: tensor.float().contiguous() for name, tensor in state.items()}


def config_json(cfg: ModelConfig, dtype: torch.dtype) -> dict:
    """transformers' GPT2Config of a GPTModel: the same function, dropout kept for fine-tuning."""
    return {
        "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
        "vocab_size": cfg.vocab_size, "n_positions": cfg.context_length, "n_embd": cfg.emb_dim,
        "n_layer": cfg.n_layers, "n_head": cfg.n_heads, "n_inner": None, "activation_function": "gelu_new",
        "layer_norm_epsilon": LAYER_NORM_EPS, "resid_pdrop": cfg.drop_rate, "embd_pdrop": cfg.drop_rate,
        "attn_pdrop": cfg.drop_rate, "initializer_range": 0.02, "scale_attn_weights": True, "use_cache": True,
        "bos_token_id": EOT_TOKEN, "eos_token_id": EOT_TOKEN, "tie_word_embeddings": cfg.tie_embeddings,
        "torch_dtype": str(dtype).removeprefix("torch."),
    }


def hf_tensors(cfg: ModelConfig, state: dict[str, torch.Tensor],
               dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """GPTModel's weights (vocabulary rows unpadded) under Hugging Face's names and layouts.

    GPT-2 has every bias; a GPTModel built without some (model.qkv_bias / model.bias false) gets
    zero ones, which compute the same function.
    """
    tensors = {}
    for ours, theirs, _, transposed in gpt2.tensor_names(cfg.n_layers):
        tensor = state.get(ours)
        if tensor is None and ours.endswith(".bias"):
            tensor = torch.zeros(state[ours.removesuffix("bias") + "weight"].shape[0])
        tensors[theirs] = tensor.T if transposed else tensor
    if not cfg.tie_embeddings:
        tensors[gpt2.HF_HEAD] = state["out_head.weight"]
    return {name: tensor.detach().to(dtype).contiguous() for name, tensor in tensors.items()}


# The model options a transformers GPT-2 computes only at their defaults (GPT-2's own).
FUNCTION_KEYS = ("positions", "norm", "qk_norm", "activation", "logit_softcap")
# What an export of a model is, by the transformers class that computes its function. No transformers
# architecture computes RMSNorm, QK-norm, ReLU² or a soft-cap together with the rest of gptdist's model
# (Llama's MLP is gated, its norm's epsilon sits elsewhere; nanochat's norms have no gains).
ARCHITECTURES = {"gpt2": "transformers' GPT-2 (`GPT2LMHeadModel`)",
                 hf_neox.MODEL_TYPE: "transformers' GPT-NeoX (`GPTNeoXForCausalLM`)",
                 hf_remote.MODEL_TYPE: "gptdist's own architecture (its modelling code is in this folder: "
                                       "`modeling_gptdist.py`, loaded with trust_remote_code=True)"}


def architecture(cfg: ModelConfig) -> str:
    """The model_type an export of `cfg` has: gpt2, gpt_neox, or gptdist (its own code)."""
    gpt2_model = ModelConfig()
    if all(getattr(cfg, key) == getattr(gpt2_model, key) for key in FUNCTION_KEYS):
        return "gpt2"
    return hf_neox.MODEL_TYPE if hf_neox.computes(cfg) else hf_remote.MODEL_TYPE


def check_exportable(cfg: ModelConfig) -> None:
    """Refuse, in one line, what cannot go out with GPT-2's tokenizer."""
    if cfg.vocab_size < GPT2_VOCAB_SIZE:
        raise UserError(f"model.vocab_size {cfg.vocab_size} is smaller than the GPT-2 tokenizer's "
                        f"{GPT2_VOCAB_SIZE} tokens: the exported tokenizer would produce ids the model lacks")


def tokenizer_files(context_length: int) -> dict[str, bytes]:
    """GPT-2's tokenizer as transformers reads it: the BPE files and a config naming the special token."""
    settings = {"tokenizer_class": "GPT2Tokenizer", "model_max_length": context_length, "bos_token": EOT_TEXT,
                "eos_token": EOT_TEXT, "unk_token": EOT_TEXT, "add_prefix_space": False,
                "add_bos_token": False}
    return {**bpe_files(), TOKENIZER_CONFIG: json.dumps(settings, indent=2).encode() + b"\n"}


def files_not_exported(folder: Path) -> list[str]:
    """The entries of `folder` that an export never writes (`write`'s files are config.json,
    model.safetensors, the tokenizer's, the model card and the modelling code)."""
    exported = {CONFIG, WEIGHTS, TOKENIZER_CONFIG, MODEL_CARD, *BPE_FILES, *hf_remote.CODE_FILES}
    return sorted(entry.name for entry in folder.iterdir()
                  if entry.name not in exported or not entry.is_file())


def write(folder: Path, cfg: ModelConfig, state: dict[str, torch.Tensor], dtype: torch.dtype,
          tokenizer: dict[str, bytes], card: str) -> None:
    """config.json and model.safetensors of `cfg`/`state` (as `architecture` says: GPT-2, GPT-NeoX, or
    gptdist's modelling code beside them), the `tokenizer` files (`tokenizer_files`) and the model
    `card`, into the (new) `folder`."""
    save_file = safetensors_torch().save_file
    kind = architecture(cfg)
    if kind == "gpt2":
        config, tensors, code = config_json(cfg, dtype), hf_tensors(cfg, state, dtype), {}
    elif kind == hf_neox.MODEL_TYPE:
        config, tensors, code = hf_neox.config_json(cfg, dtype), hf_neox.hf_tensors(cfg, state, dtype), {}
    else:
        config, tensors = hf_remote.config_json(cfg, dtype), hf_remote.hf_tensors(state, dtype)
        code = hf_remote.code_files()
    (folder / CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    save_file(tensors, folder / WEIGHTS, metadata={"format": "pt"})
    for name, content in {**tokenizer, **code}.items():
        (folder / name).write_bytes(content)
    (folder / MODEL_CARD).write_text(card)
