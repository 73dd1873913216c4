"""Loss spikes skipped, as OLMo-core does: a step whose loss or gradient norm lies more than
train.spike_zscore standard deviations above the mean of the last train.spike_window applied steps
(once train.spike_warmup of them were seen) is not applied.

Decided on the device, like the non-finite guard (guard.py): the verdict joins the fused optimizer's
`found_inf`, which skips the update and leaves the weights and the optimizer's state as they were.
The loss is the mean over ranks (an all-reduce on the device each step, no host sync) and the gradient
norm is the reduced gradients', so every rank skips the same steps. A skipped step's values do not
enter the window. The host reads what happened at the next log: the count goes into the row, and each
skipped step is one line of RUN/spikes.jsonl with its step, loss, gradient norm, z-scores and the
windows every rank trained on, so that the data can be looked at.
"""

import json
from pathlib import Path

import numpy as np
import torch

from .. import distributed
from ..distributed import Dist, print0


class SpikeSkip:
    def __init__(self, zscore: float, window: int, warmup: int, ctx: Dist, run_dir: Path):
        self.zscore, self.window, self.warmup, self.ctx = zscore, window, warmup, ctx
        self.path = Path(run_dir) / "spikes.jsonl"
        device = ctx.device
        self.values = torch.zeros(2, window, dtype=torch.float32, device=device)  # losses, gradient norms
        self.seen = torch.zeros((), dtype=torch.int64, device=device)  # applied steps entered in the window
        self.skipped = torch.zeros((), dtype=torch.int64, device=device)  # in the run, resumes included
        self.pending: list[tuple[int, torch.Tensor, object]] = []  # since the last log: (step, verdict, rows)

    @property
    def enabled(self) -> bool:
        return self.zscore > 0

    def gate(self, found_inf: torch.Tensor, loss: torch.Tensor, grad_norm: torch.Tensor, step: int,
             rows) -> torch.Tensor:
        """The optimizer's `found_inf` for this step (the guard's verdict), with a spike added; `rows` are
        the windows this rank trained on (the sampler's)."""
        if not self.enabled:
            return found_inf
        loss = distributed.all_reduce_mean(loss.detach().float())
        current = torch.stack([loss, grad_norm.detach().float()])
        count = torch.clamp(self.seen, max=self.window)
        valid = (torch.arange(self.window, device=self.values.device) < count).float()
        n = torch.clamp(count, min=1).float()
        mean = (self.values * valid).sum(dim=1) / n
        std = torch.sqrt(((self.values - mean[:, None]) ** 2 * valid).sum(dim=1) / torch.clamp(n - 1, min=1))
        z = (current - mean) / torch.clamp(std, min=1e-12)
        finite = torch.isfinite(current).all()
        spike = (self.seen >= self.warmup) & finite & (z > self.zscore).any()
        enter = finite & ~spike & (found_inf == 0)
        slot = (self.seen % self.window).view(1)
        kept = torch.where(enter, current, self.values.index_select(1, slot).view(2))
        self.values.index_copy_(1, slot, kept.view(2, 1))
        self.seen.add_(enter.long())
        self.skipped.add_(spike.long())
        self.pending.append((step, torch.cat([current, z, spike.float().view(1)]), rows))
        return torch.maximum(found_inf, spike.float())

    def state_dict(self) -> dict:
        """The window goes into checkpoints: a resumed run skips the steps the uninterrupted one would."""
        return {"values": self.values, "seen": self.seen, "skipped": self.skipped}

    def load_state_dict(self, state: dict) -> None:
        if state["values"].shape != self.values.shape:  # another train.spike_window: the window starts anew
            return
        for name in ("values", "seen", "skipped"):
            getattr(self, name).copy_(state[name])

    def read(self) -> int:
        """Every rank, at a log (where the loop syncs anyway): each step skipped since the last log is a line
        of spikes.jsonl (rank 0 writes it); returns the steps skipped so far."""
        if not self.enabled:
            return 0
        pending, self.pending = self.pending, []
        values = torch.stack([verdict for _, verdict, _ in pending]).tolist() if pending else []
        spikes = [(step, row, rows) for (step, _, rows), row in zip(pending, values, strict=True)
                  if row[4] > 0]
        if spikes:  # every rank reaches the same verdicts: all of them take part
            windows = distributed.all_gather_objects([_plain(rows) for _, _, rows in spikes])
            lines = [{"step": step, "loss": round(row[0], 6), "grad_norm": round(row[1], 6),
                      "loss_z": round(row[2], 2), "grad_norm_z": round(row[3], 2),
                      "windows_by_rank": [each[i] for each in windows]}
                     for i, (step, row, _) in enumerate(spikes)]
            if self.ctx.is_main:
                with open(self.path, "a") as f:
                    f.writelines(json.dumps(line) + "\n" for line in lines)
            for line in lines:
                print0(f"warning: step {line['step']} skipped as a spike: loss {line['loss']:.4f} "
                       f"(z {line['loss_z']:.1f}), grad norm {line['grad_norm']:.3f} "
                       f"(z {line['grad_norm_z']:.1f}); its windows are in {self.path}")
        return int(self.skipped.item())


def _plain(rows) -> list:
    """A step's windows as JSON: indices into the train split's windows, or a mixture's (source, windows)."""
    if isinstance(rows, np.ndarray):
        return rows.tolist()
    return [[source, list(map(int, windows))] for source, windows in rows]
