"""FP8 matmuls for the transformer blocks' linear layers, through torchao (train.float8).

Each converted layer casts its input, weight and output gradient to float8 with scales found
on the fly (tensorwise: one scale per tensor; rowwise: one per row, more exact and slower) and
multiplies on the FP8 tensor cores of Hopper and newer GPUs; weights, gradients and optimizer
state stay as they were, so checkpoints are unchanged. The head stays in bf16: its logits feed
the softmax directly. Elsewhere (CPU, older GPUs) torchao emulates the casts, which is slow but
computes the same numbers: that is how the tests check it on a CPU.
"""

import contextlib
import dataclasses
import logging

import torch
from torch import nn

from ..distributed import print0
from ..errors import UserError


@contextlib.contextmanager
def _quiet(*logger_names: str):
    loggers = [logging.getLogger(name) for name in logger_names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def require_torchao():
    # torchao's import warns about kernels built for other GPUs, and torch about how torchao registers a type
    with _quiet("torchao", "torch.utils._pytree"):
        try:
            from torchao import float8
            from torchao.float8.float8_linear import Float8Linear
        except ImportError:
            raise UserError("train.float8 needs torchao: pip install 'gptdist[fp8]' (or set train.float8: "
                            "null)") from None
    return float8, Float8Linear


def has_fp8_tensor_cores(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 9)


def convert_linears(model: nn.Module, recipe: str, device: torch.device) -> int:
    """Swap the blocks' linear layers for torchao's Float8Linear in place; returns how many."""
    float8, Float8Linear = require_torchao()
    config = float8.Float8LinearConfig.from_recipe_name(recipe)
    if not has_fp8_tensor_cores(device):
        config = dataclasses.replace(config, emulate=True)
        print0(f"train.float8: no FP8 tensor cores on {device}: emulating FP8 matmuls (slow; for tests)")

    def eligible(module: nn.Module, name: str) -> bool:  # FP8 matmuls need dimensions divisible by 16
        return name != "out_head" and module.in_features % 16 == 0 and module.out_features % 16 == 0

    linears = sum(isinstance(m, nn.Linear) for m in model.modules())
    float8.convert_to_float8_training(model, config=config, module_filter_fn=eligible)
    converted = sum(isinstance(m, Float8Linear) for m in model.modules())
    if converted == 0:
        raise UserError(f"train.float8: none of the model's {linears} linear layers has dimensions divisible "
                        "by 16; set train.float8: null")
    return converted
