"""The GPUs gptdist plans for and reports MFU against: memory, dense bf16 peak and memory bandwidth.

Memory is what the driver reports for the part (an "80 GB" H100 shows 79.6 GiB); the peaks are the
vendors' dense (not sparse) bf16 tensor-core figures, SXM parts unless named. A GPU missing here is given
to `gptdist.plan --gpu` as MEM_GiB:TFLOPS:TBps.
"""

from dataclasses import dataclass

from ..errors import UserError


@dataclass(frozen=True)
class GPU:
    name: str
    memory_gib: float
    bf16_tflops: float
    tbps: float  # memory bandwidth, TB/s
    device_name: str = ""  # what torch.cuda.get_device_name contains for this part ("" : never matched)


# Longer device names first where one contains another ("H100 PCIe" before "H100").
GPUS = {
    gpu.name: gpu
    for gpu in [
        GPU("h100-pcie", 79.6, 756.0, 2.0, "H100 PCIe"),
        GPU("h100", 79.6, 989.0, 3.35, "H100"),
        GPU("h200", 140.4, 989.0, 4.8, "H200"),
        GPU("b200", 178.4, 2250.0, 8.0, "B200"),
        GPU("a100-40gb", 39.4, 312.0, 1.555),
        GPU("a100", 79.2, 312.0, 2.04, "A100"),
        GPU("l40s", 44.4, 362.0, 0.864, "L40S"),
        GPU("l4", 22.0, 121.0, 0.3, "L4"),
        GPU("a10g", 22.0, 125.0, 0.6, "A10G"),
        GPU("rtx4090", 23.6, 165.0, 1.0, "RTX 4090"),
        GPU("v100", 31.7, 125.0, 0.9, "V100"),
    ]
}


def parse(text: str, flag: str = "--gpu") -> GPU:
    """A GPU of the table by name (any case), or one described as MEM_GiB:TFLOPS:TBps."""
    known = GPUS.get(text.lower())
    if known:
        return known
    parts = text.split(":")
    try:
        memory, tflops, tbps = (float(part) for part in parts)
    except ValueError:
        raise UserError(
            f"{flag} {text!r} is neither a known GPU ({', '.join(GPUS)}) nor MEM_GiB:TFLOPS:TBps "
            "(e.g. 80:989:3.35)"
        ) from None
    if not all(0 < value < float("inf") for value in (memory, tflops, tbps)):
        raise UserError(f"{flag} {text!r}: memory, TFLOPS and TB/s must be finite and > 0")
    return GPU(text, memory, tflops, tbps)


def by_device_name(device_name: str) -> GPU | None:
    """The table's entry for a CUDA device's name, None for a part it does not hold."""
    return next((gpu for gpu in GPUS.values() if gpu.device_name and gpu.device_name in device_name), None)
