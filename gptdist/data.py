"""Training samples from the shards, and the resumable distributed sampler that orders them.

A sample is a window of context_length + 1 tokens (input and shifted target) starting
every `stride` tokens of a split's concatenated shards, crossing shard boundaries.
Nothing is stored per sample: sample i starts at token i * stride.
"""

import numpy as np
import torch

from .errors import UserError
from .shards import Manifest


class TokenWindows:
    """The windows of one split, read from its memory-mapped shards."""

    def __init__(self, manifest: Manifest, split: str, context_length: int, stride: int):
        self.paths = manifest.shard_paths(split)
        self.dtype = manifest.dtype
        self.split, self.folder, self.vocab_size = split, manifest.folder, manifest.vocab_size
        self.window = context_length + 1
        self.stride = stride
        lengths = np.array(manifest.shard_lengths(split), dtype=np.int64)
        self.starts = np.concatenate([[0], np.cumsum(lengths)])  # token offset of each shard
        self.total_tokens = int(self.starts[-1])
        self.num_samples = max(0, (self.total_tokens - self.window) // stride + 1)
        if self.num_samples == 0:
            raise UserError(
                f"the {split} split of {manifest.folder} has {self.total_tokens} tokens, too few for one "
                f"sample of context_length + 1 = {self.window}; lower model.context_length or add data"
            )

    def batch(self, indices: np.ndarray) -> torch.Tensor:
        """A (len(indices), context_length + 1) int64 tensor of the given samples."""
        out = np.empty((len(indices), self.window), dtype=np.int64)
        # The memmaps are opened per batch and dropped, not kept: pages of a long-lived map
        # stay resident and count against the process, so its memory would grow with the corpus.
        maps: dict[int, np.memmap] = {}
        for row, index in enumerate(indices):
            start = int(index) * self.stride
            end = start + self.window
            shard = int(np.searchsorted(self.starts, start, side="right")) - 1
            filled = 0
            while filled < self.window:
                if shard not in maps:
                    maps[shard] = np.memmap(self.paths[shard], dtype=self.dtype, mode="r")
                lo = start + filled - self.starts[shard]
                hi = min(end - self.starts[shard], self.starts[shard + 1] - self.starts[shard])
                out[row, filled : filled + hi - lo] = maps[shard][lo:hi]
                filled += hi - lo
                shard += 1
        # An id past the vocabulary would crash the embedding lookup (on a GPU: a device-side
        # assert that takes the process group down). data.verify checks at start; this, always.
        if len(out) and out.max() >= self.vocab_size:
            raise UserError(f"the {self.split} split of {self.folder} holds token id {int(out.max())} >= vocab_size "
                            f"{self.vocab_size}: the shards are damaged; python -m gptdist.prepare --verify "
                            f"{self.folder} names the shard")
        return torch.from_numpy(out)


class DistributedStepSampler:
    """Hands each rank its share of every optimizer step's global batch.

    Each epoch is a seeded permutation of all samples; a step takes the next
    `global_batch` of them and rank r gets the r-th contiguous slice. The position
    in the permutation is the state, so a resumed run continues with the next
    unseen sample even on another world size (the global batch stays the same).
    A final partial global batch of an epoch is dropped, as DistributedSampler's drop_last.
    """

    def __init__(self, num_samples: int, global_batch: int, rank: int, world_size: int, seed: int, shuffle=True):
        if global_batch % world_size:
            raise ValueError(f"global batch {global_batch} is not divisible by world size {world_size}")
        self.num_samples, self.global_batch = num_samples, global_batch
        self.rank, self.world_size, self.seed, self.shuffle = rank, world_size, seed, shuffle
        self.steps_per_epoch = num_samples // global_batch
        self.epoch = 0
        self.position = 0  # samples of this epoch's order already consumed, by all ranks together
        self._order: np.ndarray | None = None

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.epoch, self.position, self._order = epoch, 0, None

    def order(self) -> np.ndarray:
        """This epoch's global sample order (compact dtype: memory is 4 bytes a sample)."""
        if self._order is None:
            dtype = np.uint32 if self.num_samples < 2**32 else np.int64
            if self.shuffle:
                rng = np.random.default_rng([self.seed, self.epoch])
                self._order = rng.permutation(self.num_samples).astype(dtype, copy=False)
            else:
                self._order = np.arange(self.num_samples, dtype=dtype)
        return self._order

    def epoch_done(self) -> bool:
        return self.position + self.global_batch > self.num_samples

    def next_step(self) -> np.ndarray:
        """This rank's sample indices for the next step (global_batch / world_size of them)."""
        if self.epoch_done():
            raise StopIteration(f"epoch {self.epoch} is exhausted")
        share = self.global_batch // self.world_size
        first = self.position + self.rank * share
        self.position += self.global_batch
        return self.order()[first : first + share]

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed, "num_samples": self.num_samples}

    def load_state_dict(self, state: dict) -> None:
        if state["num_samples"] != self.num_samples or state["seed"] != self.seed:
            raise UserError(
                f"the checkpoint's data order ({state['num_samples']} samples, seed {state['seed']}) does not "
                f"match this run's ({self.num_samples}, seed {self.seed}): data, context or stride changed"
            )
        self.epoch, self.position, self._order = state["epoch"], state["position"], None
