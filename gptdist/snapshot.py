"""A consistent copy of the training state in host memory, taken at a step boundary.

An asynchronous save writes while training goes on, so it must write a copy: the next
step changes the weights and AdamW moments in place. The copy goes into buffers kept
from one save to the next (a save waits for the previous write, so one set is enough),
pinned on CUDA so that the device-to-host copies run at full bandwidth. All the copies
are queued on the current stream, after the step's kernels, and waited for once.
"""

import torch


class HostSnapshot:
    def __init__(self, device: torch.device):
        self.pinned = device.type == "cuda"
        self.buffers: dict[tuple, torch.Tensor] = {}  # by position in the state: the same tensors at every save

    @property
    def bytes(self) -> int:
        """The host memory the snapshot holds."""
        return sum(b.numel() * b.element_size() for b in self.buffers.values())

    def take(self, state):
        """`state` (nested dicts, lists and tuples) with every tensor replaced by a host copy."""
        self._kept, self._copied = self.buffers, {}
        self.buffers = {}  # refilled with the buffers this state uses: none left over from another
        copy = self._copy(state, ())
        del self._kept, self._copied
        if self.pinned:
            torch.cuda.current_stream().synchronize()  # the non-blocking copies have landed
        return copy

    def _copy(self, value, where: tuple):
        if isinstance(value, torch.Tensor):
            return self._copy_tensor(value.detach(), where)
        if isinstance(value, dict):
            return {key: self._copy(item, (*where, key)) for key, item in value.items()}
        if isinstance(value, (list, tuple)):
            return type(value)(self._copy(item, (*where, i)) for i, item in enumerate(value))
        return value  # plain values are immutable or rebuilt at every save

    def _copy_tensor(self, tensor: torch.Tensor, where: tuple) -> torch.Tensor:
        # A tied weight appears under two names: one copy, saved once, as torch.save would.
        identity = (tensor.device, tensor.data_ptr(), tensor.dtype, tuple(tensor.shape), tensor.stride())
        if tensor.numel() and identity in self._copied:
            return self._copied[identity]
        buffer = self._kept.get(where)
        if buffer is None or buffer.shape != tensor.shape or buffer.dtype != tensor.dtype:
            buffer = torch.empty(tensor.shape, dtype=tensor.dtype, device="cpu", pin_memory=self.pinned)
        buffer.copy_(tensor, non_blocking=self.pinned)
        self.buffers[where] = self._copied[identity] = buffer
        return buffer
