"""The order of a run over several sources (data.sources), or over document-aligned windows.

Each source hands out its windows in its own seeded order, epoch after epoch (`StrideStream`, or
documents.DocumentStream). Every global batch takes from the sources in proportion to their weights:
window by window, the source furthest below its share of all windows drawn so far (a schedule that
never strays a window from the weights), and the batch's windows are then placed by a permutation
seeded by the step, so that each rank's slice holds every source. All of it depends on the step and
the global batch alone: the same on any world size and with any accumulation, and its whole state
(windows drawn per source, each source's position) is in the checkpoint.
"""

from dataclasses import dataclass

import numpy as np
import torch

from ..errors import UserError
from .documents import DocumentStream
from .order import FeistelOrder
from .windows import TokenWindows


class StrideStream:
    """A source's strided windows in the sampler's order (order.py), epoch after epoch: `take(n)` hands out
    the next n, each as [(start, length)] for `TokenWindows.rows`."""

    def __init__(self, windows: TokenWindows, seed: int):
        self.windows, self.seed = windows, seed
        self.epoch = self.position = 0

    def take(self, count: int) -> list:
        out = []
        while len(out) < count:
            handed = min(count - len(out), self.windows.num_samples - self.position)
            order = FeistelOrder(self.windows.num_samples, self.seed, self.epoch)
            indices = order[self.position : self.position + handed]
            out += [[(int(i) * self.windows.stride, self.windows.window)] for i in indices]
            self.position += handed
            if self.position == self.windows.num_samples:
                self.epoch, self.position = self.epoch + 1, 0
        return out

    @property
    def windows_per_epoch(self) -> int:
        return self.windows.num_samples

    @property
    def epochs_done(self) -> float:
        return self.epoch + self.position / self.windows.num_samples

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.position = state["epoch"], state["position"]


@dataclass
class SourceOrder:
    """One source as the mixture draws from it."""

    name: str
    weight: float
    stream: StrideStream | DocumentStream  # its order over its train split's windows (`stream.windows`)


class MixtureSampler:
    """Hands each rank its share of every global batch drawn from the sources by weight."""

    def __init__(self, sources: list[SourceOrder], global_batch: int, rank: int, world_size: int, seed: int):
        if global_batch % world_size:
            raise ValueError(f"global batch {global_batch} is not divisible by world size {world_size}")
        self.sources, self.global_batch, self.rank, self.world_size = sources, global_batch, rank, world_size
        self.seed = seed
        weights = np.array([source.weight for source in sources], dtype=np.float64)
        self.shares = weights / weights.sum()
        self.drawn = [0] * len(sources)  # windows taken from each source so far, by all ranks together
        self.steps = 0
        self.window = sources[0].stream.windows.window

    @property
    def steps_per_epoch(self) -> int:
        """Global batches in an epoch of all the sources together (with document windows, estimated)."""
        return max(1, sum(s.stream.windows_per_epoch for s in self.sources) // self.global_batch)

    def counts(self) -> list[int]:
        """How many of the next global batch's windows each source gives: window by window, the source
        furthest below its share of everything drawn (ties: the first listed)."""
        drawn, counts = list(self.drawn), [0] * len(self.sources)
        for _ in range(self.global_batch):
            total = sum(drawn) + 1
            pick = int(np.argmax(self.shares * total - np.array(drawn)))
            drawn[pick] += 1
            counts[pick] += 1
        return counts

    def next_step(self) -> list[tuple[int, list]]:
        """This rank's windows of the next step, as (source index, ranges of its stream)."""
        chosen = []
        for index, (source, count) in enumerate(zip(self.sources, self.counts(), strict=True)):
            chosen += [(index, ranges) for ranges in source.stream.take(count)]
            self.drawn[index] += count
        placed = np.random.default_rng([self.seed, self.steps, 0x313]).permutation(len(chosen))
        self.steps += 1
        share = self.global_batch // self.world_size
        return [chosen[i] for i in placed[self.rank * share : (self.rank + 1) * share]]

    def batch(self, rows: list[tuple[int, list]]) -> torch.Tensor:
        """The tokens of `rows` (a slice of `next_step`'s), each read from its source."""
        out = torch.empty(len(rows), self.window, dtype=torch.long)
        for index, source in enumerate(self.sources):
            mine = [row for row, (which, _) in enumerate(rows) if which == index]
            if mine:
                out[mine] = source.stream.windows.rows([rows[row][1] for row in mine])
        return out

    def tokens_by_source(self, context_length: int) -> dict[str, int]:
        return {s.name: drawn * context_length for s, drawn in zip(self.sources, self.drawn, strict=True)}

    @property
    def epochs_done(self) -> float:
        """Epochs of the sources, weighted by their shares."""
        return float(sum(share * s.stream.epochs_done for share, s in zip(self.shares, self.sources,
                                                                            strict=True)))

    def _described(self) -> list[list]:
        return [[s.name, type(s.stream).__name__, s.stream.windows.total_tokens] for s in self.sources]

    def state_dict(self) -> dict:
        return {"order": "mixture", "seed": self.seed, "sources": self._described(), "steps": self.steps,
                "drawn": list(self.drawn), "streams": [s.stream.state_dict() for s in self.sources]}

    def load_state_dict(self, state: dict) -> None:
        ours = self._described()
        if state.get("order") != "mixture" or state["seed"] != self.seed or state["sources"] != ours:
            theirs = _named(state["sources"]) if state.get("order") == "mixture" else "one strided data.dir"
            raise UserError(f"the checkpoint's data order ({theirs}; seed {state.get('seed')}) does not "
                            f"match this run's ({_named(ours)}; seed {self.seed}): data.sources, "
                            "data.windows or the data changed; resume with the run's own data")
        self.steps, self.drawn = state["steps"], list(state["drawn"])
        for source, stream_state in zip(self.sources, state["streams"], strict=True):
            source.stream.load_state_dict(stream_state)


def _named(described: list[list]) -> str:
    return ", ".join(f"{name}: {kind} over {tokens:,} tokens" for name, kind, tokens in described)
