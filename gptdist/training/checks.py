"""What a run checks before it takes its run.out_dir or does any work: every input it names exists, the
data fits the model, the parallel form can run here, the optional packages it asks for are installed,
the lm-eval tasks it names exist.

Each failure is one line naming the key, and nothing has been written. (config.py has already
checked every key on its own and the model's shape; what needs the data or the processes is here.)
A run that resumes checks less here: its checkpoint brings the architecture and the global batch,
which the resume itself checks, and model.init_from is not read again.
"""

from pathlib import Path

from .. import config, distributed
from ..checkpoint import pretrained, store
from ..config import Config
from ..data import sources
from ..data.loader import StepLoader
from ..distributed import Dist
from ..errors import UserError
from ..evaluation import harness
from ..observe.tracking import require_wandb
from . import float8, precision
from .parallelize import check_supported


def check_before_work(cfg: Config, ctx: Dist) -> None:
    """On rank 0 (every rank stops if it fails): the checks above, in one line."""
    distributed.on_rank0(lambda: _check(cfg, ctx), ctx)


def check_elsewhere(cfg: Config, ctx: Dist) -> list[str]:
    """The checks above for a run planned on this machine to run on another (gptdist.plan): `ctx` is the
    planned world size's rank 0. The inputs that are not here (the cluster holds them) are returned as
    "key path" rather than refused, the data checks made only when every data folder is here; the optional
    packages are the other machine's to have."""
    return _check(cfg, ctx, elsewhere=True)


def _check(cfg: Config, ctx: Dist, elsewhere: bool = False) -> list[str]:
    fresh = starts_afresh(cfg)
    absent = []
    for key, path in config.path_keys(cfg, config.INPUT):
        # data folders: their manifests say more below; model.init_from: read only by a run that starts afresh
        data = key.startswith("data.")
        needed = not data and (key != "model.init_from" or fresh)
        missing = not Path(path).exists() and not (key == "model.init_from" and pretrained.is_gpt2(path))
        if missing and (data or needed and elsewhere):
            absent.append(f"{key} {path}")
        elif missing and needed:
            raise UserError(f"{key} {path} does not exist")
    check_supported(cfg.train, ctx, precision.resolve(cfg.train.precision, ctx.device))
    if not elsewhere:
        if cfg.train.float8:
            float8.require_torchao()
        if cfg.logging.wandb:
            require_wandb()
        if cfg.eval.lm_eval_tasks:  # lm-eval installed, and every task one it knows
            harness.task_manager(tuple(cfg.eval.lm_eval_tasks), cfg.eval.lm_eval_include_path)
    if not (elsewhere and any(key.startswith("data.") for key in absent)):
        _check_data(cfg, ctx, fresh)  # (here, a missing data folder is refused by its manifest's reading)
    return absent


def starts_afresh(cfg: Config) -> bool:
    """Whether the run starts afresh rather than resuming (checkpoint.resume never, or auto with no
    checkpoint in run.out_dir)."""
    mode, saved = cfg.checkpoint.resume, store.checkpoint_paths(Path(cfg.run.out_dir) / "checkpoints")
    return mode == "never" or (mode == "auto" and not saved)


def _check_data(cfg: Config, ctx: Dist, fresh: bool) -> None:
    """Each data folder is a prepared one, each split has a window, the sources agree, and a fresh run's
    vocabulary is the data's (model.init_from's is read later) and its first global batch fits."""
    data = sources.open_sources(cfg)
    if not fresh:
        return
    if not cfg.model.init_from:
        sources.check_vocabulary(data, cfg.model.vocab_size)
    global_batch = cfg.train.micro_batch_size * cfg.train.grad_accum_steps * ctx.world_size
    sampler, reader = sources.training_order(cfg, data, global_batch, ctx.rank, ctx.world_size, report=False)
    StepLoader(sampler, reader, data[0].train.window, cfg.train.micro_batch_size, ctx)
