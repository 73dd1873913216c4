"""Models for inference: from a gptdist checkpoint (or a run folder's newest one)."""

from pathlib import Path

import torch

from . import checkpoint, config
from .errors import UserError
from .model import GPTModel


def checkpoint_file(path: str | Path) -> Path:
    """A checkpoint file as given, or a run folder's newest checkpoint."""
    path = Path(path)
    if path.is_dir():
        found = checkpoint.checkpoint_paths(path / "checkpoints") or checkpoint.checkpoint_paths(path)
        if not found:
            raise UserError(f"{path} holds no checkpoints (looked in {path / 'checkpoints'} and {path})")
        return found[-1]
    if not path.exists():
        raise UserError(f"checkpoint {path} does not exist")
    return path


def model_from_checkpoint(path: str | Path, device: torch.device) -> GPTModel:
    payload = checkpoint.read(checkpoint_file(path))
    model_cfg = config.build({"model": payload["config"]["model"]}).model
    model = GPTModel(model_cfg)
    model.load_state_dict(payload["model"])
    return model.to(device).eval()
