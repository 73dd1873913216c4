"""The learning-rate schedule, per optimizer step: the book's appendix D, or warmup-stable-decay.

Linear warmup from `initial_lr` to the peak `optim.lr` over `warmup_steps`, then (schedule.decay)
a half-cosine from the peak down to `min_lr` at the last step (appendix D), the peak to the end
(constant), or the peak until the last `decay_fraction` of the run, then a straight line down to
`min_lr` at the last step (wsd: warmup-stable-decay, as the modern recipe trains).
"""

import math

from torch.optim import Optimizer

from ..config import ScheduleConfig


class WarmupDecaySchedule:
    def __init__(self, optimizer: Optimizer, cfg: ScheduleConfig, peak_lr: float, total_steps: int):
        self.optimizer, self.cfg, self.peak_lr, self.total_steps = optimizer, cfg, peak_lr, total_steps
        self.step_count = 0  # optimizer steps taken; the next step uses lr_at(step_count)

    def lr_at(self, step: int) -> float:
        cfg = self.cfg
        if step < cfg.warmup_steps:
            return cfg.initial_lr + step * (self.peak_lr - cfg.initial_lr) / cfg.warmup_steps
        if cfg.decay == "constant":
            return self.peak_lr
        if cfg.decay == "wsd":
            decay_steps = max(1, round(cfg.decay_fraction * (self.total_steps - cfg.warmup_steps)))
            progress = (step - (self.total_steps - decay_steps)) / decay_steps
            return self.peak_lr + (cfg.min_lr - self.peak_lr) * min(max(progress, 0.0), 1.0)
        progress = (step - cfg.warmup_steps) / max(1, self.total_steps - cfg.warmup_steps)
        return cfg.min_lr + (self.peak_lr - cfg.min_lr) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    def apply(self) -> float:
        """Set the learning rate of the next optimizer step; returns it."""
        lr = self.lr_at(self.step_count)
        for group in self.optimizer.param_groups:
            # a group with a peak of its own (Muon's, training/muon.py) follows the same curve, scaled
            group["lr"] = lr * group.get("lr_scale", 1.0)
        return lr

    def step(self) -> None:
        self.step_count += 1

    def state_dict(self) -> dict:
        return {"step_count": self.step_count}

    def load_state_dict(self, state: dict) -> None:
        self.step_count = state["step_count"]
