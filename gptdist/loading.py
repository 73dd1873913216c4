"""Models for inference: from a gptdist checkpoint (or a run folder's newest one) or OpenAI GPT-2."""

import argparse
from pathlib import Path

import torch

from . import checkpoint, config, gpt2, sharded_checkpoint
from .errors import UserError
from .model import GPTModel


def checkpoint_file(path: str | Path) -> Path:
    """A checkpoint file or sharded checkpoint folder as given, or a run folder's newest checkpoint."""
    path = Path(path)
    if path.is_dir() and not sharded_checkpoint.is_sharded(path):
        found = checkpoint.checkpoint_paths(path / "checkpoints") or checkpoint.checkpoint_paths(path)
        if not found:
            raise UserError(f"{path} holds no checkpoints (looked in {path / 'checkpoints'} and {path})")
        return found[-1]
    if not path.exists():
        raise UserError(f"checkpoint {path} does not exist")
    return path


def model_from_checkpoint(path: str | Path) -> GPTModel:
    payload = checkpoint.read(checkpoint_file(path))
    model = GPTModel(config.build({"model": payload["config"]["model"]}).model)
    if payload.get("sharded"):
        sharded_checkpoint.load_model(Path(payload["sharded"]), model)
    else:
        model.load_state_dict(payload["model"])
    return model


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """--checkpoint | --gpt2 SIZE | --gpt2-dir DIR, shared by generate and evaluate."""
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="a gptdist checkpoint (file or sharded folder), or a run folder (its newest)")
    source.add_argument("--gpt2", choices=gpt2.SIZES, help="OpenAI GPT-2 weights of this size (downloaded, cached)")
    source.add_argument("--gpt2-dir", help="a folder already holding OpenAI GPT-2 files")


def model_from_arguments(args: argparse.Namespace, device: torch.device) -> GPTModel:
    if args.checkpoint:
        model = model_from_checkpoint(args.checkpoint)
    else:
        model = gpt2.load_openai_gpt2(gpt2.download_gpt2(args.gpt2) if args.gpt2 else gpt2.resolve(args.gpt2_dir))
    return model.to(device).eval()
