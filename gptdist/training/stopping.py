"""Stop requests: SIGTERM or SIGUSR1 (preemption) set a flag; the ranks agree on it without waiting.

A failure that one rank notices between steps (a background checkpoint write) travels the
same way: every rank stops at the same boundary, the failing one with its error.

Every rank must stop at the same step boundary, so the flag is all-reduced across ranks. A
collective at each boundary that waited for its result would hold up every step for a
network round trip. Instead each boundary starts one (gloo, on CPU tensors: it never touches
the GPU) and reads the one started at the boundary before, which finished long ago: a signal
is acted upon one step later, on every rank at the same step.
"""

import signal

import torch
import torch.distributed as dist

from ..distributed import Dist
from ..errors import UserError


class StopRequest:
    def __init__(self, ctx: Dist):
        self.ctx = ctx
        self.signal_name: str | None = None
        self.failure: UserError | None = None
        self._in_flight = None  # (work, tensor) of the agreement started at the last boundary
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        self.signal_name = signal.Signals(signum).name

    def fail(self, error: UserError) -> None:
        """Stop every rank at the next agreement, with `error` on this one."""
        self.failure = error

    def agreed(self) -> bool:
        """Call once per step boundary on every rank: True when all ranks are to stop here.

        Raises when a rank failed: the failing one its error, the others SystemExit(2) quietly.
        """
        signalled, failed = self.signal_name is not None, self.failure is not None
        if self.ctx.enabled:
            signalled = failed = False
            if self._in_flight is not None:
                work, flags = self._in_flight
                work.wait()
                signalled, failed = bool(flags[0]), bool(flags[1])
            # The same decision on every rank: once it says stop, no rank starts another round.
            self._in_flight = None if signalled or failed else self._start_round()
        if failed:
            if self.failure is not None:
                raise self.failure
            raise SystemExit(2)  # the failing rank says why, in one line
        return signalled

    def _start_round(self):
        flags = torch.tensor([int(self.signal_name is not None), int(self.failure is not None)],
                             dtype=torch.int32)
        work = dist.all_reduce(flags, op=dist.ReduceOp.MAX, group=self.ctx.control_group, async_op=True)
        return work, flags

    def finish(self) -> None:
        """Wait for the agreement in flight (every rank started it), so that no collective is left behind."""
        if self._in_flight is not None:
            self._in_flight[0].wait()
            self._in_flight = None
