import math

import pytest
import torch

from gptdist.config import ScheduleConfig
from gptdist.training.schedule import WarmupDecaySchedule


def book_lr(step, warmup, total, initial, peak, minimum):
    """Appendix D's formula, written out as in the book."""
    if step < warmup:
        return initial + step * (peak - initial) / warmup
    progress = (step - warmup) / (total - warmup)
    return minimum + (peak - minimum) * 0.5 * (1 + math.cos(math.pi * progress))


@pytest.mark.parametrize("warmup", [0, 1, 20])
def test_schedule_matches_appendix_d(warmup):
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=5e-4)
    cfg = ScheduleConfig(warmup_steps=warmup, initial_lr=1e-5, min_lr=1e-6)
    schedule = WarmupDecaySchedule(optimizer, cfg, 5e-4, total_steps=100)
    lrs = []
    for _ in range(100):
        lrs.append(schedule.apply())
        assert optimizer.param_groups[0]["lr"] == lrs[-1]
        schedule.step()
    for step, lr in enumerate(lrs):
        assert lr == pytest.approx(book_lr(step, warmup, 100, 1e-5, 5e-4, 1e-6), rel=1e-12)
    assert max(lrs) == pytest.approx(5e-4)
    if warmup:
        assert lrs[0] == 1e-5


def test_constant_decay_and_state_round_trip():
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    schedule = WarmupDecaySchedule(optimizer, ScheduleConfig(warmup_steps=2, decay="constant"), 1e-3, 10)
    for _ in range(5):
        schedule.step()
    assert schedule.apply() == 1e-3
    other = WarmupDecaySchedule(optimizer, ScheduleConfig(), 1e-3, 10)
    other.load_state_dict(schedule.state_dict())
    assert other.step_count == 5


@pytest.mark.parametrize("warmup", [0, 10])
def test_warmup_stable_decay_holds_the_peak_then_falls_linearly_over_the_last_fraction(warmup):
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    cfg = ScheduleConfig(warmup_steps=warmup, initial_lr=0.0, min_lr=1e-5, decay="wsd", decay_fraction=0.25)
    schedule = WarmupDecaySchedule(optimizer, cfg, 1e-3, total_steps=90 + warmup)
    lrs = [schedule.lr_at(step) for step in range(90 + warmup + 1)]
    decay_start = warmup + 90 - round(0.25 * 90)  # 22 of the 90 steps after warmup decay
    assert all(lr == 1e-3 for lr in lrs[warmup:decay_start + 1])
    for step in range(decay_start, 90 + warmup + 1):  # a straight line to min_lr at the last step
        expected = 1e-3 + (1e-5 - 1e-3) * (step - decay_start) / round(0.25 * 90)
        assert lrs[step] == pytest.approx(expected, rel=1e-12)
    assert lrs[90 + warmup] == pytest.approx(1e-5)
    if warmup:
        assert lrs[:warmup] == [step * 1e-3 / warmup for step in range(warmup)]
