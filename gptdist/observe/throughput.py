"""The run's clock: time to the first step, tokens per second, MFU and the time left.

Read only where the loop syncs with the device anyway (at logging intervals), so the
figures cover the GPU's work up to that point.
"""

import time

import torch


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Throughput:
    def __init__(self, tokens_per_step: int, flops_per_token: float, peak: tuple[float, str], world_size: int,
                 total_steps: int):
        """`peak`: (FLOP/s, where the figure comes from), as flops.device_peak gives it."""
        self.tokens_per_step, self.flops_per_token = tokens_per_step, flops_per_token
        self.peak_flops, self.peak_source = peak
        self.world_size, self.total_steps = world_size, total_steps
        self.started = None  # set when the loop begins (`start`)

    def start(self, step: int) -> None:
        """The loop begins at `step` (0, or where a resumed run continues)."""
        self.started = self.last_time = time.perf_counter()
        self.start_step = self.last_step = step
        self.warm_time = self.warm_step = None  # set after the first step (compilation, warm-up)

    def elapsed(self) -> float:
        """Seconds since the loop began (0 before it has): evaluations and checkpoints included."""
        return 0.0 if self.started is None else time.perf_counter() - self.started

    def first_step_done(self, device: torch.device) -> float:
        """Seconds from the start to the end of the first step, compilation included (syncs once)."""
        synchronize(device)
        self.warm_time, self.warm_step = time.perf_counter(), self.start_step + 1
        return self.warm_time - self.started

    def measure(self, step: int) -> dict:
        """tokens_per_sec and mfu since the last call, and eta_s from the mean step time after the first
        step."""
        now = time.perf_counter()
        seconds_per_step = (now - self.last_time) / max(1, step - self.last_step)
        self.last_time, self.last_step = now, step
        tokens_per_sec = self.tokens_per_step / seconds_per_step
        if self.warm_step is not None and step > self.warm_step:  # evaluations and checkpoints included
            seconds_per_step = (now - self.warm_time) / (step - self.warm_step)
        return {"tokens_per_sec": tokens_per_sec,
                "mfu": tokens_per_sec / self.world_size * self.flops_per_token / self.peak_flops,
                "eta_s": round((self.total_steps - step) * seconds_per_step, 1)}


def duration(seconds: float) -> str:
    """1h02m, 12m05s, 42s."""
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"
