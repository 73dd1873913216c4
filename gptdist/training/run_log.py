"""A run's record, kept by rank 0: config.yaml, metrics.jsonl, the console lines, W&B and the loss plot.

The Trainer hands it rows; it decides where they go. On the other ranks every method does
nothing: the tracker is still built there, since a checkpoint holds its run id.
"""

from .. import config
from ..checkpoint.checkpointer import Saved
from ..distributed import Dist, print0
from ..observe import metrics
from ..observe.throughput import duration
from ..observe.tracking import WandbTracker
from .runlock import unwritable


class RunLog:
    def __init__(self, cfg: config.Config, ctx: Dist, out_dir):
        self.cfg, self.ctx, self.out_dir = cfg, ctx, out_dir
        self.tracker = WandbTracker(cfg, ctx.is_main)  # without wandb installed: an error now, not later
        self.metrics: metrics.MetricsLog | None = None  # opened by `start`, on rank 0

    def start(self) -> None:
        """Write config.yaml, open metrics.jsonl and start tracking (rank 0)."""
        if not self.ctx.is_main:
            return
        self.tracker.start(self.out_dir)  # first: if W&B cannot start, the run has written nothing yet
        try:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            config.save(self.cfg, self.out_dir / "config.yaml")
            self.metrics = metrics.MetricsLog(self.out_dir)
        except OSError as err:
            raise unwritable(self.out_dir, err, f" ({err.filename})") from None

    def started(self, row: dict, train_samples: int, val_samples: int) -> None:
        """The start of a fresh run: what trains, on what, for how long."""
        if self.metrics is None:
            return
        self.metrics.write({"event": "start", **row})
        print0(f"training {row['parameters'] / 1e6:.1f}M parameters on {row['world_size']} x {row['device']} "
               f"({row['precision']}), {row['tokens_per_step']:,} tokens/step, {row['total_steps']} steps, "
               f"train {train_samples} / val {val_samples} samples")

    def resumed(self, row: dict) -> None:
        if self.metrics is None:
            return
        self.metrics.write({"event": "resume", **row})
        print0(f"resumed from {row['checkpoint']} at step {row['step']}")

    def first_step(self, step: int, seconds: float, host_peak_mb: list[float]) -> None:
        """The time to the first step (compilation and warm-up) and each rank's host memory peak by then."""
        compiled = self.cfg.train.compile
        if self.metrics is not None:
            self.metrics.write({"event": "first_step", "step": step, "seconds": round(seconds, 3),
                                "compile": compiled, "host_peak_mb": host_peak_mb})
        print0(f"first step done in {seconds:.1f} s"
               + (" (compiling the model and its loss)" if compiled else ""))

    def step(self, row: dict, total_steps: int) -> None:
        if self.metrics is None:
            return
        self._record(row)
        print0(f"step {row['step']:>6}/{total_steps} | epoch {row['epoch']:.2f} | loss {row['loss']:.4f} | "
               f"lr {row['lr']:.2e} | grad norm {row['grad_norm']:.3f} | {row['tokens_per_sec']:,.0f} "
               f"tokens/s | mfu {100 * row['mfu']:.1f}% | eta {duration(row['eta_s'])}")

    def evaluation(self, row: dict, sample: str) -> None:
        """An evaluation's losses and sample; the loss plot redrawn."""
        if self.metrics is None:
            return
        self._record(row)
        print0(f"eval step {row['step']}: train loss {row['train_loss']:.4f} | val loss "
               f"{row['val_loss']:.4f} | val perplexity {row['val_ppl']:.2f} | {row['eval_s']:.1f} s")
        if metrics.plot_losses(self.metrics.path, self.out_dir / "loss.png"):
            self.tracker.log_plot(self.out_dir / "loss.png", row["step"])
        print0(f"sample: {sample!r}")
        self.tracker.log_sample(sample, row["step"])

    def hellaswag(self, row: dict) -> None:
        if self.metrics is None:
            return
        self._record(row)
        print0(f"hellaswag step {row['step']}: acc {row['hellaswag_acc']:.4f} | "
               f"acc_norm {row['hellaswag_acc_norm']:.4f} ({row['hellaswag_items']} items, "
               f"{row['hellaswag_s']:.1f} s)")

    def lm_eval(self, row: dict) -> None:
        if self.metrics is None:
            return
        self._record(row)
        shown = " | ".join(f"{key.removeprefix('lm_eval/')} {value:.4f}" for key, value in row.items()
                           if key.startswith("lm_eval/") and not key.endswith("_stderr"))
        print0(f"lm-eval step {row['step']}: {shown} ({row['lm_eval_s']:.1f} s)")

    def saved(self, saved: Saved | None) -> None:
        """A checkpoint that is on disk now, and what it cost."""
        if saved is None:
            return
        if self.metrics is not None:
            self.metrics.write({"event": "checkpoint", "step": saved.step, "path": str(saved.path),
                                "bytes": saved.bytes, "stall_s": saved.stall_s,
                                "snapshot_s": saved.snapshot_s, "waited_s": saved.waited_s,
                                "write_s": saved.write_s})
        print0(f"saved {saved.path} ({saved.bytes / 2**20:,.0f} MiB; training stopped {saved.stall_s:.2f} s, "
               f"written in {saved.write_s:.2f} s)")

    def _record(self, row: dict) -> None:
        """One row to metrics.jsonl and, when tracking, to W&B."""
        self.metrics.write(row)
        self.tracker.log(row, row["step"])

    def close(self) -> None:
        self.tracker.finish()
        if self.metrics is not None:
            self.metrics.close()
