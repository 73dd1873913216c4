"""A step's time at a model FLOPs utilisation: FLOPs per token (observe/flops.py) against the GPUs' peak.

The MFU is the one measured for gptdist on that GPU and model shape where one was (MEASURED, from
`benchmarks/gpu.sh` runs), else DEFAULT_MFU; `--mfu` gives one. Communication is taken as overlapped
with the backward (DDP's buckets, FSDP's prefetching), so the step time of N GPUs is one GPU's share of
the work: a slower interconnect or many nodes can lengthen it.
"""

from dataclasses import dataclass

from ..config import ModelConfig
from ..observe.gpus import GPU

# (GPU, model.n_layers, model.emb_dim, micro-batch, MFU, where it was measured): compiled, bf16, one GPU.
MEASURED = [
    (
        "h200",
        12,
        768,
        64,
        0.462,
        "gptdist on one H200, 2026-11-30: configs/gutenberg-gpt2-124m.yaml as shipped",
    ),
    ("h100", 12, 768, 16, 0.279, "gptdist on one H100, 2026-11-22: 124M at micro-batch 16"),
    ("h100", 24, 1024, 16, 0.385, "gptdist on one H100, 2026-11-22: 355M at micro-batch 16"),
]
DEFAULT_MFU = 0.35  # between those measured: a stated assumption where none was measured


@dataclass
class Utilisation:
    mfu: float
    source: str


def utilisation(gpu: GPU, model: ModelConfig, micro_batch: int, given: float | None) -> Utilisation:
    """The MFU to plan with: `given` (--mfu), a measured one of this GPU and shape (the nearest
    micro-batch), or DEFAULT_MFU."""
    if given is not None:
        return Utilisation(given, "given (--mfu)")
    rows = [row for row in MEASURED if row[:3] == (gpu.name, model.n_layers, model.emb_dim)]
    if rows:
        row = min(rows, key=lambda row: abs(row[3] - micro_batch))
        return Utilisation(row[4], f"measured: {row[5]}")
    return Utilisation(DEFAULT_MFU, "default: no measurement of this GPU and model shape; --mfu gives one")


def step_seconds(
    tokens_per_step: int, flops_per_token: float, world_size: int, gpu: GPU, mfu: float
) -> float:
    return tokens_per_step * flops_per_token / (world_size * gpu.bf16_tflops * 1e12 * mfu)
