"""OpenAI's GPT-2 weights: download the TensorFlow checkpoint and map it into GPTModel.

The mapping is the book's `load_weights_into_gpt` (section 5.5): c_attn is our fused
att.qkv (TensorFlow stores x @ W, torch's Linear x @ W.T, hence the transposes), qkv
bias on, context 1024, the head tied to the token embedding. Every shape is checked.
"""

import json
from pathlib import Path

import numpy as np
import torch

from . import config
from .download import cache_dir, download
from .errors import UserError
from .model import GPTModel

SIZES = ("124M", "355M", "774M", "1558M")
FILES = ("checkpoint", "encoder.json", "hparams.json", "model.ckpt.data-00000-of-00001", "model.ckpt.index",
         "model.ckpt.meta", "vocab.bpe")
MIRRORS = ("https://openaipublic.blob.core.windows.net/gpt-2/models/{size}/{file}",
           "https://f001.backblazeb2.com/file/LLMs-from-scratch/gpt2/{size}/{file}")
# Sizes known for certain; the others are checked against what the server announces.
KNOWN_SIZES = {"encoder.json": 1042301, "vocab.bpe": 456318}


def download_gpt2(size: str, folder: Path | None = None) -> Path:
    """The seven files of an OpenAI GPT-2 size in `folder` (default: the cache), downloaded if missing."""
    if size not in SIZES:
        raise UserError(f"unknown GPT-2 size {size!r}; sizes: {', '.join(SIZES)}")
    folder = Path(folder or cache_dir() / "gpt2" / size)
    for name in FILES:
        urls = [mirror.format(size=size, file=name) for mirror in MIRRORS]
        download(urls, folder / name, size=KNOWN_SIZES.get(name))
    return folder


def resolve(name_or_dir: str) -> Path:
    """`gpt2-124M` / `124M` (downloaded and cached) or a folder already holding the files."""
    size = name_or_dir.removeprefix("gpt2-")
    if size in SIZES:
        return download_gpt2(size)
    folder = Path(name_or_dir)
    if not (folder / "hparams.json").is_file():
        raise UserError(f"{name_or_dir!r} is neither a GPT-2 size ({', '.join(SIZES)}) nor a folder with hparams.json")
    return folder


def model_config(folder: Path, base: config.ModelConfig | None = None) -> config.ModelConfig:
    """The GPTModel architecture of a checkpoint folder (hparams.json); dropout and context from `base`."""
    try:
        hparams = json.loads((Path(folder) / "hparams.json").read_text())
        arch = dict(vocab_size=hparams["n_vocab"], context_length=hparams["n_ctx"], emb_dim=hparams["n_embd"],
                    n_heads=hparams["n_head"], n_layers=hparams["n_layer"])
    except (OSError, ValueError, KeyError) as err:
        raise UserError(f"{folder}/hparams.json is missing or malformed ({type(err).__name__}: {err})") from None
    if base is None:
        base = config.ModelConfig(drop_rate=0.0)
    elif base.context_length <= arch["context_length"]:  # a shorter context keeps the first positions
        arch["context_length"] = base.context_length
    else:
        raise UserError(f"model.context_length {base.context_length} exceeds GPT-2's {arch['context_length']}")
    openai = {"preset": None, "qkv_bias": True, "bias": True, "tie_embeddings": True}  # how GPT-2 was built
    return config.ModelConfig(**{**vars(base), **arch, **openai})


def _tf_variables(folder: Path) -> dict[str, np.ndarray]:
    try:
        import tensorflow as tf
    except ImportError:
        raise UserError("reading OpenAI's TensorFlow checkpoints needs tensorflow: pip install 'gptdist[gpt2]'") from None
    ckpt = tf.train.latest_checkpoint(str(folder)) or str(Path(folder) / "model.ckpt")
    try:
        names = [name for name, _ in tf.train.list_variables(ckpt)]
        return {name: np.asarray(tf.train.load_variable(ckpt, name)) for name in names}
    except Exception as err:  # tensorflow's errors: missing or unreadable checkpoint files
        raise UserError(f"cannot read the TensorFlow checkpoint in {folder} ({type(err).__name__})") from None


def openai_state_dict(variables: dict[str, np.ndarray], n_layers: int) -> dict[str, torch.Tensor]:
    """OpenAI's variable names and layouts -> GPTModel's state dict."""
    v = {name.removeprefix("model/"): array for name, array in variables.items()}

    def matrix(name):  # TF conv1d weights are (1, in, out); Linear wants (out, in)
        return v.pop(name).squeeze(0).T

    state = {"tok_emb.weight": v["wte"], "pos_emb.weight": v.pop("wpe"), "out_head.weight": v.pop("wte"),
             "final_norm.weight": v.pop("ln_f/g"), "final_norm.bias": v.pop("ln_f/b")}
    for i in range(n_layers):
        ours, theirs = f"trf_blocks.{i}.", f"h{i}/"
        state.update({
            ours + "norm1.weight": v.pop(theirs + "ln_1/g"), ours + "norm1.bias": v.pop(theirs + "ln_1/b"),
            ours + "att.qkv.weight": matrix(theirs + "attn/c_attn/w"), ours + "att.qkv.bias": v.pop(theirs + "attn/c_attn/b"),
            ours + "att.out_proj.weight": matrix(theirs + "attn/c_proj/w"),
            ours + "att.out_proj.bias": v.pop(theirs + "attn/c_proj/b"),
            ours + "norm2.weight": v.pop(theirs + "ln_2/g"), ours + "norm2.bias": v.pop(theirs + "ln_2/b"),
            ours + "ff.layers.0.weight": matrix(theirs + "mlp/c_fc/w"), ours + "ff.layers.0.bias": v.pop(theirs + "mlp/c_fc/b"),
            ours + "ff.layers.2.weight": matrix(theirs + "mlp/c_proj/w"),
            ours + "ff.layers.2.bias": v.pop(theirs + "mlp/c_proj/b"),
        })
    if v:
        raise UserError(f"unexpected variables in the GPT-2 checkpoint: {', '.join(sorted(v)[:5])}")
    return {name: torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)) for name, array in state.items()}


def load_into(model: GPTModel, folder: Path) -> GPTModel:
    """Copy the checkpoint in `folder` into `model`, checking every shape (position table may be cut short)."""
    try:
        state = openai_state_dict(_tf_variables(folder), model.cfg.n_layers)
    except KeyError as err:
        raise UserError(f"the GPT-2 checkpoint in {folder} lacks variable {err}") from None
    state["pos_emb.weight"] = state["pos_emb.weight"][: model.cfg.context_length]
    padding = model.padded_vocab - state["tok_emb.weight"].shape[0]
    if padding > 0:  # rows past the vocabulary are never looked up and their logits are cut off
        state["tok_emb.weight"] = torch.cat([state["tok_emb.weight"], state["tok_emb.weight"].new_zeros(padding, model.cfg.emb_dim)])
        state["out_head.weight"] = state["tok_emb.weight"]
    own = model.state_dict()
    for name, tensor in state.items():
        if own[name].shape != tensor.shape:
            raise UserError(f"GPT-2 weight {name}: checkpoint shape {tuple(tensor.shape)}, "
                            f"model shape {tuple(own[name].shape)}")
    model.load_state_dict(state)
    return model


def load_openai_gpt2(folder: str | Path, base: config.ModelConfig | None = None) -> GPTModel:
    """A GPTModel holding the OpenAI GPT-2 weights stored in `folder`."""
    folder = Path(folder)
    return load_into(GPTModel(model_config(folder, base)), folder).eval()
