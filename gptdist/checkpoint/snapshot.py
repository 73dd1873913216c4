"""A consistent copy of the training state in host memory, taken at a step boundary.

An asynchronous save writes while training goes on, so it must write a copy: the next
step changes the weights and AdamW moments in place. The copy goes into buffers kept
from one save to the next (a save waits for the previous write, so one set is enough),
pinned on CUDA so that the device-to-host copies run at full bandwidth. All the copies
are queued on the current stream, after the step's kernels, and waited for once.

A DTensor (a shard of a sharded checkpoint) is copied as its local shard, into a DTensor on
the host that keeps the original's mesh and placements: what torch.distributed.checkpoint
needs to know where the shard belongs.
"""

import torch
from torch.distributed.tensor import DTensor


class HostSnapshot:
    def __init__(self, device: torch.device):
        self.pinned = device.type == "cuda"
        # by position in the state: the same tensors at every save
        self.buffers: dict[tuple, torch.Tensor] = {}
        self.shards: dict[tuple, DTensor] = {}  # the same for DTensors

    @property
    def bytes(self) -> int:
        """The host memory the snapshot holds."""
        local = [s.to_local() for s in self.shards.values()]
        return sum(b.numel() * b.element_size() for b in [*self.buffers.values(), *local])

    def reserve(self, state) -> None:
        """Allocate the buffers `state` needs without copying into them (pinning is slow: a save
        should not pay for it)."""
        self._walk(state, copy=False)

    def take(self, state):
        """`state` (nested dicts, lists and tuples) with every tensor replaced by a host copy."""
        snapshot = self._walk(state, copy=True)
        if self.pinned:
            torch.cuda.current_stream().synchronize()  # the non-blocking copies have landed
        return snapshot

    def _walk(self, state, copy: bool):
        # refilled with the buffers this state uses: none left from another
        kept, self.buffers = self.buffers, {}
        kept_shards, self.shards = self.shards, {}
        copied: dict[tuple, torch.Tensor] = {}  # by identity: a tied weight appears under two names

        def copy_tensor(tensor: torch.Tensor, where: tuple) -> torch.Tensor:
            identity = (tensor.device, tensor.data_ptr(), tensor.dtype, tuple(tensor.shape), tensor.stride())
            if tensor.numel() and identity in copied:  # one copy, saved once, as torch.save would
                return copied[identity]
            buffer = kept.get(where)
            if buffer is None or buffer.shape != tensor.shape or buffer.dtype != tensor.dtype:
                buffer = torch.empty(tensor.shape, dtype=tensor.dtype, device="cpu", pin_memory=self.pinned)
            if copy:
                buffer.copy_(tensor, non_blocking=self.pinned)
            self.buffers[where] = copied[identity] = buffer
            return buffer

        def copy_dtensor(tensor: DTensor, where: tuple) -> DTensor:
            staged = kept_shards.get(where)
            if staged is None or staged.shape != tensor.shape or staged.placements != tensor.placements:
                # a host DTensor: the local shard copied, mesh and placements kept
                staged = tensor.to("cpu", copy=True)
            elif copy:
                staged.to_local().copy_(tensor.to_local())
            self.shards[where] = staged
            return staged

        def walk(value, where: tuple):
            if isinstance(value, DTensor):
                return copy_dtensor(value.detach(), where)
            if isinstance(value, torch.Tensor):
                return copy_tensor(value.detach(), where)
            if isinstance(value, dict):
                return {key: walk(item, (*where, key)) for key, item in value.items()}
            if isinstance(value, (list, tuple)):
                return type(value)(walk(item, (*where, i)) for i, item in enumerate(value))
            return value  # plain values are immutable or rebuilt at every save

        return walk(state, ())
