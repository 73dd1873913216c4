"""The optimizer (optim.optimizer): AdamW, fused on every device, weight decay on matrices only; or
Muon for the blocks' matrices with that AdamW for the rest (muon.py).

Fused, because the fused kernels can skip a step on the device when `found_inf` is set (the
non-finite guard relies on it; the foreach implementation refuses the flag), and because on a
CPU they are several times faster than foreach.
"""

import torch
from torch import nn

from ..config import OptimConfig
from .muon import MuonAdamW


def decay_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW parameter groups: weight decay on matrices (>= 2 dims) only, not on biases or norms."""
    params = [p for p in model.parameters() if p.requires_grad]
    return [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]


def stay_fused(optimizer: torch.optim.Optimizer, state_dict: dict) -> dict:
    # A checkpoint keeps its param groups' implementation flags, and loading it would bring them
    # back: older checkpoints were saved by a foreach AdamW on CPU.
    for group in state_dict["param_groups"]:
        group["fused"], group["foreach"] = True, None
    return state_dict


def adamw(model: nn.Module, cfg: OptimConfig) -> torch.optim.AdamW:
    optimizer = torch.optim.AdamW(decay_groups(model, cfg.weight_decay), lr=cfg.lr, betas=cfg.betas,
                                  fused=True)
    optimizer.register_load_state_dict_pre_hook(stay_fused)
    return optimizer


def build(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    """optim.optimizer's optimizer for `model`: AdamW, or Muon for the 2-D matrices of the blocks (the
    hidden ones) with AdamW for the embeddings, the head, the norms' gains and the biases."""
    if cfg.optimizer == "adamw":
        return adamw(model, cfg)
    hidden = {id(p) for p in model.trf_blocks.parameters() if p.dim() == 2 and p.requires_grad}
    groups = [{**group, "params": [p for p in group["params"] if id(p) not in hidden]}
              for group in decay_groups(model, cfg.weight_decay)]
    optimizer = MuonAdamW([p for p in model.parameters() if id(p) in hidden], groups, cfg.muon_lr,
                          cfg.muon_momentum, cfg.muon_weight_decay, cfg.lr, cfg.betas)
    optimizer.register_load_state_dict_pre_hook(stay_fused)
    return optimizer
