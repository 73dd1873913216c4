"""What this rank is doing, and since when: the phase of the loop it is in, told by the training thread
and read by the watchdog's thread (watchdog.py), which never touches anything else of the training's.

A phase is one of a step's (data, forward/backward, optimizer, log) or of the loop's (evaluation,
save, ...). Entering one costs a clock read and a tuple: nothing a step notices. After the first step
(compilation, warm-up), each phase's longest time is kept: a hang is a phase that lasts several times
longer than its kind ever did (`limit`).

The same clock tells the straggler accounting (stragglers.py) this rank's own work since the last log:
the time in data, forward/backward and optimizer, less what it spent waiting for the other ranks'
gradients (`gradients_ready`, from the DDP reduction's hook: parallelize.py).
"""

import time

STEP_PHASES = ("data", "forward/backward", "optimizer", "log")  # in a step's order
LEARNED_FACTOR = 5  # a learned limit is this many times the longest time seen (NVIDIA's resiliency ext.)
LEARNED_FLOOR_S = 60.0  # and never below this


class Phases:
    def __init__(self, hang_timeout_s: float | None, init_timeout_s: float):
        self.hang_timeout_s, self.init_timeout_s = hang_timeout_s, init_timeout_s
        self.now = ("start-up", 0, time.monotonic())  # (phase, step, since): replaced whole, never changed
        self.longest: dict[str, float] = {}  # after warm-up: each phase's longest time
        self.warm = False
        self.gradients_ready: float | None = None  # when this rank's last gradient bucket was ready (DDP)
        self.interval = {"work_s": 0.0, "data_s": 0.0, "wait_s": 0.0}  # since the last `take_interval`
        self._step_started: float | None = None

    def enter(self, phase: str, step: int) -> None:
        """The training thread begins `phase` of `step` (the step being made, or the last one made)."""
        now = time.monotonic()
        previous, _, since = self.now
        if self.warm:  # the first step (compilation, warm-up) is neither a phase's pace nor a rank's
            self.longest[previous] = max(self.longest.get(previous, 0.0), now - since)
            if previous == "data":
                self.interval["data_s"] += now - since
            elif previous == "optimizer" and self._step_started is not None:  # a step's end
                self.interval["work_s"] += now - self._step_started
            if phase == "optimizer" and self.gradients_ready is not None:  # the reduction's wait
                self.interval["wait_s"] += max(0.0, now - self.gradients_ready)
        if phase == "data":
            self._step_started = now
        elif phase == "optimizer":
            self.gradients_ready = None
        self.now = (phase, step, now)

    def warmed_up(self) -> None:
        """After the first step: from now on each phase's time is learned, and each step's work counted
        (the first, compilation and warm-up, is not)."""
        self.warm = True
        self._step_started = None

    def limit(self, phase: str) -> float:
        """How long `phase` may last before it is a hang: train.hang_timeout_s for a step's phases where
        set (and at least that for the loop's), else learned; dist.init_timeout_s until the phase has
        been seen once after warm-up."""
        if phase not in self.longest:
            return self.init_timeout_s
        learned = LEARNED_FACTOR * self.longest[phase]
        if self.hang_timeout_s is None:
            return max(LEARNED_FLOOR_S, learned)
        return self.hang_timeout_s if phase in STEP_PHASES else max(self.hang_timeout_s, learned)

    def take_interval(self) -> dict:
        """This rank's own work, data wait and reduction wait since the last call (seconds); own work is
        the time in data, forward/backward and optimizer less the reduction's wait."""
        taken = dict(self.interval)
        taken["work_s"] = max(0.0, taken["work_s"] - taken["wait_s"])
        self.interval = {"work_s": 0.0, "data_s": 0.0, "wait_s": 0.0}
        return taken
