"""Where a rank's training memory goes, counted from the tensors themselves (any device).

- `state_bytes`: what lives through the whole run, per rank: parameters, gradients and the
  optimizer's state (this rank's shards under fsdp).
- `resident_host_bytes`, `peak_host_bytes`: the host memory of the whole process, now and at
  its peak (what a checkpoint's snapshot or a resume adds).
- `peak_tracker`: the most a step holds at once, counted from the tensors it makes (parameters,
  gradients, optimizer state, activations, temporaries; under fsdp the gathered weights and reduce
  buffers too): what the plan measures on fake tensors, and `gptdist.bench memory` on a real step.
- `SavedForBackward`: what one forward keeps alive for its backward: the tensors autograd
  saves (each storage once, the parameters left out) and, under activation checkpointing, the
  block inputs kept for the recomputation. This is the part that grows with batch and context.
"""

import os
import resource

import torch
from torch import nn
from torch.distributed._tools.fsdp2_mem_tracker import FSDPMemTracker
from torch.distributed._tools.mem_tracker import MemTracker
from torch.distributed.fsdp import FSDPModule

from ..distributed import local_tensor


def _bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in map(local_tensor, tensors))


def state_bytes(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, int]:
    params = list(model.parameters())
    moments = [v for state in optimizer.state.values() for v in state.values()
               if isinstance(v, torch.Tensor) and v.dim() > 0]  # the scalar step counts are negligible
    return {"parameters": _bytes(params), "gradients": _bytes(p.grad for p in params if p.grad is not None),
            "optimizer": _bytes(moments)}


def resident_host_bytes() -> int:
    """This process's resident host memory now (Linux; 0 where /proc is not there)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


def peak_host_bytes() -> int:
    """The most host memory this process has held at once, since it began or since reset_peak_host (Linux:
    /proc's VmHWM; elsewhere the lifetime peak, which macOS reports in bytes and others in KiB)."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if os.uname().sysname == "Darwin" else peak * 1024


def reset_peak_host() -> bool:
    """Start peak_host_bytes again from the resident memory now (Linux); False where it cannot be."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_device_bytes(device: torch.device) -> int:
    """The most memory the computation has held on `device`: the CUDA allocator's peak, or on a CPU the
    process's peak_host_bytes."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return peak_host_bytes()


def peak_host_mb() -> float:
    """peak_host_bytes in MiB, to a tenth: as rows report it."""
    return round(peak_host_bytes() / 2**20, 1)


def _storage_key(tensor: torch.Tensor) -> int:
    """The storage's identity (its C++ object, for as long as it lives): fake tensors, which the plan
    counts (planning/step_memory.py), have no data pointers to tell theirs apart."""
    return local_tensor(tensor).untyped_storage()._cdata


class SavedForBackward:
    """with SavedForBackward(model) as saved: loss = ...  -> saved.bytes (read before the backward)."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.storages: dict[int, torch.UntypedStorage] = {}

    def _keep(self, tensor: torch.Tensor) -> torch.Tensor:
        if isinstance(tensor, torch.Tensor):  # a block's arguments may include other values
            self.storages.setdefault(_storage_key(tensor), local_tensor(tensor).untyped_storage())
        return tensor

    def _keep_inputs(self, block: nn.Module, args: tuple) -> None:
        for tensor in args:
            self._keep(tensor)

    def __enter__(self):
        self.hooks = torch.autograd.graph.saved_tensors_hooks(self._keep, lambda tensor: tensor)
        self.hooks.__enter__()
        # A checkpointed block keeps its input for the recomputation, outside autograd's saved tensors.
        self.handles = [block.register_forward_pre_hook(self._keep_inputs) for block in self.model.trf_blocks
                        if hasattr(block, "_checkpoint_wrapped_module")]
        return self

    def __exit__(self, *exc) -> None:
        self.hooks.__exit__(*exc)
        for handle in self.handles:
            handle.remove()

    @property
    def bytes(self) -> int:
        """Measured when read: FSDP's gathered weights, freed after each block's forward, count 0 by then."""
        params = {_storage_key(p) for p in self.model.parameters()}
        return sum(storage.nbytes() for key, storage in self.storages.items() if key not in params)


class _OnlyPeak(MemTracker):
    """MemTracker keeping the step's peak alone: its per-module peaks, compared after every operation with
    every module of the model, would make a step of gpt2-xl's 48 blocks take a minute on fake tensors."""

    def _update_peak_stats(self, peak_state) -> None:
        for device, figures in self._curr_mem_snap.items():
            if self._peak_mem.get(device, 0) < figures["Total"]:
                self._peak_mem[device] = figures["Total"]
                self._peak_mem_snap[device] = dict(figures)


class _OnlyPeakFSDP(FSDPMemTracker):
    _update_peak_stats = _OnlyPeak._update_peak_stats


def peak_tracker(model: nn.Module, optimizer: torch.optim.Optimizer) -> MemTracker:
    """with tracker: <steps>  -> tracked_peak(tracker); call tracker.reset_mod_stats() after each backward."""
    if isinstance(model, FSDPModule):
        return _OnlyPeakFSDP(model, optimizer)
    tracker = _OnlyPeak()
    tracker.track_external(model, optimizer)
    return tracker


def tracked_peak(tracker: MemTracker, kind: str = "Total") -> int:
    """The bytes held at the tracked steps' peak (on the one device they ran on): all of them, or those of one
    `kind` of the tracker's (GRAD: gradients)."""
    (figures,) = tracker.get_tracker_snapshot("peak").values()
    return sum(value for key, value in figures.items() if str(key) == kind or str(key).endswith(f".{kind}"))
