"""The training loop: DDP or FSDP over the shards, with evaluations, metrics and checkpoints.

Construction reads as a sequence: the checkpoint to resume from, the data, the model and its
parallel form, the optimizer, the states a checkpoint holds, then the resume itself. Read
`Trainer.fit` top to bottom for the run and `Trainer.step` for one optimizer step: this rank's
micro-batches (gradients synchronised only on the last), clip, update. A step never waits for
the GPU: the loss, the non-finite guard and the clock are read at logging intervals,
evaluations and checkpoints only. What is logged, and where, is the RunLog's; what is
evaluated, the Evaluator's.
"""

import time
from pathlib import Path

import torch

from .. import config, distributed
from ..checkpoint import pretrained
from ..checkpoint.checkpointer import Checkpointer
from ..checkpoint.resume import check_architecture, resume_payload
from ..checkpoint.states import ModelState, OptimizerState, Progress, RNGState
from ..config import Config
from ..data import shards
from ..data.loader import StepLoader
from ..data.windows import TokenWindows
from ..distributed import print0
from ..errors import UserError
from ..model.gpt import GPTModel
from ..observe.flops import device_peak, flops_per_token
from ..observe.memory import peak_host_mb
from ..observe.throughput import Throughput
from . import optimizer, precision, sharded_init
from .evaluator import Evaluator
from .guard import NonFiniteGuard, check_finite_weights
from .parallelize import parallelize
from .run_log import RunLog
from .schedule import WarmupDecaySchedule
from .stopping import StopRequest


class Trainer:
    def __init__(self, cfg: Config, ctx: distributed.Dist):
        started = time.perf_counter()
        self.cfg, self.ctx = cfg, ctx
        self.log = RunLog(cfg, ctx, Path(cfg.run.out_dir))
        sharded = cfg.train.parallel == "fsdp" if cfg.checkpoint.sharded is None else cfg.checkpoint.sharded
        self.checkpointer = Checkpointer(Path(cfg.run.out_dir) / "checkpoints", cfg.checkpoint.keep, ctx,
                                         background=cfg.checkpoint.async_, sharded=sharded,
                                         interval=cfg.checkpoint.interval)
        resume = resume_payload(cfg.checkpoint.resume, self.checkpointer.folder, cfg.optim.optimizer, ctx)
        init_weights = self._continue_from_source(resume)
        if resume:
            check_architecture(resume["config"]["model"], cfg.model, resume["path"])
        self.startup = {"data_verify_s": self._build_data(resume)}
        self._build_model(init_weights, from_source=bool(cfg.model.init_from) and not resume)
        # AdamW fused, or Muon with it: either skips a non-finite step on the device
        self.optimizer = optimizer.build(self.model, cfg.optim)
        self.guard = NonFiniteGuard(cfg.train.max_bad_steps, ctx.device)
        self.schedule = WarmupDecaySchedule(self.optimizer, cfg.schedule, cfg.optim.lr, self.total_steps)
        torch.manual_seed(cfg.run.seed + ctx.rank)  # each rank its own dropout stream
        self.states = {"model": ModelState(self.model),
                       "optimizer": OptimizerState(self.model, self.optimizer),
                       "scaler": self.scaler, "schedule": self.schedule, "sampler": self.loader.sampler,
                       "progress": self.progress, "rng": RNGState(ctx, cfg.run.seed),
                       "tracking": self.log.tracker}
        if resume:
            self.checkpointer.restore(resume, self.states)
        self.resumed_from = resume["path"] if resume else None
        self.evaluator = Evaluator(cfg, ctx, self.parallel.loss, self.model, self.autocast, self.train_data,
                                   self.val_data)
        peak = device_peak(ctx.device, self.dtype)  # for MFU: a table on GPUs, measured now on a CPU
        self.throughput = Throughput(self.progress.global_batch * cfg.model.context_length,
                                     flops_per_token(self.model), peak, ctx.world_size, self.total_steps)
        self.data_seconds = 0.0  # spent loading batches, over the whole run (for benchmarks)
        self.startup["setup_s"] = round(time.perf_counter() - started, 3)
        # every rank's host memory at its peak so far: the model built (or its shards), a resume's reading
        self.startup["host_peak_mb"] = distributed.all_gather_objects(peak_host_mb())

    def _continue_from_source(self, resume: dict | None) -> dict | None:
        """model.init_from (continued pretraining): the run's architecture becomes the source's. Starting
        afresh, returns the source's weights; at a resume the architecture is the one the checkpoint
        recorded, and the source is not read again."""
        cfg = self.cfg
        if not cfg.model.init_from:
            return None
        if resume:
            recorded = config.build({"model": resume["config"]["model"]}).model
            cfg.model = pretrained.continued(cfg.model, recorded)
            return None
        if cfg.train.parallel == "fsdp":  # rank 0 reads it; the others take their shards from it
            cfg.model, weights = pretrained.init_from_rank0(cfg.model, self.ctx)
            return weights
        cfg.model, weights = pretrained.init_from(cfg.model, self.ctx)
        return weights

    def _build_data(self, resume: dict | None) -> float:
        """The splits' token windows and the loader of this rank's share of every global batch; returns the
        seconds the data's verification took."""
        cfg, ctx = self.cfg, self.ctx
        manifest = shards.read_manifest(cfg.data.dir)
        source = f" (from model.init_from {cfg.model.init_from})" if cfg.model.init_from else ""
        manifest.check_vocabulary(cfg.model.vocab_size, f"model.vocab_size{source}")
        verify_start = time.perf_counter()
        if cfg.data.verify:  # never train on altered data: one read per node, the other ranks wait
            if ctx.local_rank == 0:
                shards.verify(cfg.data.dir)
            distributed.barrier()
        verify_s = round(time.perf_counter() - verify_start, 3)
        stride = cfg.data.stride or cfg.model.context_length
        self.train_data = TokenWindows(manifest, "train", cfg.model.context_length, stride)
        self.val_data = TokenWindows(manifest, "val", cfg.model.context_length, stride)
        micro = cfg.train.micro_batch_size  # the global batch is the run's first one, kept on any world size
        global_batch = (resume["progress"]["global_batch"] if resume
                        else micro * cfg.train.grad_accum_steps * ctx.world_size)
        self.loader = StepLoader(self.train_data, global_batch, micro, ctx, cfg.run.seed)
        self.total_steps = cfg.train.max_steps or cfg.train.epochs * self.loader.sampler.steps_per_epoch
        self.progress = Progress(global_batch=global_batch)
        return verify_s

    def _build_model(self, init_weights: dict | None, from_source: bool) -> None:
        """The model (initialised, or loaded from model.init_from: `from_source`, its weights on every rank,
        or under fsdp on rank 0 alone), in its precision and parallel form."""
        cfg, ctx = self.cfg, self.ctx
        precision.configure_device(cfg.train, ctx.device)
        torch.manual_seed(cfg.run.seed)  # the same initial weights on every rank
        # under fsdp no rank holds the whole model: made on the meta device, given values once sharded
        on_meta = cfg.train.parallel == "fsdp"
        source = f"model.init_from {cfg.model.init_from}"
        if on_meta:
            self.model, init_steps = sharded_init.meta_model(cfg.model)
            if from_source:
                init_weights = pretrained.fitted_on_rank0(self.model, init_weights, source, ctx)
        else:
            self.model = GPTModel(cfg.model)
            if init_weights is not None:
                pretrained.load_weights(self.model, init_weights, source)
            self.model.to(ctx.device)
        if from_source:
            print0(f"initialised from the weights of {cfg.model.init_from}")
        self.dtype = precision.resolve(cfg.train.precision, ctx.device)
        self.autocast = precision.autocast(self.dtype, ctx.device)
        self.scaler = precision.grad_scaler(self.dtype, ctx.device)
        # FP8 layers, activation checkpointing, torch.compile, DDP or FSDP: the optimizer comes after,
        # since fully_shard replaces the parameters with their shards.
        self.parallel = parallelize(self.model, cfg.train, ctx, self.dtype)
        if on_meta and from_source:
            sharded_init.load_from_rank0(self.model, init_weights, ctx.device)
        elif on_meta:
            sharded_init.materialise(self.model, init_steps, ctx.device)

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
            if step % cfg.logging.interval == 0 or final:
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
        self.parallel.lay_out_buckets(self.loader.placeholder_batch(), self.autocast)

    def step(self) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimizer step on this rank's share of the next global batch; returns (mean loss,
        gradient norm), on the device."""
        loading = time.perf_counter()
        batches = self.loader.next()
        self.data_seconds += time.perf_counter() - loading
        self.schedule.apply()
        step_loss = torch.zeros((), device=self.ctx.device)
        for micro_step, batch in enumerate(batches):
            with self.parallel.grad_sync(last_micro_step=micro_step == len(batches) - 1):
                with self.autocast:
                    loss = self.parallel.loss(batch[:, :-1], batch[:, 1:])
                self.scaler.scale(loss / len(batches)).backward()
            step_loss += loss.detach() / len(batches)
        self.scaler.unscale_(self.optimizer)
        grad_norm = self.parallel.clip_grad_norm(self.cfg.train.grad_clip or float("inf"))
        # A non-finite step is never applied, decided on the device: the fused optimizer skips
        # its update when found_inf is set (guard.py). The gradient norm is the same on every
        # rank (that of the reduced gradients), so every rank skips the same steps.
        self.optimizer.found_inf = self.guard.update(grad_norm, step_loss,
                                                     loss_scaling=self.scaler.is_enabled())
        self.optimizer.step()
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.schedule.step()
        self.progress.step += 1
        self.progress.tokens_seen += self.progress.global_batch * self.cfg.model.context_length
        return step_loss, grad_norm

    def _save(self, step: int, durable: bool) -> None:
        """Checkpoint at this step boundary; with `durable`, return only once it is on disk."""
        self.guard.stop_if_diverged(self.progress.step, self.checkpointer.newest)
        check_finite_weights(self.model, step, self.ctx)
        summary = {"step": step, "epoch": self.loader.epoch, "tokens_seen": self.progress.tokens_seen}
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
                          "device": str(self.ctx.device), "precision": precision.name(self.dtype),
                          "parameters": self.model.num_params(),
                          "tokens_per_step": self.throughput.tokens_per_step,
                          "grad_accum_steps": self.loader.grad_accum, "total_steps": self.total_steps,
                          "peak_flops": self.throughput.peak_flops,
                          "peak_source": self.throughput.peak_source,
                          **self.startup}, self.train_data.num_samples, self.val_data.num_samples)

    def _log_step(self, step_loss: torch.Tensor, grad_norm: torch.Tensor) -> None:
        """Read the step's loss and gradient norm (the loop's host sync), log them, stop a diverged run."""
        row = {**self._position(), "loss": distributed.all_reduce_mean(step_loss).item(),
               "lr": self.optimizer.param_groups[0]["lr"], "grad_norm": grad_norm.item(),
               **self.throughput.measure(self.progress.step)}
        self.log.step(row, self.total_steps)
        self.guard.stop_if_diverged(self.progress.step, self.checkpointer.newest)

    def _evaluate(self) -> None:
        elapsed = round(self.throughput.elapsed(), 3)  # when it began: loss against time (benchmarks/)
        row, sample = self.evaluator.evaluate()
        self.log.evaluation({**self._position(), "elapsed_s": elapsed, **row}, sample)

    def _score_hellaswag(self) -> None:
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
