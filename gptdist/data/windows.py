"""Training samples from the shards: windows of tokens read from the memory-mapped shards.

A sample is a window of context_length + 1 tokens (input and shifted target) starting
every `stride` tokens of a split's concatenated shards, crossing shard boundaries.
Nothing is stored per sample: sample i starts at token i * stride. (data.windows documents reads
its windows through `rows`, each from the ranges of the documents packed into it: documents.py.)
"""

import numpy as np
import torch

from ..errors import UserError
from .shards import Manifest


def window_count(tokens: int, window: int, stride: int) -> int:
    """How many windows of `window` tokens, one every `stride`, a split of `tokens` tokens holds."""
    return max(0, (tokens - window) // stride + 1)


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
        self.num_samples = window_count(self.total_tokens, self.window, stride)
        if self.num_samples == 0:
            raise UserError(
                f"the {split} split of {manifest.folder} has {self.total_tokens} tokens, too few for one "
                f"sample of context_length + 1 = {self.window}; lower model.context_length or add data"
            )

    def batch(self, indices: np.ndarray) -> torch.Tensor:
        """A (len(indices), context_length + 1) int64 tensor of the given samples."""
        return self.rows([[(int(index) * self.stride, self.window)] for index in indices])

    def rows(self, pieces: list) -> torch.Tensor:
        """A (len(pieces), context_length + 1) int64 tensor, row r the concatenation of the token ranges
        pieces[r] = [(start, length), ...] of the split's token stream (one range for a strided window;
        several for documents packed into one: documents.py)."""
        out = np.empty((len(pieces), self.window), dtype=np.int64)
        # The memmaps are opened per batch and dropped, not kept: pages of a long-lived map
        # stay resident and count against the process, so its memory would grow with the corpus.
        maps: dict[int, np.memmap] = {}
        for row, ranges in enumerate(pieces):
            filled = 0
            for start, length in ranges:
                self._read(maps, start, out[row, filled : filled + length])
                filled += length
        # An id past the vocabulary would crash the embedding lookup (on a GPU: a device-side
        # assert that takes the process group down). data.verify checks at start; this, always.
        if len(out) and out.max() >= self.vocab_size:
            raise UserError(f"the {self.split} split of {self.folder} holds token id {int(out.max())} >= "
                            f"vocab_size {self.vocab_size}: the shards are damaged; python -m "
                            f"gptdist.prepare --verify {self.folder} names the shard")
        return torch.from_numpy(out)

    def tokens(self, start: int, length: int) -> np.ndarray:
        """Tokens [start, start + length) of the split's stream (cut at its end), as int64."""
        out = np.empty(max(0, min(length, self.total_tokens - start)), dtype=np.int64)
        self._read({}, start, out)
        return out

    def _read(self, maps: dict, start: int, out: np.ndarray) -> None:
        """Fill `out` with the stream's tokens from `start` on, across shard boundaries."""
        end = start + len(out)
        shard = int(np.searchsorted(self.starts, start, side="right")) - 1
        filled = 0
        while filled < len(out):
            if shard not in maps:
                maps[shard] = np.memmap(self.paths[shard], dtype=self.dtype, mode="r")
            lo = start + filled - self.starts[shard]
            hi = min(end - self.starts[shard], self.starts[shard + 1] - self.starts[shard])
            out[filled : filled + hi - lo] = maps[shard][lo:hi]
            filled += hi - lo
            shard += 1
