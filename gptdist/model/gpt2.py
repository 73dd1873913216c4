"""GPT-2's layout, and OpenAI's GPT-2 weights: download the TensorFlow checkpoint and read it.

The mapping is the book's `load_weights_into_gpt` (section 5.5): c_attn is our fused
att.qkv (TensorFlow stores x @ W, torch's Linear x @ W.T, hence the transposes), qkv
bias on, context 1024, the head tied to the token embedding. `TENSORS` names every
tensor in GPTModel, Hugging Face (hf.py) and OpenAI terms; checkpoint/pretrained.py checks the shapes.
"""

import json
from pathlib import Path

import numpy as np
import torch

from .. import config
from ..errors import UserError
from ..files.download import cache_dir, download

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


def size_of(name: str) -> str | None:
    """The OpenAI size `name` means (`124M` or `gpt2-124M`), or None if it names none."""
    size = name.removeprefix("gpt2-")
    return size if size in SIZES else None


def is_openai_folder(folder: Path) -> bool:
    return (Path(folder) / "hparams.json").is_file()


# Every tensor of GPT-2 under its three names: GPTModel's, Hugging Face's GPT2LMHeadModel's and
# OpenAI's TensorFlow variable's, and whether the matrix is stored transposed there (GPT-2's
# Conv1D keeps (in, out), torch's Linear (out, in)). Import from both layouts and export read
# this one table. The head is the token embedding in GPT-2 (an untied one is HF's lm_head).
TENSORS = (
    ("tok_emb.weight", "transformer.wte.weight", "wte", False),
    ("pos_emb.weight", "transformer.wpe.weight", "wpe", False),
    ("final_norm.weight", "transformer.ln_f.weight", "ln_f/g", False),
    ("final_norm.bias", "transformer.ln_f.bias", "ln_f/b", False),
)
BLOCK_TENSORS = (  # block i: "trf_blocks.{i}.", "transformer.h.{i}.", "h{i}/"
    ("norm1.weight", "ln_1.weight", "ln_1/g", False),
    ("norm1.bias", "ln_1.bias", "ln_1/b", False),
    ("att.qkv.weight", "attn.c_attn.weight", "attn/c_attn/w", True),
    ("att.qkv.bias", "attn.c_attn.bias", "attn/c_attn/b", False),
    ("att.out_proj.weight", "attn.c_proj.weight", "attn/c_proj/w", True),
    ("att.out_proj.bias", "attn.c_proj.bias", "attn/c_proj/b", False),
    ("norm2.weight", "ln_2.weight", "ln_2/g", False),
    ("norm2.bias", "ln_2.bias", "ln_2/b", False),
    ("ff.fc.weight", "mlp.c_fc.weight", "mlp/c_fc/w", True),
    ("ff.fc.bias", "mlp.c_fc.bias", "mlp/c_fc/b", False),
    ("ff.proj.weight", "mlp.c_proj.weight", "mlp/c_proj/w", True),
    ("ff.proj.bias", "mlp.c_proj.bias", "mlp/c_proj/b", False),
)
HF_HEAD = "lm_head.weight"


def tensor_names(n_layers: int) -> list[tuple[str, str, str, bool]]:
    """(ours, Hugging Face's, OpenAI's, transposed) for every tensor of an n_layers GPT-2."""
    names = list(TENSORS)
    for i in range(n_layers):
        names += [(f"trf_blocks.{i}.{ours}", f"transformer.h.{i}.{hf}", f"h{i}/{tf}", transposed)
                  for ours, hf, tf, transposed in BLOCK_TENSORS]
    return names


def architecture(vocab_size: int, context_length: int, emb_dim: int, n_heads: int, n_layers: int,
                 tie_embeddings: bool = True) -> config.ModelConfig:
    """The ModelConfig of a GPT-2 of these sizes, as OpenAI built it: biases everywhere, no dropout."""
    return config.ModelConfig(vocab_size=vocab_size, context_length=context_length, emb_dim=emb_dim,
                              n_heads=n_heads, n_layers=n_layers, qkv_bias=True, bias=True,
                              tie_embeddings=tie_embeddings, drop_rate=0.0)


def _model_config(folder: Path) -> config.ModelConfig:
    try:
        hparams = json.loads((Path(folder) / "hparams.json").read_text())
        return architecture(hparams["n_vocab"], hparams["n_ctx"], hparams["n_embd"], hparams["n_head"],
                            hparams["n_layer"])
    except (OSError, ValueError, KeyError) as err:
        problem = f"{type(err).__name__}: {err}"
        raise UserError(f"{folder}/hparams.json is missing or malformed ({problem})") from None


def _tf_variables(folder: Path) -> dict[str, np.ndarray]:
    try:
        import tensorflow as tf
    except ImportError:
        raise UserError("reading OpenAI's TensorFlow checkpoints needs tensorflow: pip install "
                        "'gptdist[gpt2]'; or use the same weights as a Hugging Face folder (huggingface-cli "
                        "download gpt2)") from None
    ckpt = tf.train.latest_checkpoint(str(folder)) or str(Path(folder) / "model.ckpt")
    try:
        names = [name for name, _ in tf.train.list_variables(ckpt)]
        return {name: np.asarray(tf.train.load_variable(ckpt, name)) for name in names}
    except Exception as err:  # tensorflow's errors: missing or unreadable checkpoint files
        raise UserError(f"cannot read the TensorFlow checkpoint in {folder} ({type(err).__name__})") from None


def openai_state_dict(variables: dict[str, np.ndarray], n_layers: int) -> dict[str, torch.Tensor]:
    """OpenAI's variable names and layouts -> GPTModel's names (TF conv1d weights are (1, in, out))."""
    v = {name.removeprefix("model/"): array for name, array in variables.items()}
    state = {}
    for ours, _, theirs, transposed in tensor_names(n_layers):
        array = v.pop(theirs)
        state[ours] = array.squeeze(0).T if transposed else array
    if v:
        raise UserError(f"unexpected variables in the GPT-2 checkpoint: {', '.join(sorted(v)[:5])}")
    return {name: torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
            for name, array in state.items()}


def read(folder: Path) -> tuple[config.ModelConfig, dict[str, torch.Tensor]]:
    """The architecture and weights of the OpenAI checkpoint in `folder` (hparams.json + TF files)."""
    cfg = _model_config(folder)
    try:
        return cfg, openai_state_dict(_tf_variables(folder), cfg.n_layers)
    except KeyError as err:
        raise UserError(f"the GPT-2 checkpoint in {folder} lacks variable {err}") from None
