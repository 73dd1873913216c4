import tracemalloc

import numpy as np
import pytest

from gptdist.data.order import FeistelOrder
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
    assert np.array_equal(np.sort(reference.order()[0:103]), np.arange(103))


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


@pytest.mark.parametrize("n", [1, 2, 3, 7, 64, 1000, 4097])
def test_the_order_on_the_fly_is_a_permutation_of_every_size_and_one_per_seed_and_epoch(n):
    order = FeistelOrder(n, seed=5, epoch=0)
    whole = order[0:n]
    assert np.array_equal(np.sort(whole), np.arange(n))
    assert np.array_equal(np.concatenate([order[0 : n // 2], order[n // 2 : n]]), whole)  # any slices agree
    if n >= 64:  # another epoch or seed: another order
        assert not np.array_equal(FeistelOrder(n, seed=5, epoch=1)[0:n], whole)
        assert not np.array_equal(FeistelOrder(n, seed=6, epoch=0)[0:n], whole)
        assert not np.array_equal(whole, np.arange(n))


def test_a_sampler_over_10_to_the_12_windows_serves_steps_holding_nothing_that_grows_with_them():
    tracemalloc.start()
    try:
        samplers = [DistributedStepSampler(10**12, 64, rank, 4, seed=1) for rank in range(4)]
        steps = [np.concatenate([s.next_step() for s in samplers]) for _ in range(100)]
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2**20  # under 1 MiB, where one epoch's permutation would be 4 TB
    seen = np.concatenate(steps)
    assert len(set(seen.tolist())) == len(seen) == 6400 and seen.min() >= 0 and seen.max() < 10**12
    assert seen.max() > 10**11  # drawn from the whole range


def test_a_checkpoint_of_the_earlier_order_resumes_in_it():
    """States written before the order had a name held the epoch's whole seeded permutation."""
    sampler = DistributedStepSampler(200, 8, 1, 2, seed=3)
    sampler.load_state_dict({"epoch": 2, "position": 40, "seed": 3, "num_samples": 200})
    permutation = np.random.default_rng([3, 2]).permutation(200)
    assert np.array_equal(sampler.next_step(), permutation[44:48])  # rank 1's half of the 6th step
    assert sampler.state_dict()["order"] == "permutation"
    assert DistributedStepSampler(200, 8, 0, 1, seed=3).state_dict()["order"] == "feistel"
