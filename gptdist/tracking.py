"""Weights & Biases tracking, on rank 0 only.

The run id is part of the checkpoint (state_dict), so a resumed or requeued job continues
the same W&B run instead of starting a new one. The mode (online, offline, disabled)
comes from WANDB_MODE, which wandb reads itself; the API key is left entirely to wandb
(WANDB_API_KEY or its netrc) and never passes through gptdist.
"""

import secrets
import string
from pathlib import Path

from .config import Config
from .errors import UserError


def require_wandb():
    try:
        import wandb
    except ImportError:
        raise UserError("logging.wandb is true but wandb is not installed: pip install 'gptdist[wandb]'") from None
    return wandb


class WandbTracker:
    def __init__(self, cfg: Config, is_main: bool):
        self.enabled = cfg.logging.wandb
        self.active = self.enabled and is_main
        self.cfg = cfg
        self.run_id: str | None = None
        self.run = None
        self._wandb = require_wandb() if self.enabled else None  # fail at start, not at step 1000

    def start(self, out_dir: Path) -> None:
        if not self.active:
            return
        logging = self.cfg.logging
        self.run_id = self.run_id or new_run_id()
        self.run = self._wandb.init(
            project=logging.wandb_project, entity=logging.wandb_entity,
            name=logging.wandb_run_name or Path(self.cfg.run.out_dir).name, tags=logging.wandb_tags or None,
            config=self.cfg.to_dict(), id=self.run_id, resume="allow", dir=str(out_dir),
        )

    def log(self, row: dict, step: int) -> None:
        if self.run is not None:
            self.run.log({k: v for k, v in row.items() if k not in ("step", "time")}, step=step)

    def log_sample(self, text: str, step: int) -> None:
        if self.run is not None:
            self.run.log({"sample": self._wandb.Html(f"<pre>{_escape(text)}</pre>")}, step=step)

    def log_plot(self, path: Path, step: int) -> None:
        if self.run is not None and path.exists():
            self.run.log({"loss_plot": self._wandb.Image(str(path))}, step=step)

    def finish(self) -> None:
        if self.run is not None:
            self.run.finish()
            self.run = None

    def state_dict(self) -> dict:
        return {"run_id": self.run_id}

    def load_state_dict(self, state: dict) -> None:
        self.run_id = state.get("run_id") or self.run_id


def new_run_id() -> str:
    """A W&B-style run id: 8 lowercase letters and digits."""
    return "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
