"""The data a planned run meets: tokens in its train split, windows, steps in an epoch, epochs it makes.

From the prepared folders where they are on this machine (the run's own sampler, so a mixture or
document windows count as the run counts them), else from `--data-tokens` (windows of
model.context_length + 1 tokens every data.stride), else unknown.
"""

from dataclasses import dataclass

from ..config import Config
from ..data import sources
from ..data.windows import window_count


@dataclass
class DataPlan:
    source: str  # where the figures come from
    tokens: int | None = None
    windows: int | None = None
    steps_per_epoch: int | None = None


def data_plan(
    cfg: Config, world_size: int, global_batch: int, here: bool, data_tokens: int | None
) -> DataPlan:
    """The figures at `global_batch` sequences a step; a batch larger than the data is refused as `train`
    refuses it."""
    if here:
        opened = sources.open_sources(cfg)
        sampler, _ = sources.training_order(cfg, opened, global_batch, 0, world_size, report=False)
        windows = (
            sampler.num_samples
            if not sources.mixed(cfg)
            else sum(source.stream.windows_per_epoch for source in sampler.sources)
        )
        return DataPlan(
            "the prepared data folders",
            sum(source.train.total_tokens for source in opened),
            windows,
            sampler.steps_per_epoch,
        )
    if data_tokens is None:
        return DataPlan("unknown: the data is not on this machine (give --data-tokens N)")
    window = cfg.model.context_length + 1
    windows = window_count(data_tokens, window, cfg.data.stride)
    sources.check_batch_fits(global_batch, windows, window)
    return DataPlan("--data-tokens", data_tokens, windows, windows // global_batch)
