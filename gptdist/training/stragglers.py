"""Slow ranks, named: in synchronous training every rank's step takes as long as the slowest one's, so
step times say nothing; what differs is each rank's own work, the time it did not spend waiting for the
others (phases.py measures it: data, forward/backward and optimizer, less the wait for the gradients'
reduction).

At every log, one gather of three numbers per rank (own work, data wait, reduction wait since the last
log) gives the row its spread over ranks (min, median, max) and its slowest rank. Over the last WINDOW
logging intervals, a rank whose own work is at least train.straggler_ratio times the median of the
other ranks' is named in one line, once per interval: its rank and host, the ratio, and whether its
extra time went to data or to compute.

Measured where the reduction can be timed: under ddp. Under fsdp the waits sit inside every block's
gathers, counted as work: every rank looks alike, and no rank is named.
"""

import socket
import statistics
from collections import deque

import torch
import torch.distributed as dist

from ..distributed import Dist, all_gather_objects, print0

WINDOW = 3  # logging intervals a rank's ratio is taken over


class Stragglers:
    def __init__(self, ratio: float, ctx: Dist, enabled: bool = True):
        self.ratio, self.ctx = ratio, ctx
        self.enabled = enabled and ctx.enabled and ctx.world_size > 1
        self.history: deque[torch.Tensor] = deque(maxlen=WINDOW)  # each interval's [world, 3]
        self.hosts: list[str] | None = None

    def observe(self, interval: dict) -> dict:
        """Every rank, at a log, with `Phases.take_interval()`: the row's figures over ranks; rank 0 names a
        slow rank."""
        if not self.enabled:
            return {}
        if self.hosts is None:
            self.hosts = all_gather_objects(socket.gethostname())
        mine = torch.tensor([interval["work_s"], interval["data_s"], interval["wait_s"]], dtype=torch.float64)
        gathered = [torch.zeros_like(mine) for _ in range(self.ctx.world_size)]
        dist.all_gather(gathered, mine, group=self.ctx.control_group)
        now = torch.stack(gathered)
        self.history.append(now)
        work = now[:, 0].tolist()
        slowest = max(range(len(work)), key=work.__getitem__)
        row = {"work_s_min": round(min(work), 4), "work_s_median": round(statistics.median(work), 4),
               "work_s_max": round(max(work), 4), "data_s_max": round(max(now[:, 1].tolist()), 4),
               "slowest_rank": slowest}
        if len(self.history) == WINDOW:
            self._name_slow_ranks(torch.stack(list(self.history)).sum(dim=0))
        return row

    def _name_slow_ranks(self, totals: torch.Tensor) -> None:
        work, data = totals[:, 0].tolist(), totals[:, 1].tolist()
        for rank in range(len(work)):
            others = [w for r, w in enumerate(work) if r != rank]
            median = statistics.median(others)
            if median <= 0 or work[rank] < self.ratio * median:
                continue
            other_data = statistics.median(d for r, d in enumerate(data) if r != rank)
            extra_data = data[rank] - other_data
            extra_compute = (work[rank] - data[rank]) - (median - other_data)
            goes_to = "data (waiting for its batches)" if extra_data > extra_compute else "compute"
            print0(f"slow rank: rank {rank} ({self.hosts[rank]}) worked {work[rank] / median:.2f}x the other "
                   f"ranks' median over the last {WINDOW} logging intervals ({work[rank]:.2f} s against "
                   f"{median:.2f} s); its extra time goes to {goes_to}")
