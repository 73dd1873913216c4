"""Process-group timeouts in two phases, as torchtitan sets them: long while a run starts (rendezvous, a
resume's reading, the first step's compilation), short once every rank has finished its first step.

A collective that a rank never reaches fails on the others after the timeout in force. Short, a hang
costs minutes instead of NCCL's 10 or gloo's 30; but work that is long by nature (lm-eval, HellaSwag,
a blocking save of a large model) runs under the long one again (`long_work`), entered and left by
every rank together. The watchdog (watchdog.py) names a hang before either timeout fires; the timeouts
are what ends a hang it could not act on.
"""

import contextlib
from datetime import timedelta

import torch.distributed as dist
import torch.distributed.distributed_c10d as c10d

from ..distributed import Dist
from ..errors import UserError


def _set_every_group(seconds: float) -> None:
    """The timeout of every process group this rank belongs to (the default one, the control group,
    the checkpoint writer's, FSDP's mesh)."""
    for group in list(c10d._world.pg_map):
        if not c10d._rank_not_in_group(group):
            c10d._set_pg_timeout(timedelta(seconds=seconds), group)


class ProcessGroupTimeouts:
    def __init__(self, ctx: Dist, init_s: float, step_s: float):
        self.ctx, self.init_s, self.step_s = ctx, init_s, step_s
        self.short = False  # whether the step timeout is in force

    def after_first_step(self) -> None:
        """Every rank, once, after its first step: once all ranks are there, the short timeout."""
        if not self.ctx.enabled or self.short:
            return
        # no rank still compiling holds the others up under the short one
        dist.barrier(group=self.ctx.control_group)
        _set_every_group(self.step_s)
        self.short = True

    @contextlib.contextmanager
    def long_work(self):
        """Every rank around work long by nature: the long timeout while it runs; the short one again once
        every rank has finished it (a barrier under the long one)."""
        if not (self.ctx.enabled and self.short):
            yield
            return
        _set_every_group(self.init_s)
        yield
        dist.barrier(group=self.ctx.control_group)
        _set_every_group(self.step_s)


def timed_out(err: BaseException) -> bool:
    """Whether `err` is a collective that timed out (gloo's or NCCL's words for it)."""
    text = str(err)
    return isinstance(err, RuntimeError) and ("timed out" in text.lower()  # gloo: "Timed out waiting ..."
                                              or "Watchdog caught collective operation timeout" in text)


def timeout_error(cfg_dist, phases) -> UserError:
    """The one line for a collective that timed out: which timeout, where this rank was, what to do."""
    phase, step, _ = phases.now
    key, seconds = (("dist.step_timeout_s", cfg_dist.step_timeout_s) if phases.warm
                    else ("dist.init_timeout_s", cfg_dist.init_timeout_s))
    return UserError(
        f"a collective in {phase} of step {step} timed out after {key} {seconds:g} s: another rank never "
        "reached it (its output says why, or it hangs); with train.watchdog on and train.hang_timeout_s "
        "below the timeout, the hang is named and its stacks written first")
