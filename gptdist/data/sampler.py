"""The resumable distributed sampler: which samples each rank trains on at every optimizer step."""

import numpy as np

from ..errors import UserError
from .order import FeistelOrder

# How an epoch's order is made, named in the sampler's state: "feistel" computes each step's samples on
# the fly (order.py; memory the same for any corpus); "permutation", the order of checkpoints written
# before it, held the epoch's whole permutation (4 bytes a sample) and is kept for them.
ORDERS = ("feistel", "permutation")


class DistributedStepSampler:
    """Hands each rank its share of every optimizer step's global batch.

    Each epoch is a seeded permutation of all samples; a step takes the next
    `global_batch` of them and rank r gets the r-th contiguous slice. The position
    in the permutation is the state, so a resumed run continues with the next
    unseen sample even on another world size (the global batch stays the same).
    A final partial global batch of an epoch is dropped, as DistributedSampler's drop_last.
    The permutation is computed for the positions a step takes (ORDERS), never held whole.
    """

    def __init__(self, num_samples: int, global_batch: int, rank: int, world_size: int, seed: int):
        if global_batch % world_size:
            raise ValueError(f"global batch {global_batch} is not divisible by world size {world_size}")
        self.num_samples, self.global_batch = num_samples, global_batch
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.steps_per_epoch = num_samples // global_batch
        self.epoch = 0
        self.position = 0  # samples of this epoch's order already consumed, by all ranks together
        self.kind = ORDERS[0]
        self._order: FeistelOrder | np.ndarray | None = None

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.epoch, self.position, self._order = epoch, 0, None

    def order(self) -> FeistelOrder | np.ndarray:
        """This epoch's global sample order, indexed by position slices."""
        if self._order is None:
            if self.kind == "feistel":
                self._order = FeistelOrder(self.num_samples, self.seed, self.epoch)
            else:  # a checkpoint's earlier order: the whole permutation (compact: 4 bytes a sample)
                dtype = np.uint32 if self.num_samples < 2**32 else np.int64
                rng = np.random.default_rng([self.seed, self.epoch])
                self._order = rng.permutation(self.num_samples).astype(dtype, copy=False)
        return self._order

    def epoch_done(self) -> bool:
        return self.position + self.global_batch > self.num_samples

    def next_step(self) -> np.ndarray:
        """This rank's sample indices for the next step (global_batch / world_size of them); an epoch
        with no whole global batch left gives way to the next."""
        if self.epoch_done():
            self.set_epoch(self.epoch + 1)
        share = self.global_batch // self.world_size
        first = self.position + self.rank * share
        self.position += self.global_batch
        return self.order()[first : first + share]

    @property
    def epochs_done(self) -> float:
        """Epochs done, with the fraction of the current one."""
        return self.epoch + self.position / self.num_samples

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed,
                "num_samples": self.num_samples, "order": self.kind}

    def load_state_dict(self, state: dict) -> None:
        if "num_samples" not in state:  # a mixture's or document windows' order (mixture.py)
            raise UserError(f"the checkpoint's data order (a mixture or document windows) does not match "
                            f"this run's (one strided data.dir of {self.num_samples} samples): data.sources, "
                            "data.windows or the data changed; resume with the run's own data")
        if state["num_samples"] != self.num_samples or state["seed"] != self.seed:
            raise UserError(
                f"the checkpoint's data order ({state['num_samples']} samples, seed {state['seed']}) does "
                f"not match this run's ({self.num_samples}, seed {self.seed}): data, context or stride "
                "changed"
            )
        self.epoch, self.position, self._order = state["epoch"], state["position"], None
        kind = state.get("order", "permutation")  # a state without one was written in that order
        if kind not in ORDERS:
            raise UserError(f"the checkpoint's data order {kind!r} is none this gptdist knows "
                            f"({', '.join(ORDERS)}); resume it with the gptdist that wrote it")
        self.kind = kind
