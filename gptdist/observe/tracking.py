"""Weights & Biases tracking, on rank 0 only.

The run id is part of the checkpoint (state_dict), so a resumed or requeued job continues
the same W&B run instead of starting a new one. Its files go where WANDB_DIR says when it is
set, else under run.out_dir. Every metrics row is logged (MFU included), and the samples as a
table of step and text. The mode (online, offline, disabled)
comes from WANDB_MODE, which wandb reads itself; the API key is left entirely to wandb
(WANDB_API_KEY or its netrc) and never passes through gptdist.
"""

import os
import secrets
import string
from pathlib import Path

from ..config import Config
from ..errors import UserError


def require_wandb():
    try:
        import wandb
    except ImportError:
        raise UserError("logging.wandb is true but wandb is not installed: "
                        "pip install 'gptdist[wandb]'") from None
    return wandb


class WandbTracker:
    def __init__(self, cfg: Config, is_main: bool):
        self.enabled = cfg.logging.wandb
        self.active = self.enabled and is_main
        self.cfg = cfg
        self.run_id: str | None = None
        self.run = None
        self.samples: list[list] = []  # (step, text) of this process's samples, for the samples table
        self._wandb = require_wandb() if self.enabled else None  # fail at start, not at step 1000

    def start(self, out_dir: Path) -> None:
        if not self.active:
            return
        logging = self.cfg.logging
        self.run_id = self.run_id or new_run_id()
        try:
            self.run = self._wandb.init(
                project=logging.wandb_project, entity=logging.wandb_entity,
                name=logging.wandb_run_name or Path(self.cfg.run.out_dir).name,
                tags=logging.wandb_tags or None, config=self.cfg.to_dict(), id=self.run_id, resume="allow",
                dir=None if os.environ.get("WANDB_DIR") else str(out_dir),  # wandb's own convention first
            )
        except Exception as err:  # wandb's own errors (not logged in, offline, a bad entity) are many kinds
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise UserError(f"logging.wandb: W&B could not start the run ({first}); log in with wandb login, "
                            "or set WANDB_MODE=offline") from None

    def log(self, row: dict, step: int) -> None:
        if self.run is not None:
            self.run.log({k: v for k, v in row.items() if k not in ("step", "time")}, step=step)

    def log_sample(self, text: str, step: int) -> None:
        """Every sample so far, as one table of (step, text): W&B shows the newest table logged."""
        if self.run is not None:
            self.samples.append([step, text])
            self.run.log({"samples": self._wandb.Table(columns=["step", "text"], data=self.samples)},
                         step=step)

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


