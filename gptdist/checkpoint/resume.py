"""Which checkpoint a run resumes from (checkpoint.resume), and whether it fits the run's model."""

from pathlib import Path

from .. import distributed
from ..config import ARCHITECTURE_KEYS, ModelConfig
from ..errors import UserError
from . import sharded, store


def check_architecture(saved: dict, model_cfg: ModelConfig, source: str) -> None:
    """Refuse a checkpoint whose model config (`saved`) differs from the run's in a key that shapes the
    weights (config.ARCHITECTURE_KEYS)."""
    # A key missing from an older checkpoint's config was not an option then: the default is what it had.
    saved = {**vars(ModelConfig()), **saved}
    current = vars(model_cfg)
    different = [f"model.{k}: {saved[k]!r} there, {current[k]!r} here" for k in ARCHITECTURE_KEYS
                 if saved[k] != current[k]]
    if different:
        raise UserError(f"{source} holds a checkpoint of another architecture ({'; '.join(different)}); "
                        "use another run.out_dir or the checkpoint's model settings")


def check_nothing_after(payload: dict, folder: Path) -> None:
    """Refuse to resume from an explicit checkpoint when the run's folder holds later ones: training on
    would write over them (at their steps) and prune them."""
    step = payload["progress"]["step"]
    later = [path for path in store.checkpoint_paths(folder) if store.step_of(path) > step]
    if later:
        raise UserError(f"checkpoint.resume {payload['path']} is at step {step}, but {folder} holds the "
                        f"later {later[-1].name}: training on would write over it; resume into another "
                        "run.out_dir or move the later checkpoints away")


def check_optimizer(payload: dict, optimizer: str) -> None:
    """Refuse a checkpoint whose optimizer state is another optimizer's (optim.optimizer)."""
    saved = payload["config"].get("optim", {}).get("optimizer", "adamw")  # before Muon: AdamW's
    if saved != optimizer:
        raise UserError(f"{payload['path']} holds the state of optim.optimizer {saved}, this run trains with "
                        f"{optimizer}; resume with optim.optimizer={saved}, or train {optimizer} in another "
                        "run.out_dir")


def _read_newest(mode: str, folder: Path, optimizer: str) -> dict | None:
    """Rank 0: the checkpoint checkpoint.resume names, read and verified, or None to start afresh."""
    if mode == "never":
        if store.checkpoint_paths(folder):
            raise UserError(f"{folder} already holds checkpoints and checkpoint.resume is never; "
                            "use another run.out_dir so that they are not overwritten")
        return None
    payload = store.newest_good(folder) if mode == "auto" else {**store.read(Path(mode)), "path": mode}
    if mode != "auto":
        check_nothing_after(payload, folder)
    if payload is None:
        if store.checkpoint_paths(folder):
            raise UserError(f"no checkpoint in {folder} can be loaded; move them away to start afresh")
        return None
    check_optimizer(payload, optimizer)
    return payload


def resume_payload(mode: str, folder: Path, optimizer: str, ctx: distributed.Dist) -> dict | None:
    """The checkpoint to resume from, or None to start afresh; the same decision on every rank.

    `mode` is checkpoint.resume: auto (the newest good checkpoint in `folder`), never, or a path;
    `optimizer` is optim.optimizer, which the checkpoint's must be. Rank 0 alone opens, reads and
    verifies the checkpoint: a file is read once, not once per rank, and the other ranks need no
    access to it. They receive its small states here; a file's model and optimizer reach them
    as they load (`Checkpointer.restore`), a sharded folder's shards they read themselves.
    """
    payload = distributed.on_rank0(lambda: _read_newest(mode, folder, optimizer), ctx)
    small = None if payload is None else {k: v for k, v in payload.items() if k not in sharded.SHARDED_STATES}
    small = distributed.broadcast_object(small)
    return payload if ctx.is_main else small
