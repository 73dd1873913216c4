"""Typed run configuration: YAML file + `section.key=value` overrides -> dataclasses.

Every key is declared once, where its field is: its type (a `Literal` lists its choices), its
default, the range it must lie in, and, for model keys, whether it shapes the weights
(`option(..., architecture=...)`). Everything else is derived from those declarations: the
checks below, the keys a resume compares, the keys `model.init_from` takes. An unknown key, a
value of the wrong type or out of range, or a missing file is one UserError naming the key.
"""

import dataclasses
import keyword
import math
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import yaml

from .errors import UserError
from .tokenizer import GPT2_VOCAB_SIZE

# Model presets: the book's GPT-2 sizes (context 1024), and small shapes that train on a CPU.
PRESETS: dict[str, dict] = {
    "gpt2-small": dict(emb_dim=768, n_layers=12, n_heads=12, context_length=1024),  # 124M
    "gpt2-medium": dict(emb_dim=1024, n_layers=24, n_heads=16, context_length=1024),  # 355M
    "gpt2-large": dict(emb_dim=1280, n_layers=36, n_heads=20, context_length=1024),  # 774M
    "gpt2-xl": dict(emb_dim=1600, n_layers=48, n_heads=25, context_length=1024),  # 1558M
    "cpu-tiny": dict(emb_dim=128, n_layers=4, n_heads=4, context_length=128),
    "cpu-small": dict(emb_dim=384, n_layers=6, n_heads=6, context_length=256),
}


@dataclass(frozen=True)
class Range:
    """The values a key accepts, worded as its error message says them (None is always accepted
    where the key's type allows it)."""

    description: str
    accepts: Callable[[typing.Any], bool]


POSITIVE = Range("> 0", lambda v: v > 0)
NON_NEGATIVE = Range(">= 0", lambda v: v >= 0)
AT_LEAST_ONE = Range("at least 1", lambda v: v >= 1)
FINITE_POSITIVE = Range("finite and > 0", lambda v: math.isfinite(v) and v > 0)
FINITE_NON_NEGATIVE = Range("finite and >= 0", lambda v: math.isfinite(v) and v >= 0)
PROBABILITY = Range("in [0, 1)", lambda v: 0 <= v < 1)
FRACTION = Range("in (0, 1]", lambda v: 0 < v <= 1)
BETAS = Range("two numbers in [0, 1)", lambda v: all(0 <= b < 1 for b in v))
NON_EMPTY = Range("a non-empty text", lambda v: v != "")
SEED = Range("in [0, 2**32)", lambda v: 0 <= v < 2**32)  # what every generator seeded from it takes
POSITIVE_OR_AUTO = Range("> 0 or auto", lambda v: v == "auto" or v > 0)

# What a model key is to the weights (an option's `architecture`). Both kinds shape them, so a
# checkpoint resumes only with the same value. model.init_from takes a SOURCE key's value from its
# source, and cuts or pads its weights to the run's own value of a SHAPE key (context, vocabulary rows).
SHAPE = "shape"
SOURCE = "source"


RESUME_MODES = ("auto", "never")  # checkpoint.resume's values that are not paths

# What a path key is to a run (an option's `path`): something it reads, or the folder it writes.
INPUT, OUTPUT = "input", "output"


def option(default=None, check: Range | None = None, *, architecture: str | None = None,
           path: str | None = None, factory=None):
    """A config field: its default (or a `factory` for mutable ones), the Range its values must lie
    in, for model keys SHAPE or SOURCE, and for path keys INPUT or OUTPUT."""
    metadata = {"check": check, "architecture": architecture, "path": path}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class RunConfig:
    # checkpoints, metrics.jsonl, config.yaml, loss.png go here; never one of the run's INPUT paths
    out_dir: str = option("out/run", NON_EMPTY, path=OUTPUT)
    seed: int = option(1337, SEED)  # seeds weights, dropout and the data order


@dataclass
class SourceConfig:
    """One source of a mixture (data.sources): a prepared folder and its share of every global batch."""

    name: str = option(None, NON_EMPTY)  # how metrics name it: tokens_by_source, val_loss_by_source
    dir: str = option(None, NON_EMPTY, path=INPUT)  # a folder made by `python -m gptdist.prepare`
    weight: float = option(1.0, FINITE_POSITIVE)  # relative to the other sources' weights


@dataclass
class DataConfig:
    dir: str = option("data/verdict", NON_EMPTY, path=INPUT)  # a folder made by `python -m gptdist.prepare`
    # a mixture: [{name, dir, weight}, ...], each global batch's windows drawn from them by weight
    # (data/mixture.py); when given, data.dir is not read
    sources: list[SourceConfig] = option(factory=list)
    # tokens between sample starts; None: model.context_length (no overlap)
    stride: int | None = option(None, POSITIVE)
    # "stride": a window every data.stride tokens; "documents": every window starts at a document's first
    # token, short documents packed best-fit into one (data/documents.py)
    windows: Literal["stride", "documents"] = "stride"
    verify: bool = True  # check every shard's sha256 and token ids at start (one read of the data)

    def source_list(self) -> list[SourceConfig]:
        """The run's sources: data.sources, or data.dir as the one source."""
        return self.sources or [SourceConfig(name=Path(self.dir).name or "data", dir=self.dir)]


@dataclass
class ModelConfig:
    # gpt2-small|medium|large|xl or a small CPU preset; keys below override it
    preset: Literal[tuple(PRESETS)] | None = None
    vocab_size: int = option(GPT2_VOCAB_SIZE, POSITIVE, architecture=SOURCE)
    # embedding/head rows padded to a multiple (50,257 -> 50,304); logits stay vocab_size
    vocab_multiple: int = option(64, POSITIVE, architecture=SHAPE)
    context_length: int = option(256, POSITIVE, architecture=SHAPE)
    emb_dim: int = option(768, POSITIVE, architecture=SOURCE)
    n_heads: int = option(12, POSITIVE, architecture=SOURCE)
    n_layers: int = option(12, POSITIVE, architecture=SOURCE)
    drop_rate: float = option(0.1, PROBABILITY)
    qkv_bias: bool = option(False, architecture=SOURCE)
    # biases in the other linear layers and the LayerNorms (GPT-2's); false: none, as nanoGPT's bias=False
    bias: bool = option(True, architecture=SOURCE)
    # how padded logits are kept out of the softmax: bias (-inf, in the head's matmul) | slice
    vocab_padding: Literal["bias", "slice"] = "bias"
    tie_embeddings: bool = option(False, architecture=SOURCE)  # out_head shares tok_emb's matrix (as GPT-2)
    init: Literal["gpt2", "torch"] = "gpt2"  # gpt2: N(0, 0.02), residual projections scaled; torch: PyTorch's
    # The modern recipe's options (configs/*-modern*.yaml); each default is GPT-2's own.
    # learned: a table of position embeddings; rotary: queries and keys rotated by their position (RoPE)
    positions: Literal["learned", "rotary"] = option("learned", architecture=SOURCE)
    rotary_base: float = option(10000.0, FINITE_POSITIVE, architecture=SOURCE)  # RoPE's theta
    norm: Literal["layernorm", "rmsnorm"] = option("layernorm", architecture=SOURCE)  # every norm's kind
    qk_norm: bool = option(False, architecture=SOURCE)  # RMS-normalise each head's queries and keys
    activation: Literal["gelu", "relu2"] = option("gelu", architecture=SOURCE)  # the MLP's: GELU, ReLU²
    # logits -> cap * tanh(logits / cap): a soft bound on them; None: none
    logit_softcap: float | None = option(None, FINITE_POSITIVE, architecture=SOURCE)
    # attention stays inside each document of a window: a token after an <|endoftext|> sees none before it
    document_mask: bool = False
    # attention and MLP output projections start at zero: every block starts as the identity
    zero_init_projections: bool = False
    # Start from pretrained weights (their architecture replaces the SOURCE keys above; dropout, padding
    # and a shorter context stay this config's): gpt2-124M|355M|774M|1558M (OpenAI's, downloaded), a
    # folder of OpenAI or Hugging Face GPT-2 files, or a gptdist checkpoint or run folder.
    init_from: str | None = option(None, NON_EMPTY, path=INPUT)


@dataclass
class TrainConfig:
    # sequences per process per forward pass. auto (CUDA): the largest that fits the GPU, as gptdist.plan
    # measures it and a real step confirms, with train.grad_accum_steps made to keep train.global_batch_size
    # (training/micro_batch.py); a resumed run keeps the one it chose.
    micro_batch_size: int | Literal["auto"] = option(8, POSITIVE_OR_AUTO)
    # sequences per optimizer step over all processes: needed with micro_batch_size auto; with a number,
    # checked at start against micro_batch_size x grad_accum_steps x processes. None: that product.
    global_batch_size: int | None = option(None, POSITIVE)
    # micro-batches per optimizer step (at the world size it was set for)
    grad_accum_steps: int = option(1, POSITIVE)
    max_steps: int | None = option(None, POSITIVE)  # optimizer steps; None: run `epochs` epochs
    epochs: int = option(1, POSITIVE)
    # auto: bf16 on CUDA that supports it, else fp32
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    grad_clip: float | None = option(1.0, FINITE_NON_NEGATIVE)  # max global gradient norm; None or 0: none
    compile: bool = False  # torch.compile the model and its loss as one graph
    compile_mode: Literal["default", "reduce-overhead", "max-autotune",
                          "max-autotune-no-cudagraphs"] = "default"  # torch.compile's mode
    # FP8 matmuls in the blocks' linear layers (torchao); docs/performance.md
    float8: Literal["tensorwise", "rowwise"] | None = None
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # Stop after this many steps in a row with a non-finite loss or gradient norm. None of them is applied;
    # the count lives on the device and is read at the next log, eval or checkpoint: at most
    # logging.interval - 1 further steps run (and are skipped too) before the stop.
    max_bad_steps: int = option(5, POSITIVE)
    tf32: bool = True  # on CUDA, fp32 matmuls on tensor cores
    reuse_host_memory: bool = True  # on CPU, keep freed large blocks in the heap (training/heap.py)
    ddp_bucket_mb: int = option(25, POSITIVE)  # DDP gradient all-reduce bucket size
    # ddp: every rank holds all weights, gradients and AdamW moments (16 bytes per parameter). fsdp: FSDP2
    # shards them across the ranks (about 16 / world_size bytes per parameter) and gathers each block's
    # weights just before it runs; for models whose state does not fit one GPU. Needs torchrun.
    parallel: Literal["ddp", "fsdp"] = "ddp"
    # fsdp: free each block's gathered weights after its forward (gathered again in backward)
    fsdp_reshard_after_forward: bool = True
    # none|blocks: keep only each block's input, recompute the rest in backward
    activation_checkpointing: Literal["none", "blocks"] = "none"
    # A phase of a step (data, forward/backward, optimizer, log) or of the loop (evaluation, save, ...) that
    # lasts longer than this is a hang: every rank writes its stacks to RUN/hangs/, one line names the rank
    # that held the others up, and the ranks exit with code 75 for torchrun --max-restarts to restart them
    # (training/watchdog.py). None: learned, 5x the longest such phase seen so far, at least 60 s; until a
    # phase has been seen once, dist.init_timeout_s.
    hang_timeout_s: float | None = option(None, FINITE_POSITIVE)
    # A watchdog thread per rank (hangs named, stacks on SIGUSR2) and each rank's own work gathered at every
    # log (slow ranks named); false: neither (training/watchdog.py, training/stragglers.py).
    watchdog: bool = True
    # At each log, a rank whose own work (its time not spent waiting for the others) over the last few
    # logging intervals is at least this many times the other ranks' median is named as slow.
    straggler_ratio: float = option(1.25, Range("finite and > 1", lambda v: math.isfinite(v) and v > 1))
    # Skip a step whose loss or gradient norm lies more than this many standard deviations above the mean
    # of the last spike_window applied steps (after spike_warmup of them); 0: never. Decided on the device,
    # every skipped step a line of RUN/spikes.jsonl (training/spikes.py).
    spike_zscore: float = option(0.0, FINITE_NON_NEGATIVE)
    spike_window: int = option(128, Range("at least 2", lambda v: v >= 2))
    spike_warmup: int = option(64, Range("at least 2", lambda v: v >= 2))


@dataclass
class DistConfig:
    # Every process group's timeout from start-up through a resume's reading and the first step
    # (compilation), and around work that is long by nature (lm-eval, HellaSwag, a blocking save).
    init_timeout_s: float = option(600.0, FINITE_POSITIVE)
    # Every process group's timeout once all ranks have finished their first step: a collective that a
    # rank does not reach within it fails on the others.
    step_timeout_s: float = option(300.0, FINITE_POSITIVE)


@dataclass
class OptimConfig:
    # adamw: AdamW for every parameter. muon: Muon for the blocks' 2-D matrices, AdamW for the embeddings,
    # the head, the norms' gains and the biases (training/muon.py)
    optimizer: Literal["adamw", "muon"] = "adamw"
    lr: float = option(4e-4, FINITE_POSITIVE)  # AdamW's peak learning rate
    # AdamW's, applied to matrices (linear and embedding weights) only
    weight_decay: float = option(0.1, FINITE_NON_NEGATIVE)
    betas: tuple[float, float] = option((0.9, 0.95), BETAS)
    muon_lr: float = option(0.02, FINITE_POSITIVE)  # Muon's peak learning rate, on the same schedule
    muon_momentum: float = option(0.95, PROBABILITY)
    muon_weight_decay: float = option(0.0, FINITE_NON_NEGATIVE)  # decoupled, on Muon's matrices


@dataclass
class ScheduleConfig:
    warmup_steps: int = option(0, NON_NEGATIVE)  # linear warmup from initial_lr to optim.lr
    initial_lr: float = option(1e-5, FINITE_NON_NEGATIVE)
    min_lr: float = option(1e-5, FINITE_NON_NEGATIVE)  # the end of the half-cosine decay
    # after warmup: cosine (appendix D), constant, or wsd (stable at the peak, then a linear decay)
    decay: Literal["cosine", "constant", "wsd"] = "cosine"
    # wsd: the share of the steps after warmup spent decaying (the last ones)
    decay_fraction: float = option(0.2, FRACTION)


@dataclass
class EvalConfig:
    interval: int = option(100, POSITIVE)  # optimizer steps between evaluations (and at the end)
    batches: int = option(10, POSITIVE)  # batches of each split per evaluation
    # evaluate (and sample) before the first update too, so that curves start at the initial loss
    at_start: bool = True
    # optimizer steps between HellaSwag scores (and at the end); None: never
    hellaswag_interval: int | None = option(None, POSITIVE)
    # a file in HellaSwag's JSONL format; None: the official validation set (downloaded)
    hellaswag_file: str | None = option(None, NON_EMPTY, path=INPUT)
    # score only the first N items; None: all (10,042 in the validation set)
    hellaswag_items: int | None = option(None, POSITIVE)
    # lm-evaluation-harness tasks scored at every evaluation (pip install 'gptdist[eval]'); []: none
    lm_eval_tasks: list[str] = option(factory=list)
    lm_eval_include_path: str | None = option(None, NON_EMPTY, path=INPUT)  # a folder of lm-eval task YAMLs
    lm_eval_limit: int | None = option(None, POSITIVE)  # score only the first N items of each task
    lm_eval_num_fewshot: int | None = option(None, NON_NEGATIVE)  # None: each task's own


@dataclass
class CheckpointConfig:
    interval: int = option(500, POSITIVE)  # optimizer steps between checkpoints (and at the end)
    keep: int = option(3, AT_LEAST_ONE)  # the newest checkpoints kept
    # auto: from the newest checkpoint in out_dir; never; or a checkpoint path (RESUME_MODES are no paths)
    resume: str = option("auto", NON_EMPTY, path=INPUT)
    # `checkpoint.async` (a Python keyword, hence the _): write in the background while training goes
    # on; training stops only to copy the state into host memory. false: every save blocks until durable.
    async_: bool = True
    # false: rank 0 writes one file with the full state (gathered to its host memory under fsdp).
    # true: a torch.distributed.checkpoint folder, every rank writing its own shards; for models whose
    # full state should not pass through one host. null: sharded under train.parallel fsdp (no rank
    # holds the whole state), one file under ddp. Both resume on any world size, under ddp or fsdp.
    sharded: bool | None = None


@dataclass
class LoggingConfig:
    interval: int = option(10, POSITIVE)  # optimizer steps between metrics rows
    wandb: bool = False  # track the run in Weights & Biases (rank 0); mode from WANDB_MODE
    wandb_project: str = "gptdist"
    wandb_entity: str | None = None
    wandb_run_name: str | None = None  # default: the name of run.out_dir
    wandb_tags: list[str] = option(factory=list)


@dataclass
class SampleConfig:
    prompt: str = option("Every effort moves you", NON_EMPTY)
    max_new_tokens: int = option(50, POSITIVE)
    temperature: float = option(1.0, FINITE_NON_NEGATIVE)  # 0: greedy
    top_k: int | None = option(50, POSITIVE)  # None: no top-k filter


@dataclass
class Config:
    run: RunConfig = field(default_factory=RunConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    dist: DistConfig = field(default_factory=DistConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)

    def to_dict(self) -> dict:
        return {section: {key_of(name): value for name, value in values.items()}
                for section, values in dataclasses.asdict(self).items()}


def architecture_keys(*roles: str) -> tuple[str, ...]:
    """The model keys whose `architecture` is one of `roles` (SHAPE, SOURCE), in declaration order."""
    return tuple(f.name for f in dataclasses.fields(ModelConfig) if f.metadata.get("architecture") in roles)


ARCHITECTURE_KEYS = architecture_keys(SHAPE, SOURCE)  # a checkpoint must match them to be resumed
PRETRAINED_KEYS = architecture_keys(SOURCE)  # what model.init_from takes from its source


def path_keys(cfg: Config, role: str) -> list[tuple[str, str]]:
    """(key, value) of every path key declared `role` (INPUT or OUTPUT) that `cfg` sets to a path."""
    keys = [(f"{section}.{key_of(f.name)}", getattr(getattr(cfg, section), f.name))
            for section in typing.get_type_hints(Config) for f in dataclasses.fields(getattr(cfg, section))
            if f.metadata.get("path") == role]
    if role == INPUT:  # a mixture's folders are read instead of data.dir
        keys += [(f"data.sources[{i}].dir", source.dir) for i, source in enumerate(cfg.data.sources)]
    return [(key, value) for key, value in keys
            if value is not None and not (key == "checkpoint.resume" and value in RESUME_MODES)
            and not (key == "data.dir" and cfg.data.sources)]


def key_of(field_name: str) -> str:
    """The config key of a dataclass field: a key that is a Python keyword is a field with a trailing _."""
    return field_name[:-1] if keyword.iskeyword(field_name[:-1]) else field_name


def field_of(key: str) -> str:
    return f"{key}_" if keyword.iskeyword(key) else key


def _check_range(key: str, value, check: Range | None) -> None:
    if value is not None and check is not None and not check.accepts(value):
        raise UserError(f"config key {key}: {value!r} is out of range (must be {check.description})")


def _convert(key: str, value, hint):
    """`value` as type `hint`, or a UserError naming `key`."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        if len(options) == 1:
            return _convert(key, value, options[0])
        for option in options:  # a number or a word (micro_batch_size: 8 or auto)
            try:
                return _convert(key, value, option)
            except UserError:
                pass
        names = [" or ".join(typing.get_args(option)) if typing.get_origin(option) is Literal
                 else option.__name__ for option in options]
        raise UserError(f"config key {key}: expected {' or '.join(names)}, got {value!r}")
    if origin is Literal:
        if value not in args:
            raise UserError(f"config key {key}: {value!r} is not one of {', '.join(args)}")
        return value
    if dataclasses.is_dataclass(hint):  # an entry of a list of sections: data.sources[i]
        return _build_section(key, hint, value)
    if origin is list:
        if not isinstance(value, list):
            raise UserError(f"config key {key}: expected a list, got {value!r}")
        return [_convert(f"{key}[{i}]" if dataclasses.is_dataclass(args[0]) else key, v, args[0])
                for i, v in enumerate(value)]
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise UserError(f"config key {key}: expected a list of {len(args)} numbers, got {value!r}")
        return tuple(_convert(key, v, a) for v, a in zip(value, args, strict=False))
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):  # yaml reads 4e-4 (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
        raise UserError(f"config key {key}: expected {hint.__name__}, got {type(value).__name__} {value!r}")
    return value


def _with_preset(values: dict) -> dict:
    """The model section with its preset's keys filled in where the section does not set them."""
    preset = values.get("preset")
    if preset is None:
        return values
    if not isinstance(preset, str) or preset not in PRESETS:
        raise UserError(f"config key model.preset: unknown preset {preset!r}; "
                        f"known presets: {', '.join(PRESETS)}")
    return {**PRESETS[preset], **values}


def _build_section(name: str, cls: type, values) -> object:
    if not isinstance(values, dict):
        raise UserError(f"config section {name} must be a mapping of keys, got {values!r}")
    values = _with_preset(dict(values)) if name == "model" else dict(values)
    hints = typing.get_type_hints(cls)
    keys = [key_of(field_name) for field_name in hints]
    for key in values:
        if key not in keys:
            raise UserError(f"unknown config key {name}.{key}; valid keys of {name}: {', '.join(keys)}")
    section = cls(**{field_of(k): _convert(f"{name}.{k}", v, hints[field_of(k)]) for k, v in values.items()})
    for f in dataclasses.fields(cls):
        value = getattr(section, f.name)
        if value is None and type(None) not in typing.get_args(hints[f.name]):  # a key without a default
            raise UserError(f"config key {name}.{key_of(f.name)} is missing; {name} needs "
                            f"{', '.join(key_of(f.name) for f in dataclasses.fields(cls))}")
        _check_range(f"{name}.{key_of(f.name)}", value, f.metadata.get("check"))
    return section


def check_model_shape(model: ModelConfig) -> None:
    """Refuse, in one line naming the keys, a model shape its options cannot compute."""
    if model.emb_dim % model.n_heads:
        raise UserError(f"model.emb_dim {model.emb_dim} is not divisible by model.n_heads {model.n_heads}: "
                        "every head takes an equal share of the width; choose an n_heads that divides it")
    head_dim = model.emb_dim // model.n_heads
    if model.positions == "rotary" and head_dim % 2:
        raise UserError(f"model.positions rotary rotates pairs of channels, but model.emb_dim "
                        f"{model.emb_dim} / model.n_heads {model.n_heads} gives heads of {head_dim}, an odd "
                        "number; choose an even head width")


def _check_combinations(cfg: Config) -> None:
    """What no single key's range says: the model's shape, and the options that need a shape of it."""
    check_model_shape(cfg.model)
    if cfg.train.spike_warmup > cfg.train.spike_window:
        raise UserError(f"train.spike_warmup {cfg.train.spike_warmup} is larger than train.spike_window "
                        f"{cfg.train.spike_window}, the most steps the window holds; lower it, or widen the "
                        "window")
    names = [source.name for source in cfg.data.sources]
    for i, name in enumerate(names):
        if name in names[:i]:
            raise UserError(f"config key data.sources[{i}].name: {name!r} names two sources; give each its "
                            "own name")
    if cfg.train.float8 and cfg.model.emb_dim % 16:
        raise UserError(f"train.float8 needs the blocks' linear layers in multiples of 16, but model.emb_dim "
                        f"is {cfg.model.emb_dim}; choose a multiple of 16 or set train.float8: null")


def _resolve_defaults(cfg: Config) -> Config:
    """The defaults that depend on other keys, made explicit here and nowhere else: data.stride (the
    context), checkpoint.sharded (under fsdp), train.grad_clip 0 (none, as null)."""
    if cfg.data.stride is None:
        cfg.data.stride = cfg.model.context_length
    if cfg.checkpoint.sharded is None:
        cfg.checkpoint.sharded = cfg.train.parallel == "fsdp"
    if cfg.train.grad_clip == 0:
        cfg.train.grad_clip = None
    return cfg


def build(raw: dict) -> Config:
    """A Config from a nested dict, checking every key and type.

    `model.preset` fills the model keys the dict does not set itself; the combinations of keys are
    checked (`_check_combinations`) and the defaults that depend on other keys resolved
    (`_resolve_defaults`).
    """
    if not isinstance(raw, dict):
        raise UserError(f"the config must be a mapping of sections, got {type(raw).__name__}")
    sections = typing.get_type_hints(Config)
    unknown = set(raw) - set(sections)
    if unknown:
        raise UserError(f"unknown config section {sorted(unknown)[0]!r}; "
                        f"valid sections: {', '.join(sections)}")
    cfg = Config(**{name: _build_section(name, cls, raw.get(name) or {}) for name, cls in sections.items()})
    _check_combinations(cfg)
    return _resolve_defaults(cfg)


def apply_override(raw: dict, override: str) -> None:
    """Apply one `section.key=value` (value parsed as YAML: 3, 4e-4, true, null, [0.9, 0.95])."""
    if "=" not in override or "." not in override.split("=", 1)[0]:
        raise UserError(f"override {override!r} is not of the form section.key=value")
    path, text = override.split("=", 1)
    section, key = path.split(".", 1)
    try:
        value = yaml.safe_load(text) if text else ""
    except yaml.YAMLError:
        value = text
    if not isinstance(value, (str, int, float, bool, list, type(None))):  # e.g. a YAML date: keep the text
        value = text
    target = raw.setdefault(section, {})
    if not isinstance(target, dict):
        raise UserError(f"override {override!r}: config section {section} is not a mapping")
    target[key] = value


def load(path: str | None, overrides: list[str]) -> Config:
    raw: dict = {}
    if path is not None:
        file = Path(path)
        if file.is_dir():
            raise UserError(f"config file {file} is a folder; give a YAML file (configs/ holds examples)")
        if not file.is_file():
            raise UserError(f"config file {file} does not exist")
        try:
            raw = yaml.safe_load(file.read_text()) or {}
        except yaml.YAMLError as err:
            raise UserError(f"config file {file} is not valid YAML: {str(err).splitlines()[0]}") from None
        except UnicodeDecodeError:
            raise UserError(f"config file {file} is not text; give a YAML config (configs/ holds "
                            "examples)") from None
        except OSError as err:
            raise UserError(f"cannot read config file {file}: {err.strerror or err}") from None
        if not isinstance(raw, dict):
            raise UserError(f"config file {file} holds a {type(raw).__name__}, not a mapping of sections "
                            "(run:, model:, train:, ...); give a YAML config (configs/ holds examples)")
    for override in overrides:
        apply_override(raw, override)
    return build(raw)


def save(config: Config, path: Path) -> None:
    """The config as YAML, as `load` reads it back (tuples written as lists)."""
    data = {section: {key: list(value) if isinstance(value, tuple) else value
                      for key, value in values.items()}
            for section, values in config.to_dict().items()}
    path.write_text(yaml.safe_dump(data, sort_keys=False))
