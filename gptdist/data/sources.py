"""A run's data: its sources (data.sources, or data.dir as the one source), each prepared folder read and
checked, the sources checked against each other, and the order the run trains in.

One strided source trains in the DistributedStepSampler's order (sampler.py), as every run before
mixtures did; a mixture, or document-aligned windows (data.windows documents), in the
MixtureSampler's (mixture.py). Evaluation always reads strided windows of each source's splits, so
that a loss means the same with either kind of training windows.
"""

from dataclasses import dataclass

from ..config import Config
from ..distributed import print0
from ..errors import UserError
from . import documents, shards
from .mixture import MixtureSampler, SourceOrder, StrideStream
from .sampler import DistributedStepSampler
from .windows import TokenWindows


@dataclass
class Source:
    name: str
    key: str  # the config key that names its folder, for messages
    weight: float
    manifest: shards.Manifest
    train: TokenWindows  # strided windows of each split (what evaluation reads)
    val: TokenWindows


def open_sources(cfg: Config) -> list[Source]:
    """Every source's manifest read and its splits' windows made; sources that another tokenizer,
    vocabulary or token type prepared than the first are refused, in one line naming both."""
    sources = []
    for i, source in enumerate(cfg.data.source_list()):
        key = f"data.sources[{i}] ({source.name})" if cfg.data.sources else "data.dir"
        manifest = shards.read_manifest(source.dir)
        train, val = (TokenWindows(manifest, split, cfg.model.context_length, cfg.data.stride)
                      for split in shards.SPLITS)
        sources.append(Source(source.name, key, source.weight, manifest, train, val))
    first = sources[0]
    for other in sources[1:]:
        for what in ("tokenizer", "vocab_size", "eot_token", "dtype"):
            mine, theirs = first.manifest.raw.get(what), other.manifest.raw.get(what)
            if mine != theirs:
                raise UserError(f"{other.key} at {other.manifest.folder} was prepared with {what} {theirs!r} "
                                f"but {first.key} at {first.manifest.folder} with {mine!r}: a run reads one "
                                "vocabulary; prepare every source with the same tokenizer")
    return sources


def check_vocabulary(sources: list[Source], vocab_size: int, whose: str = "model.vocab_size") -> None:
    sources[0].manifest.check_vocabulary(vocab_size, whose)  # the others have the first's (open_sources)


def check_batch_fits(global_batch: int, samples: int, window: int) -> None:
    if global_batch > samples:
        raise UserError(f"a global batch of {global_batch} sequences is larger than the train split "
                        f"({samples} samples of {window} tokens); lower train.micro_batch_size or "
                        "train.grad_accum_steps")


def mixed(cfg: Config) -> bool:
    """Whether the run trains in the MixtureSampler's order rather than one strided source's."""
    return bool(cfg.data.sources) or cfg.data.windows == "documents"


def training_order(cfg: Config, sources: list[Source], global_batch: int, rank: int, world_size: int,
                   report: bool = True) -> tuple[DistributedStepSampler | MixtureSampler, object]:
    """(the sampler, what reads its windows: `.batch(rows)`) of a run; with document windows, the share
    of tokens cropped is printed (`report`; without it, nothing is packed yet)."""
    seed = cfg.run.seed
    if not mixed(cfg):
        train = sources[0].train
        check_batch_fits(global_batch, train.num_samples, train.window)
        return DistributedStepSampler(train.num_samples, global_batch, rank, world_size, seed), train
    orders = []
    for i, source in enumerate(sources):
        own_seed = seed + (i << 32)  # every source its own order (run.seed < 2**32)
        if cfg.data.windows == "documents":
            stream = documents.DocumentStream(source.train, source.manifest.eot_token, own_seed)
            if report:  # packs the order's first group, which its first steps then take
                estimate = stream.estimate()
                print0(f"{source.key}: document-aligned windows, {estimate['cropped_share']:.1%} of tokens "
                       f"cropped (measured on {estimate['blocks_measured']} blocks of "
                       f"{documents.BLOCK_WINDOWS} windows), about {estimate['windows_per_epoch']:,} windows "
                       "an epoch")
        else:
            stream = StrideStream(source.train, own_seed)
        orders.append(SourceOrder(source.name, source.weight, stream))
    sampler = MixtureSampler(orders, global_batch, rank, world_size, seed)
    return sampler, sampler
