"""Mixed precision: the autocast context and the gradient scaler for train.precision, and the
device's process-wide settings."""

import contextlib
from dataclasses import dataclass

import torch

from ..config import TrainConfig
from . import heap

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve(requested: str, device: torch.device) -> torch.dtype:
    """auto: bf16 on CUDA that supports it, fp32 otherwise."""
    if requested == "auto":
        cuda_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if cuda_bf16 else torch.float32
    return DTYPES[requested]


def name(dtype: torch.dtype) -> str:
    """fp32, bf16 and fp16 as torch names them: float32, bfloat16, float16."""
    return str(dtype).removeprefix("torch.")


def autocast(dtype: torch.dtype, device: torch.device):
    """Weights stay fp32; matmuls run in `dtype` (nothing changes for fp32)."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def grad_scaler(dtype: torch.dtype, device: torch.device) -> torch.amp.GradScaler:
    """fp16 needs loss scaling against underflow; for other dtypes the scaler is a no-op."""
    return torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)


def configure_device(cfg: TrainConfig, device: torch.device) -> None:
    """TF32 matmuls on CUDA (train.tf32: fp32 on tensor cores, a 10-bit mantissa); on a CPU, freed
    large blocks kept for reuse (train.reuse_host_memory)."""
    if device.type == "cuda" and cfg.tf32:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if device.type == "cpu" and cfg.reuse_host_memory:
        heap.keep_freed_memory()


@dataclass
class Precision:
    """train.precision as a run uses it: the dtype its matmuls run in, the autocast context that makes
    them so, and the gradient scaler (on for fp16 only)."""

    dtype: torch.dtype
    autocast: contextlib.AbstractContextManager
    scaler: torch.amp.GradScaler

    @classmethod
    def of(cls, cfg: TrainConfig, device: torch.device) -> "Precision":
        """The run's precision on `device`, whose process-wide settings are made now (configure_device)."""
        configure_device(cfg, device)
        dtype = resolve(cfg.precision, device)
        return cls(dtype, autocast(dtype, device), grad_scaler(dtype, device))
