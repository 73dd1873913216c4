"""Weights from anywhere, for inference, export and continued pretraining.

One resolver: a gptdist checkpoint (a file, a sharded folder, or a run folder's newest), an
OpenAI GPT-2 size (downloaded, cached) or folder (TensorFlow files), or a Hugging Face GPT-2
folder -> (architecture, weights). The weights are in GPTModel's names with the vocabulary
rows unpadded and a tied head held once; `load_weights` puts them into a GPTModel of any
vocabulary padding and of a context up to theirs. generate, evaluate, export and
model.init_from all come through here.
"""

import argparse
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import config, distributed
from ..arguments import input_path
from ..config import PRETRAINED_KEYS, ModelConfig
from ..errors import UserError
from ..model import gpt2, hf
from ..model.gpt import GPTModel
from . import sharded, store

Weights = tuple[ModelConfig, dict[str, torch.Tensor]]


def checkpoint_file(path: str | Path) -> Path:
    """A checkpoint file or sharded checkpoint folder as given, or a run folder's newest checkpoint."""
    path = Path(path)
    if path.is_dir() and not sharded.is_sharded(path):
        found = store.checkpoint_paths(path / "checkpoints") or store.checkpoint_paths(path)
        if not found:
            raise UserError(f"{path} holds no checkpoints (looked in {path / 'checkpoints'} and {path})")
        return found[-1]
    if not path.exists():
        raise UserError(f"checkpoint {path} does not exist")
    return path


def unpadded(state: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """A GPTModel state dict as pretrained weights: vocabulary rows cut to vocab_size, a tied head once."""
    state = {**state, "tok_emb.weight": state["tok_emb.weight"][: cfg.vocab_size]}
    if cfg.tie_embeddings:
        state.pop("out_head.weight", None)
    else:
        state["out_head.weight"] = state["out_head.weight"][: cfg.vocab_size]
    return state


def from_checkpoint(path: str | Path) -> Weights:
    cfg, state, _ = read_checkpoint(path)
    return cfg, state


def read_checkpoint(path: str | Path) -> tuple[ModelConfig, dict[str, torch.Tensor], dict]:
    """The checkpoint's architecture, weights, and record: its file, step, tokens seen and run config."""
    file = checkpoint_file(path)
    payload = store.read(file)
    cfg = config.build({"model": payload["config"]["model"]}).model
    record = {"file": file, "step": payload.get("step"), "tokens_seen": payload.get("tokens_seen"),
              "config": payload["config"]}
    if payload.get("sharded"):  # torch.distributed.checkpoint loads into a model's tensors in place
        model = GPTModel(cfg)
        sharded.load_model(Path(payload["sharded"]), model)
        return cfg, unpadded(model.state_dict(), cfg), record
    return cfg, unpadded(payload["model"], cfg), record


def from_gpt2(name_or_dir: str | Path) -> Weights:
    """An OpenAI GPT-2 size (downloaded once into the cache), or a folder of OpenAI or Hugging Face files."""
    size = gpt2.size_of(str(name_or_dir))
    if size:
        return gpt2.read(gpt2.download_gpt2(size))
    folder = Path(name_or_dir)
    if gpt2.is_openai_folder(folder):
        return gpt2.read(folder)
    if hf.is_hf_folder(folder):
        return hf.read(folder)
    raise UserError(f"{name_or_dir} is neither a GPT-2 size ({', '.join(gpt2.SIZES)}) nor a folder of OpenAI "
                    f"(hparams.json) or Hugging Face ({hf.CONFIG}, {hf.WEIGHTS}) files")


def is_gpt2(spec: str | Path) -> bool:
    return bool(gpt2.size_of(str(spec))) or gpt2.is_openai_folder(spec) or hf.is_hf_folder(spec)


def _source(spec: str, ctx: distributed.Dist) -> Weights:
    """On every rank: a GPT-2 size or folder (OpenAI or Hugging Face), else a gptdist checkpoint or run;
    any failure is one line naming model.init_from. It is only read.

    A GPT-2 size is downloaded once per node; the other ranks find it cached (or stop with the
    downloading rank, if it cannot).
    """
    size = gpt2.size_of(spec)
    if size:
        distributed.stop_together(lambda: _named(spec, gpt2.download_gpt2, size), ctx, ctx.local_rank == 0)
    return _read_source(spec)


def _named(spec: str, read, *args):
    """read(*args), its failure one line naming model.init_from."""
    try:
        return read(*args)
    except UserError as err:
        raise UserError(f"model.init_from {spec}: {err}") from None


def _read_source(spec: str) -> Weights:
    """The source of _source, read by this rank (a GPT-2 size downloaded if it is not cached); a failure
    is one line naming model.init_from."""
    return _named(spec, _weights_of, spec)


def _weights_of(spec: str) -> Weights:
    if is_gpt2(spec):
        return from_gpt2(spec)
    if not Path(spec).exists():
        raise UserError(f"neither a GPT-2 size ({', '.join(gpt2.SIZES)}) nor an existing folder or "
                        "checkpoint")
    if Path(spec).is_dir() and not sharded.is_sharded(Path(spec)) and not any(
            store.checkpoint_paths(folder) for folder in (Path(spec), Path(spec) / "checkpoints")):
        raise UserError("a folder that holds no model: no gptdist checkpoint, no OpenAI hparams.json, "
                        f"no Hugging Face {hf.CONFIG} with {hf.WEIGHTS}")
    return from_checkpoint(spec)


def init_from(run: ModelConfig, ctx: distributed.Dist) -> Weights:
    """model.init_from: the run's model with its source's architecture, and the source's weights."""
    source, weights = _source(run.init_from, ctx)
    return continued(run, source), weights


def init_from_rank0(run: ModelConfig, ctx: distributed.Dist) -> tuple[ModelConfig, dict | None]:
    """model.init_from read by rank 0 alone (under fsdp, where the others take their shards from it):
    the run's model with the source's architecture on every rank, the weights on rank 0 (None on the
    others); a failure stops every rank, rank 0 saying why."""
    source, weights = distributed.on_rank0(lambda: _read_source(run.init_from), ctx) or (None, None)
    return continued(run, distributed.broadcast_object(source)), weights


def continued(run: ModelConfig, source: ModelConfig) -> ModelConfig:
    """The run's model with `source`'s architecture (the SOURCE keys; the run keeps its dropout, padding,
    init and a context up to the source's)."""
    if run.context_length > source.context_length:
        raise UserError(f"model.context_length {run.context_length} exceeds the {source.context_length} "
                        f"positions of model.init_from {run.init_from}")
    architecture = {key: getattr(source, key) for key in PRETRAINED_KEYS}
    return ModelConfig(**{**vars(run), "preset": None, **architecture})


def load_weights(model: GPTModel, state: dict[str, torch.Tensor], source: str) -> GPTModel:
    """Copy weights into `model`: positions cut to its context, vocabulary rows padded (rows never looked
    up, logits masked); every shape checked."""
    model.load_state_dict(fitted(model, state, source))
    return model


def fitted(model: GPTModel, state: dict[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """The weights as `model`'s state dict: positions cut to its context, vocabulary rows padded, a tied
    head named twice; every name and shape checked (a model on the meta device will do). The caller's
    `state` is left as it was."""
    state = dict(state)
    if "pos_emb.weight" in state:  # learned positions (model.positions), cut to the model's context
        state["pos_emb.weight"] = state["pos_emb.weight"][: model.cfg.context_length]
    for name in ("tok_emb.weight", "out_head.weight"):
        rows = state.get(name)
        if rows is not None and rows.shape[0] < model.padded_vocab:
            padding = rows.new_zeros(model.padded_vocab - rows.shape[0], *rows.shape[1:])
            state[name] = torch.cat([rows, padding])
    if model.cfg.tie_embeddings:
        state["out_head.weight"] = state["tok_emb.weight"]
    own = model.state_dict()
    if own.keys() != state.keys():
        names = sorted(own.keys() ^ state.keys())
        raise UserError(f"{source} does not fit the model: {', '.join(names[:3])} "
                        f"{'missing there' if names[0] in own else 'not in the model'}")
    for name, tensor in state.items():
        if own[name].shape != tensor.shape:
            raise UserError(f"{source}: weight {name} has shape {tuple(tensor.shape)}, the model's "
                            f"{tuple(own[name].shape)}")
    return state


def fitted_on_rank0(model: GPTModel, state: dict | None, source: str, ctx: distributed.Dist) -> dict | None:
    """`fitted` where rank 0 alone holds the weights (init_from_rank0): a misfit stops every rank."""
    return distributed.on_rank0(lambda: fitted(model, state, source), ctx)


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """--checkpoint | --gpt2 SIZE | --gpt2-dir DIR, shared by generate, evaluate and export."""
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", type=input_path,
                        help="a gptdist checkpoint (file or sharded folder), or a run folder (its newest)")
    source.add_argument("--gpt2", choices=gpt2.SIZES, help="OpenAI GPT-2 weights of this size (downloaded, "
                                                           "cached)")
    source.add_argument("--gpt2-dir", type=input_path,
                        help="a folder of OpenAI GPT-2 files, or a Hugging Face folder (GPT-2 or a gptdist "
                             "export)")


@dataclass
class Pretrained:
    """The weights of --checkpoint / --gpt2 / --gpt2-dir: their architecture, a name of their source for
    messages, and of a checkpoint its record (read_checkpoint)."""

    cfg: ModelConfig
    state: dict[str, torch.Tensor]
    source: str
    record: dict | None = None


def weights_from_arguments(args: argparse.Namespace) -> Pretrained:
    if args.checkpoint:
        cfg, state, record = read_checkpoint(args.checkpoint)
        return Pretrained(cfg, state, str(args.checkpoint), record)
    spec = args.gpt2 or args.gpt2_dir
    return Pretrained(*from_gpt2(spec), str(spec))


def model_from_arguments(args: argparse.Namespace, device: torch.device) -> GPTModel:
    weights = weights_from_arguments(args)
    return load_weights(GPTModel(weights.cfg), weights.state, weights.source).to(device).eval()
