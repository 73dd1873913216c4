"""Mixed precision: the autocast context and the gradient scaler for train.precision."""

import contextlib

import torch

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve(requested: str, device: torch.device) -> torch.dtype:
    """auto: bf16 on CUDA that supports it, fp32 otherwise."""
    if requested == "auto":
        cuda_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if cuda_bf16 else torch.float32
    return DTYPES[requested]


def autocast(dtype: torch.dtype, device: torch.device):
    """Weights stay fp32; matmuls run in `dtype` (nothing changes for fp32)."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def grad_scaler(dtype: torch.dtype, device: torch.device) -> torch.amp.GradScaler:
    """fp16 needs loss scaling against underflow; for other dtypes the scaler is a no-op."""
    return torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
