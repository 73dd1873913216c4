"""Which checkpoint a run resumes from (checkpoint.resume), and whether it fits the run's model."""

from pathlib import Path

from ..config import ARCHITECTURE_KEYS, ModelConfig
from ..errors import UserError
from . import store


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


def resume_payload(mode: str, folder: Path, model_cfg: ModelConfig) -> dict | None:
    """The checkpoint to resume from, read and verified, or None to start afresh.

    `mode` is checkpoint.resume: auto (the newest good checkpoint in `folder`), never, or a path.
    """
    if mode == "never":
        if store.checkpoint_paths(folder):
            raise UserError(f"{folder} already holds checkpoints and checkpoint.resume is never; "
                            "use another run.out_dir so that they are not overwritten")
        return None
    payload = store.newest_good(folder) if mode == "auto" else {**store.read(Path(mode)), "path": mode}
    if payload is None:
        if store.checkpoint_paths(folder):
            raise UserError(f"no checkpoint in {folder} can be loaded; move them away to start afresh")
        return None
    check_architecture(payload["config"]["model"], model_cfg, payload["path"])
    return payload
