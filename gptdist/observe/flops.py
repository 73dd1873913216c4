"""Model FLOPs per token and the device's peak: the two halves of MFU, for training logs and benchmarks.

MFU counts 6N + 12·L·T·d FLOPs per token (N: the parameters that multiply every token)
against the device's peak: a table of known GPUs (bf16 dense, gpus.py) or, on a CPU, a matmul timed
on the spot in the run's dtype.
"""

import time

import torch

from .gpus import by_device_name


def flops_per_token(model) -> float:
    cfg = model.cfg
    return 6 * model.matmul_params() + 12 * cfg.n_layers * cfg.context_length * cfg.emb_dim


def measured_cpu_peak(dtype: torch.dtype, seconds: float = 0.1, repeats: int = 10) -> float:
    """FLOP/s of the fastest of up to `repeats` square matmuls on this CPU, with all its threads.

    Timed as `F.linear`, the op the model's layers run: on CPUs without native bf16, a bf16 `a @ b`
    takes a path ten times slower, and an MFU against it reads over 100%. 1024 wide where one such
    matmul takes a tenth of `seconds` or less (many cores, which 512-wide ones would not keep busy),
    else 512: on a 2-core Xeon 512-wide ones reach within 5% of 1024-wide ones' rate, in an eighth
    of the time, and every run (every benchmark's too) starts with this measurement. The repeats
    stop once `seconds` are spent. Its own generator: a measurement at the start of a run must not move the
    training RNG (dropout).
    """
    generator = torch.Generator().manual_seed(0)

    def operands(size: int) -> tuple[torch.Tensor, torch.Tensor]:
        return tuple(torch.randn(size, size, generator=generator).to(dtype) for _ in range(2))

    def timed(a: torch.Tensor, b: torch.Tensor) -> float:
        start = time.perf_counter()
        torch.nn.functional.linear(a, b)
        return time.perf_counter() - start

    a, b = operands(512)
    took = timed(a, b)  # also the warm-up
    size = 1024 if 8 * took <= seconds / repeats else 512  # twice as wide: 8 times the work
    if size == 1024:
        a, b = operands(size)
        timed(a, b)
    best, spent = float("inf"), 0.0
    for _ in range(repeats):
        elapsed = timed(a, b)
        best, spent = min(best, elapsed), spent + elapsed
        if spent > seconds:
            break
    return 2 * size**3 / best


def device_peak(device: torch.device, dtype: torch.dtype) -> tuple[float, str]:
    """(peak FLOP/s, where the figure comes from); NaN for a GPU missing from the table.

    A CPU's figure is measured, so it follows the machine's load at that moment.
    """
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        gpu = by_device_name(name)
        if gpu:
            return gpu.bf16_tflops * 1e12, f"{name} (table)"
        return float("nan"), f"{name} (not in the table: use --peak-tflops)"
    return measured_cpu_peak(dtype), f"CPU {str(dtype).removeprefix('torch.')} matmul, measured"
