"""Typed run configuration: YAML file + `section.key=value` overrides -> dataclasses.

Every field is documented where it is declared. An unknown key, a value of the wrong
type or a missing file is one UserError naming the key and the valid choices.
"""

import dataclasses
import keyword
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

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


@dataclass
class RunConfig:
    out_dir: str = "out/run"  # checkpoints, metrics.jsonl, config.yaml, loss.png go here
    seed: int = 1337  # seeds weights, dropout and the data order


@dataclass
class DataConfig:
    dir: str = "data/verdict"  # a folder made by `python -m gptdist.prepare`
    stride: int | None = None  # tokens between sample starts; None: context_length (no overlap)
    verify: bool = True  # check every shard's sha256 and token ids at start (one read of the data)


@dataclass
class ModelConfig:
    preset: str | None = None  # gpt2-small|medium|large|xl or a small CPU preset; keys below override it
    vocab_size: int = GPT2_VOCAB_SIZE
    vocab_multiple: int = 64  # embedding/head rows padded to a multiple (50,257 -> 50,304); logits stay vocab_size
    context_length: int = 256
    emb_dim: int = 768
    n_heads: int = 12
    n_layers: int = 12
    drop_rate: float = 0.1
    qkv_bias: bool = False
    bias: bool = True  # biases in the other linear layers and the LayerNorms (GPT-2's); false: none, as nanoGPT's bias=False
    vocab_padding: str = "bias"  # how padded logits are kept out of the softmax: bias (-inf, in the head's matmul) | slice
    tie_embeddings: bool = False  # share tok_emb's matrix with out_head (OpenAI's GPT-2 does)
    init: str = "gpt2"  # gpt2: N(0, 0.02), residual projections scaled; torch: PyTorch's defaults (the book's)
    # Start from pretrained weights (their architecture replaces the keys above; dropout, padding and a shorter
    # context stay this config's): gpt2-124M|355M|774M|1558M (OpenAI's, downloaded), a folder of OpenAI or
    # Hugging Face GPT-2 files, or a gptdist checkpoint or run folder.
    init_from: str | None = None


@dataclass
class TrainConfig:
    micro_batch_size: int = 8  # sequences per process per forward pass
    grad_accum_steps: int = 1  # micro-batches per optimizer step (at the world size it was set for)
    max_steps: int | None = None  # optimizer steps; None: run `epochs` epochs
    epochs: int = 1
    precision: str = "auto"  # auto|fp32|bf16|fp16; auto: bf16 on CUDA that supports it, else fp32
    grad_clip: float | None = 1.0  # max global gradient norm; None or 0: no clipping
    compile: bool = False  # torch.compile the model and its loss as one graph
    compile_mode: str = "default"  # torch.compile mode: default|reduce-overhead|max-autotune|max-autotune-no-cudagraphs
    float8: str | None = None  # FP8 matmuls in the blocks' linear layers (torchao): tensorwise|rowwise; docs/performance.md
    device: str = "auto"  # auto|cpu|cuda
    # Stop after this many steps in a row with a non-finite loss or gradient norm. None of them is applied; the
    # count lives on the device and is read at the next log, eval or checkpoint: at most logging.interval - 1
    # further steps run (and are skipped too) before the stop.
    max_bad_steps: int = 5
    tf32: bool = True  # on CUDA, fp32 matmuls on tensor cores
    reuse_host_memory: bool = True  # on CPU, keep freed large blocks in the heap (see gptdist/host_memory.py)
    ddp_bucket_mb: int = 25  # DDP gradient all-reduce bucket size
    # ddp: every rank holds all weights, gradients and AdamW moments (16 bytes per parameter). fsdp: FSDP2
    # shards them across the ranks (about 16 / world_size bytes per parameter) and gathers each block's
    # weights just before it runs; for models whose state does not fit one GPU. Needs torchrun.
    parallel: str = "ddp"
    fsdp_reshard_after_forward: bool = True  # fsdp: free each block's gathered weights after its forward (gathered again in backward)
    activation_checkpointing: str = "none"  # none|blocks: keep only each block's input, recompute the rest in backward


@dataclass
class OptimConfig:
    lr: float = 4e-4  # the peak learning rate
    weight_decay: float = 0.1  # applied to matrices (linear and embedding weights) only
    betas: tuple[float, float] = (0.9, 0.95)


@dataclass
class ScheduleConfig:
    warmup_steps: int = 0  # linear warmup from initial_lr to optim.lr
    initial_lr: float = 1e-5
    min_lr: float = 1e-5  # the end of the half-cosine decay
    decay: str = "cosine"  # cosine|constant after warmup


@dataclass
class EvalConfig:
    interval: int = 100  # optimizer steps between evaluations (and at the end)
    batches: int = 10  # batches of each split per evaluation
    at_start: bool = True  # evaluate (and sample) before the first update too, so that curves start at the initial loss
    hellaswag_interval: int | None = None  # optimizer steps between HellaSwag scores (and at the end); None: never
    hellaswag_file: str | None = None  # a file in HellaSwag's JSONL format; None: the official validation set (downloaded)
    hellaswag_items: int | None = None  # score only the first N items; None: all (10,042 in the validation set)


@dataclass
class CheckpointConfig:
    interval: int = 500  # optimizer steps between checkpoints (and at the end)
    keep: int = 3  # the newest checkpoints kept
    resume: str = "auto"  # auto: from the newest checkpoint in out_dir; never; or a checkpoint path
    # `checkpoint.async` (a Python keyword, hence the _): write in the background while training goes
    # on; training stops only to copy the state into host memory. false: every save blocks until durable.
    async_: bool = True
    # false: rank 0 writes one file with the full state (gathered to its host memory under fsdp).
    # true: a torch.distributed.checkpoint folder, every rank writing its own shards; for models whose
    # full state should not pass through one host. Both resume on any world size, under ddp or fsdp.
    sharded: bool = False


@dataclass
class LoggingConfig:
    interval: int = 10  # optimizer steps between metrics rows
    wandb: bool = False  # track the run in Weights & Biases (rank 0); mode from WANDB_MODE
    wandb_project: str = "gptdist"
    wandb_entity: str | None = None
    wandb_run_name: str | None = None  # default: the name of run.out_dir
    wandb_tags: list[str] = field(default_factory=list)


@dataclass
class SampleConfig:
    prompt: str = "Every effort moves you"
    max_new_tokens: int = 50
    temperature: float = 1.0  # 0: greedy
    top_k: int | None = 50  # None: no top-k filter


@dataclass
class Config:
    run: RunConfig = field(default_factory=RunConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)

    def to_dict(self) -> dict:
        return {section: {key_of(name): value for name, value in values.items()}
                for section, values in dataclasses.asdict(self).items()}


def key_of(field_name: str) -> str:
    """The config key of a dataclass field: a key that is a Python keyword is a field with a trailing _."""
    return field_name[:-1] if keyword.iskeyword(field_name[:-1]) else field_name


def field_of(key: str) -> str:
    return f"{key}_" if keyword.iskeyword(key) else key


CHOICES = {
    "train.precision": ("auto", "fp32", "bf16", "fp16"),
    "train.device": ("auto", "cpu", "cuda"),
    "schedule.decay": ("cosine", "constant"),
    "model.init": ("gpt2", "torch"),
    "model.vocab_padding": ("bias", "slice"),
    "train.compile_mode": ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"),
    "train.float8": ("tensorwise", "rowwise"),
    "train.parallel": ("ddp", "fsdp"),
    "train.activation_checkpointing": ("none", "blocks"),
}


POSITIVE = ("> 0", lambda v: v > 0)
NON_NEGATIVE = (">= 0", lambda v: v >= 0)
FINITE_POSITIVE = ("finite and > 0", lambda v: math.isfinite(v) and v > 0)
FINITE_NON_NEGATIVE = ("finite and >= 0", lambda v: math.isfinite(v) and v >= 0)
PROBABILITY = ("in [0, 1)", lambda v: 0 <= v < 1)

# The valid range of every numeric key (a None where the key allows one is always valid).
RANGES = {
    "data.stride": POSITIVE,
    **{f"model.{k}": POSITIVE for k in ("vocab_size", "vocab_multiple", "context_length", "emb_dim", "n_heads",
                                        "n_layers")},
    "model.drop_rate": PROBABILITY,
    **{f"train.{k}": POSITIVE for k in ("micro_batch_size", "grad_accum_steps", "max_steps", "epochs",
                                        "max_bad_steps", "ddp_bucket_mb")},
    "train.grad_clip": FINITE_NON_NEGATIVE,
    "optim.lr": FINITE_POSITIVE,
    "optim.weight_decay": FINITE_NON_NEGATIVE,
    "optim.betas": ("two numbers in [0, 1)", lambda v: all(0 <= b < 1 for b in v)),
    "schedule.warmup_steps": NON_NEGATIVE,
    "schedule.initial_lr": FINITE_NON_NEGATIVE,
    "schedule.min_lr": FINITE_NON_NEGATIVE,
    "eval.interval": POSITIVE,
    "eval.batches": POSITIVE,
    "eval.hellaswag_interval": POSITIVE,
    "eval.hellaswag_items": POSITIVE,
    "checkpoint.interval": POSITIVE,
    "checkpoint.keep": ("at least 1", lambda v: v >= 1),
    "logging.interval": POSITIVE,
    "sample.max_new_tokens": POSITIVE,
    "sample.temperature": FINITE_NON_NEGATIVE,
    "sample.top_k": POSITIVE,
    "sample.prompt": ("a non-empty text", lambda v: v != ""),
}


def _check_range(key: str, value) -> None:
    if value is None or key not in RANGES:
        return
    description, valid = RANGES[key]
    if not valid(value):
        raise UserError(f"config key {key}: {value!r} is out of range (must be {description})")


def _convert(key: str, value, hint):
    """`value` as type `hint`, or a UserError naming `key`."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (hint,) = [a for a in args if a is not type(None)]
        return _convert(key, value, hint)
    if origin is list:
        if not isinstance(value, list):
            raise UserError(f"config key {key}: expected a list, got {value!r}")
        return [_convert(key, v, args[0]) for v in value]
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
    if key in CHOICES and value not in CHOICES[key]:
        raise UserError(f"config key {key}: {value!r} is not one of {', '.join(CHOICES[key])}")
    return value


def build(raw: dict) -> Config:
    """A Config from a nested dict, checking every key and type.

    `model.preset` fills the model keys the dict does not set itself.
    """
    if not isinstance(raw, dict):
        raise UserError(f"the config must be a mapping of sections, got {type(raw).__name__}")
    sections = typing.get_type_hints(Config)
    unknown = set(raw) - set(sections)
    if unknown:
        raise UserError(f"unknown config section {sorted(unknown)[0]!r}; valid sections: {', '.join(sections)}")
    built = {}
    for name, cls in sections.items():
        values = raw.get(name) or {}
        if not isinstance(values, dict):
            raise UserError(f"config section {name} must be a mapping of keys, got {values!r}")
        values = dict(values)
        if name == "model" and values.get("preset") is not None:
            preset = values["preset"]
            if preset not in PRESETS:
                raise UserError(f"config key model.preset: unknown preset {preset!r}; "
                                f"known presets: {', '.join(PRESETS)}")
            values = {**PRESETS[preset], **values}
        hints = typing.get_type_hints(cls)
        keys = [key_of(field_name) for field_name in hints]
        for key in values:
            if key not in keys:
                raise UserError(f"unknown config key {name}.{key}; valid keys of {name}: {', '.join(keys)}")
        built[name] = cls(**{field_of(k): _convert(f"{name}.{k}", v, hints[field_of(k)]) for k, v in values.items()})
        for key, value in vars(built[name]).items():
            _check_range(f"{name}.{key}", value)
    return Config(**built)


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
    for override in overrides:
        apply_override(raw, override)
    return build(raw)


def save(config: Config, path: Path) -> None:
    data = config.to_dict()
    data["optim"]["betas"] = list(data["optim"]["betas"])
    path.write_text(yaml.safe_dump(data, sort_keys=False))
