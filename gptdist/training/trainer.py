"""The training loop: DDP or FSDP over the shards, with evaluations, metrics and checkpoints.

A Trainer holds the parts of a run, which `build.build_trainer` puts together. Read `Trainer.fit` top
to bottom for the run and `Trainer.step` for one optimizer step: this rank's micro-batches
(gradients synchronised only on the last), clip, update. A step never waits for the GPU: the
loss, the non-finite guard and the clock are read at logging intervals, evaluations and
checkpoints only. What is logged, and where, is the RunLog's; what is evaluated, the Evaluator's.
"""

import contextlib
from dataclasses import dataclass

import torch

from .. import distributed
from ..checkpoint.checkpointer import Checkpointer, Stateful
from ..checkpoint.states import Progress
from ..config import Config
from ..data.loader import StepLoader
from ..data.sources import Source
from ..distributed import Dist, print0
from ..errors import UserError
from ..observe.memory import peak_host_mb
from ..observe.throughput import Throughput
from . import precision
from .evaluator import Evaluator
from .guard import NonFiniteGuard, check_finite_weights
from .parallelize import TrainingModel
from .phases import Phases
from .precision import Precision
from .run_log import RunLog
from .schedule import WarmupDecaySchedule
from .spikes import SpikeSkip
from .stopping import StopRequest
from .stragglers import Stragglers
from .timeouts import ProcessGroupTimeouts


@dataclass
class Trainer:
    cfg: Config
    ctx: Dist
    log: RunLog  # config.yaml, metrics.jsonl, the console, W&B (rank 0)
    checkpointer: Checkpointer
    data: list[Source]  # the run's sources (one, or a mixture's): their splits' strided windows
    loader: StepLoader  # this rank's micro-batches of every global batch
    total_steps: int
    progress: Progress  # the step, the tokens seen and the global batch
    model: torch.nn.Module  # as trained: FSDP2's shards under fsdp
    precision: Precision
    parallel: TrainingModel  # the model compiled and wrapped: what a step calls
    optimizer: torch.optim.Optimizer
    schedule: WarmupDecaySchedule
    guard: NonFiniteGuard
    spikes: SpikeSkip  # train.spike_zscore: steps far above the recent losses or norms skipped
    states: dict[str, Stateful]  # what a checkpoint holds, by name
    evaluator: Evaluator
    throughput: Throughput
    resumed_from: str | None  # the checkpoint this run continues, if any
    startup: dict  # what its construction took: seconds, host memory
    phases: Phases  # what this rank is doing and since when: the watchdog reads it (watchdog.py)
    timeouts: ProcessGroupTimeouts  # long until the first step, short after it
    stragglers: Stragglers  # each rank's own work, gathered at every log

    def fit(self) -> str:
        """Train to the end (returns "done") or until a stop signal (returns its name)."""
        cfg = self.cfg
        stop = StopRequest(self.ctx)
        self._start_log()
        if cfg.eval.at_start and self.progress.step == 0:  # the initial loss, as the book's curves begin
            self._evaluate()
            self._score_hellaswag()
        first_step = self.progress.step + 1
        self.throughput.start(self.progress.step)
        self.ready_to_step()
        while self.progress.step < self.total_steps:
            step_loss, grad_norm = self.step()
            step = self.progress.step
            final = step == self.total_steps

            if step == first_step:  # the time to the first step (compilation, warm-up): waits for the device
                seconds = self.throughput.first_step_done(self.ctx.device)
                # every rank's host memory at its peak so far: the setup (a resume's reading too) and a step
                peaks = distributed.all_gather_objects(peak_host_mb())
                self.log.first_step(step, seconds, peaks)
                self.checkpointer.reserve(self.states)  # a save's host buffers, before one is due
                self.timeouts.after_first_step()  # every rank is past it: the short timeout from here on
                self.phases.warmed_up()
            if step % cfg.logging.interval == 0 or final:
                self.phases.enter("log", step)
                self._log_step(step_loss, grad_norm)
            self._note_finished_write(stop)
            stopping = stop.agreed()
            # The checkpoint first: an evaluation or a sample that fails must not cost it. The
            # last one, at a stop or the end, is on disk before the run goes on or exits.
            if step % cfg.checkpoint.interval == 0 or final or stopping:
                self._save(step, durable=final or stopping)
            if stopping:
                print0(f"stopped by {stop.signal_name or 'a signal on another rank'} after step {step}; "
                       "run the same command again to resume")
                return stop.signal_name or "signal"
            if step % cfg.eval.interval == 0 or final:
                self._evaluate()
            if cfg.eval.hellaswag_interval and (step % cfg.eval.hellaswag_interval == 0 or final):
                self._score_hellaswag()
        stop.finish()
        return "done"

    def ready_to_step(self) -> None:
        """Before the first step: the model in training mode, and DDP's buckets laid out as every later
        step has them (a resume's first step too; see parallelize.py)."""
        self.model.train()
        self.parallel.lay_out_buckets(self.loader.placeholder_batch(), self.precision.autocast)

    def step(self) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimizer step on this rank's share of the next global batch; returns (mean loss,
        gradient norm), on the device."""
        step = self.progress.step + 1
        self.phases.enter("data", step)
        batches = self.loader.next()
        self.phases.enter("forward/backward", step)
        self.schedule.apply()
        step_loss = torch.zeros((), device=self.ctx.device)
        for loss in self.parallel.micro_steps(batches, self.precision.autocast, self.precision.scaler.scale):
            step_loss += loss.detach() / len(batches)
        self.phases.enter("optimizer", step)
        self.precision.scaler.unscale_(self.optimizer)
        grad_norm = self.parallel.clip_grad_norm(self.cfg.train.grad_clip)
        # A non-finite step is never applied, decided on the device: the fused optimizer skips
        # its update when found_inf is set (guard.py); nor is a spike (spikes.py). The gradient norm
        # is the same on every rank (that of the reduced gradients), so every rank skips the same steps.
        skip = self.guard.update(grad_norm, step_loss, loss_scaling=self.precision.scaler.is_enabled())
        self.optimizer.found_inf = self.spikes.gate(skip, step_loss, grad_norm, step, self.loader.last_rows)
        self.optimizer.step()
        self.precision.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.schedule.step()
        self.progress.step += 1
        self.progress.tokens_seen += self.progress.global_batch * self.cfg.model.context_length
        return step_loss, grad_norm

    def _save(self, step: int, durable: bool) -> None:
        """Checkpoint at this step boundary; with `durable`, return only once it is on disk (a blocking
        save of a large model is long work: under the long timeout)."""
        self.phases.enter("save", step)
        self.guard.stop_if_diverged(self.progress.step, self.checkpointer.newest)
        check_finite_weights(self.model, step, self.ctx)
        summary = {"step": step, "epoch": self.loader.epoch, "tokens_seen": self.progress.tokens_seen}
        blocking = durable or not self.cfg.checkpoint.async_
        with self.timeouts.long_work() if blocking else contextlib.nullcontext():
            self.log.saved(self.checkpointer.save(step, self.states, self.cfg.to_dict(), summary))
            if durable:
                self.log.saved(self.checkpointer.wait())

    def _note_finished_write(self, stop: StopRequest) -> None:
        """A background write that ended since the last step: its row, or its failure, which stops every
        rank."""
        try:
            self.log.saved(self.checkpointer.poll())
        except UserError as err:
            stop.fail(err)

    def _position(self) -> dict:
        return {"step": self.progress.step, "epoch": round(self.loader.epoch, 4),
                "tokens_seen": self.progress.tokens_seen}

    def _start_log(self) -> None:
        self.log.start()
        if self.resumed_from:
            self.log.resumed({"step": self.progress.step, "checkpoint": self.resumed_from,
                              "world_size": self.ctx.world_size, **self.startup})
            return
        self.log.started({"config": self.cfg.to_dict(), "world_size": self.ctx.world_size,
                          "device": str(self.ctx.device), "precision": precision.name(self.precision.dtype),
                          "parameters": self.model.num_params(),
                          "tokens_per_step": self.throughput.tokens_per_step,
                          "grad_accum_steps": self.loader.grad_accum, "total_steps": self.total_steps,
                          "peak_flops": self.throughput.peak_flops,
                          "peak_source": self.throughput.peak_source,
                          **self.startup}, sum(s.train.num_samples for s in self.data),
                         sum(s.val.num_samples for s in self.data))

    def _log_step(self, step_loss: torch.Tensor, grad_norm: torch.Tensor) -> None:
        """Read the step's loss and gradient norm (the loop's host sync), log them, stop a diverged run."""
        row = {**self._position(), "loss": distributed.all_reduce_mean(step_loss).item(),
               "lr": self.optimizer.param_groups[0]["lr"], "grad_norm": grad_norm.item(),
               **self.throughput.measure(self.progress.step),
               **self.stragglers.observe(self.phases.take_interval())}
        if self.spikes.enabled:
            row["spikes_skipped"] = self.spikes.read()
        if self.cfg.data.sources:  # a mixture: the tokens each source has given so far
            row["tokens_by_source"] = self.loader.sampler.tokens_by_source(self.cfg.model.context_length)
        self.log.step(row, self.total_steps)
        self.guard.stop_if_diverged(self.progress.step, self.checkpointer.newest)

    def _evaluate(self) -> None:
        elapsed = round(self.throughput.elapsed(), 3)  # when it began: loss against time (benchmarks/)
        self.phases.enter("evaluation", self.progress.step)
        row, sample = self.evaluator.evaluate()
        self.log.evaluation({**self._position(), "elapsed_s": elapsed, **row}, sample)
        if self.cfg.eval.lm_eval_tasks:
            self.phases.enter("lm-eval", self.progress.step)
            with self.timeouts.long_work():  # long by nature: under the long timeout
                scores = self.evaluator.lm_eval()
            self.log.lm_eval({**self._position(), **scores})

    def _score_hellaswag(self) -> None:
        self.phases.enter("hellaswag", self.progress.step)
        with self.timeouts.long_work():  # long by nature: under the long timeout
            scores = self.evaluator.hellaswag()
        if scores is not None:
            self.log.hellaswag({**self._position(), **scores})

    def close(self) -> None:
        """On any exit: a checkpoint still being written completes first (or says why it could not)."""
        try:
            self.log.saved(self.checkpointer.close())
        except UserError as err:
            print0(f"warning: {err}")
        self.log.close()
