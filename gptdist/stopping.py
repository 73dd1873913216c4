"""Stop requests: SIGTERM or SIGUSR1 (preemption) set a flag; the ranks agree on it without waiting.

Every rank must stop at the same step boundary, so the flag is all-reduced across ranks. A
collective at each boundary that waited for its result would hold up every step for a
network round trip. Instead each boundary starts one (gloo, on CPU tensors: it never touches
the GPU) and reads the one started at the boundary before, which finished long ago: a signal
is acted upon one step later, on every rank at the same step.
"""

import signal

import torch
import torch.distributed as dist

from .distributed import Dist


class StopRequest:
    def __init__(self, ctx: Dist):
        self.ctx = ctx
        self.signal_name: str | None = None
        self._in_flight = None  # (work, tensor) of the agreement started at the last boundary
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        self.signal_name = signal.Signals(signum).name

    def agreed(self) -> bool:
        """Call once per step boundary on every rank: True when all ranks are to stop here."""
        if not self.ctx.enabled:
            return self.signal_name is not None
        stop = False
        if self._in_flight is not None:
            work, flag = self._in_flight
            work.wait()
            stop = bool(flag.item())
        # The same decision on every rank: once it says stop, no rank starts another round.
        self._in_flight = None if stop else self._start_round()
        return stop

    def _start_round(self):
        flag = torch.tensor([int(self.signal_name is not None)], dtype=torch.int32)
        work = dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self.ctx.control_group, async_op=True)
        return work, flag

    def finish(self) -> None:
        """Wait for the agreement in flight (every rank started it), so that no collective is left behind."""
        if self._in_flight is not None:
            self._in_flight[0].wait()
            self._in_flight = None
