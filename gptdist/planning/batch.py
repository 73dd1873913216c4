"""The largest micro-batch that fits a GPU, keeping the global batch: a divisor of each rank's share of
it (micro-batch x accumulation), found by bisection over the divisors with the memory measure."""

from collections.abc import Callable


def divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def largest_fitting(per_rank: int, fits: Callable[[int], bool], known: dict[int, bool]) -> int:
    """The largest divisor of `per_rank` (sequences a rank takes each step) for which `fits(micro_batch)`,
    0 if none; `known` holds answers already measured (filled in as it goes)."""
    candidates = divisors(per_rank)
    low, high = -1, len(candidates)  # candidates[low] fits (or none), candidates[high] does not (or none)
    while high - low > 1:
        middle = (low + high) // 2
        size = candidates[middle]
        if size not in known:
            known[size] = fits(size)
        low, high = (middle, high) if known[size] else (low, middle)
    return candidates[low] if low >= 0 else 0
