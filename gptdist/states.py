"""The small stateful pieces a checkpoint holds beside model and optimizer: progress and RNG."""

import random
from dataclasses import dataclass

import numpy as np
import torch

from . import distributed


@dataclass
class Progress:
    """Where the run is: optimizer steps done, tokens trained on, and the global batch it uses."""

    step: int = 0
    tokens_seen: int = 0
    global_batch: int = 0

    def state_dict(self) -> dict:
        return {"step": self.step, "tokens_seen": self.tokens_seen, "global_batch": self.global_batch}

    def load_state_dict(self, state: dict) -> None:
        self.step, self.tokens_seen, self.global_batch = state["step"], state["tokens_seen"], state["global_batch"]


def _rank_rng_state() -> dict:
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() and torch.cuda.is_initialized() else None,
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": [list(s) if isinstance(s, tuple) else s for s in random.getstate()],
    }


class RNGState:
    """The RNG states of every rank (torch CPU and CUDA, numpy, python), gathered to one list.

    Dropout draws on them, so an exact resume needs each rank's own stream back. A rank
    that did not exist in the saved run (a resume on more ranks) gets a fresh seed.
    """

    def __init__(self, ctx: distributed.Dist, seed: int):
        self.ctx, self.seed = ctx, seed

    def state_dict(self) -> dict:
        return {"ranks": distributed.all_gather_objects(_rank_rng_state())}

    def load_state_dict(self, state: dict) -> None:
        ranks = state["ranks"]
        if self.ctx.rank >= len(ranks):
            torch.manual_seed(self.seed + self.ctx.rank + len(ranks))  # a stream no saved rank used
            return
        mine = ranks[self.ctx.rank]
        torch.set_rng_state(mine["torch"])
        if mine["cuda"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state(mine["cuda"])
        np_state = mine["numpy"]
        np.random.set_state(("MT19937", np_state["keys"].numpy().astype(np.uint32), np_state["pos"],
                             np_state["has_gauss"], np_state["cached_gaussian"]))
        version, internal, gauss = mine["python"]
        random.setstate((version, tuple(internal), gauss))
