"""An epoch's sample order computed on the fly: a seeded bijection of [0, n), evaluated for just the
positions a step needs, so that a rank's memory is the same for any corpus size.

A Feistel network over the smallest even number of bits that covers n (its rounds mix one half of
the bits into the other through a keyed hash; any such network is a bijection of its domain) and
cycle-walking into [0, n): a position whose image falls at n or beyond is mapped again until it
lands inside, which keeps the bijection (the domain holds fewer than 4n values, so that takes under
four rounds of the network on average). Every (seed, epoch) gives another order.
"""

import numpy as np

ROUNDS = 6
MASK64 = np.uint64(2**64 - 1)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: every output bit depends on every input bit."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


class FeistelOrder:
    def __init__(self, n: int, seed: int, epoch: int):
        if n < 1:
            raise ValueError(f"an order of {n} samples")
        self.n = n
        self.half_bits = max(1, ((n - 1).bit_length() + 1) // 2)  # 2 * half_bits bits cover [0, n)
        self.half_mask = np.uint64((1 << self.half_bits) - 1)
        keys = np.random.default_rng([seed, epoch, 0xFE15]).integers(0, 2**63, ROUNDS, dtype=np.uint64)
        self.keys = [np.uint64(k) for k in keys]

    def _network(self, x: np.ndarray) -> np.ndarray:
        left, right = x >> np.uint64(self.half_bits), x & self.half_mask
        with np.errstate(over="ignore"):  # the hash multiplies modulo 2**64 on purpose
            for key in self.keys:
                left, right = right, left ^ (_mix(right ^ key) & self.half_mask)
        return (left << np.uint64(self.half_bits)) | right

    def __getitem__(self, positions: slice) -> np.ndarray:
        """The samples at `positions` (a slice of [0, n)) of this epoch's order, as int64."""
        x = np.arange(*positions.indices(self.n), dtype=np.uint64)
        x = self._network(x)
        outside = x >= np.uint64(self.n)
        while outside.any():  # cycle-walking: map again what fell outside [0, n)
            x[outside] = self._network(x[outside])
            outside = x >= np.uint64(self.n)
        return x.astype(np.int64)
