"""What a run checks before it takes its run.out_dir or does any work: every input it names exists, the
data fits the model, the parallel form can run here, the optional packages it asks for are installed.

Each failure is one line naming the key, and nothing has been written. (config.py has already
checked every key on its own and the model's shape; what needs the data or the processes is here.)
"""

from pathlib import Path

from .. import config
from ..checkpoint import pretrained, store
from ..config import Config
from ..data import shards
from ..data.loader import StepLoader
from ..data.windows import TokenWindows
from ..distributed import Dist
from ..errors import UserError
from ..observe.tracking import require_wandb
from . import float8, precision
from .parallelize import check_supported


def check_before_work(cfg: Config, ctx: Dist) -> None:
    for key, path in config.path_keys(cfg, config.INPUT):
        if not Path(path).exists() and not (key == "model.init_from" and pretrained.is_gpt2(path)):
            raise UserError(f"{key} {path} does not exist")
    check_supported(cfg.train, ctx, precision.resolve(cfg.train.precision, ctx.device))
    if cfg.train.float8:
        float8.require_torchao()
    if cfg.logging.wandb:
        require_wandb()
    _check_data(cfg, ctx)


def _check_data(cfg: Config, ctx: Dist) -> None:
    """The data folder is a prepared one of the model's vocabulary (model.init_from's, when given, is read
    later), each split has a window, and a fresh run's first global batch fits the train split."""
    manifest = shards.read_manifest(cfg.data.dir)
    if not cfg.model.init_from:
        manifest.check_vocabulary(cfg.model.vocab_size)
    train, _ = (TokenWindows(manifest, split, cfg.model.context_length, cfg.data.stride)
                for split in shards.SPLITS)
    saved = store.checkpoint_paths(Path(cfg.run.out_dir) / "checkpoints")
    fresh = cfg.checkpoint.resume == "never" or (cfg.checkpoint.resume == "auto" and not saved)
    if fresh:  # a resumed run's global batch is its checkpoint's, checked as it is read
        StepLoader(train, cfg.train.micro_batch_size * cfg.train.grad_accum_steps * ctx.world_size,
                   cfg.train.micro_batch_size, ctx, cfg.run.seed)
