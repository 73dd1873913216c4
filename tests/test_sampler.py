import numpy as np
import pytest

from gptdist.data.sampler import DistributedStepSampler


def run_epoch(samplers):
    """Every rank's indices of one epoch, step by step."""
    steps = []
    while not samplers[0].epoch_done():
        steps.append([s.next_step() for s in samplers])
    return steps


@pytest.mark.parametrize("world", [1, 2, 4])
def test_shares_are_disjoint_and_complete_each_epoch(world):
    samplers = [DistributedStepSampler(103, 8, r, world, seed=7) for r in range(world)]
    orders = []
    for epoch in range(3):
        for s in samplers:
            s.set_epoch(epoch)
        steps = run_epoch(samplers)
        assert len(steps) == 103 // 8
        seen = np.concatenate([idx for step in steps for idx in step])
        assert len(seen) == len(set(seen.tolist())) == 12 * 8  # disjoint, no sample twice
        for step in steps:
            assert all(len(idx) == 8 // world for idx in step)
        orders.append(seen)
    assert not np.array_equal(orders[0], orders[1])  # a new permutation each epoch
    reference = DistributedStepSampler(103, 8, 0, 1, seed=7)
    assert np.array_equal(np.sort(reference.order()), np.arange(103))


@pytest.mark.parametrize("before, after", [(2, 1), (1, 2), (2, 4)])
def test_resume_on_another_world_size_continues_the_order(before, after):
    whole = DistributedStepSampler(200, 8, 0, 1, seed=3)
    expected = np.concatenate([whole.next_step() for _ in range(25)])
    first = [DistributedStepSampler(200, 8, r, before, seed=3) for r in range(before)]
    seen = [np.concatenate([s.next_step() for s in first]) for _ in range(10)]
    state = first[0].state_dict()
    second = [DistributedStepSampler(200, 8, r, after, seed=3) for r in range(after)]
    for s in second:
        s.load_state_dict(state)
    seen += [np.concatenate([s.next_step() for s in second]) for _ in range(15)]
    assert np.array_equal(np.concatenate(seen), expected)  # nothing twice, nothing skipped, same order
