"""The training loop: DDP or FSDP over the shards, evaluation, samples, metrics and checkpoints.

Read `Trainer.fit` top to bottom for one optimizer step: pick this rank's samples,
run the micro-batches (gradients synchronised only on the last), clip, step, log,
evaluate, checkpoint. A step never waits for the GPU: the loss, the non-finite guard
and the clock are read at logging intervals, evaluations and checkpoints only.
Everything stateful is in `self.states` for the checkpointer.
"""

import time
from pathlib import Path

import torch

from . import checkpoint, config, distributed, evaluation, hellaswag, host_memory, metrics, precision, shards
from .config import Config
from .data import DistributedStepSampler, TokenWindows
from .distributed import print0
from .errors import UserError
from .flops import device_peak, flops_per_token
from .guard import NonFiniteGuard
from .loading import continued_config, load_weights, pretrained
from .model import GPTModel
from .optimizer import adamw
from .parallelize import local_tensor, parallelize
from .runlock import unwritable
from .sampling import complete, prompt_ids
from .schedule import WarmupCosineSchedule
from .states import Progress, RNGState
from .stopping import StopRequest
from .throughput import Throughput, duration
from .tracking import WandbTracker
from .train_state import ModelState, OptimizerState

# Keys that change the shapes of the weights: a checkpoint must match them to be resumed.
ARCHITECTURE_KEYS = ("vocab_size", "vocab_multiple", "context_length", "emb_dim", "n_heads", "n_layers", "qkv_bias",
                     "bias")


def check_data_matches_model(manifest: shards.Manifest, model_cfg: config.ModelConfig) -> None:
    if manifest.vocab_size != model_cfg.vocab_size:
        raise UserError(
            f"{manifest.folder} was tokenized for a vocabulary of {manifest.vocab_size} tokens but "
            f"model.vocab_size is {model_cfg.vocab_size}; prepare the data with the model's tokenizer"
        )


def check_architecture(saved: dict, model_cfg: config.ModelConfig, source: str) -> None:
    # A key missing from an older checkpoint's config was not an option then: the default is what it had.
    saved = {**vars(config.ModelConfig()), **saved}
    current = vars(model_cfg)
    different = [f"model.{k}: {saved[k]!r} there, {current[k]!r} here" for k in ARCHITECTURE_KEYS
                 if saved[k] != current[k]]
    if different:
        raise UserError(f"{source} holds a checkpoint of another architecture ({'; '.join(different)}); "
                        "use another run.out_dir or the checkpoint's model settings")


class Trainer:
    def __init__(self, cfg: Config, ctx: distributed.Dist):
        started = time.perf_counter()
        init_cfg, init_weights = pretrained(cfg.model.init_from, ctx) if cfg.model.init_from else (None, None)
        if init_cfg is not None:  # continued pretraining: the architecture is the source's
            cfg.model = continued_config(init_cfg, cfg.model, cfg.model.init_from)
        self.cfg, self.ctx = cfg, ctx
        self.tracker = WandbTracker(cfg, ctx.is_main)  # without wandb installed: an error now, not later
        self.out_dir = Path(cfg.run.out_dir)
        self.checkpointer = checkpoint.Checkpointer(self.out_dir / "checkpoints", cfg.checkpoint.keep, ctx,
                                                    background=cfg.checkpoint.async_, sharded=cfg.checkpoint.sharded)
        resume = self._resume_payload()

        manifest = shards.read_manifest(cfg.data.dir)
        check_data_matches_model(manifest, cfg.model)
        prompt_ids(cfg.sample.prompt, cfg.model.vocab_size, "sample.prompt")  # not a crash at the first sample
        verify_start = time.perf_counter()
        if cfg.data.verify:  # never train on altered data: one read per node, the other ranks wait
            if ctx.local_rank == 0:
                shards.verify(cfg.data.dir)
            distributed.barrier()
        self.startup = {"data_verify_s": round(time.perf_counter() - verify_start, 3)}
        stride = cfg.data.stride or cfg.model.context_length
        self.train_data = TokenWindows(manifest, "train", cfg.model.context_length, stride)
        self.val_data = TokenWindows(manifest, "val", cfg.model.context_length, stride)
        self.hellaswag = (hellaswag.load(cfg.eval.hellaswag_file, cfg.eval.hellaswag_items, ctx)
                          if cfg.eval.hellaswag_interval else None)  # tokenized once; offline: an error now

        # The global batch (sequences per optimizer step) is fixed for the whole run; on
        # another world size after a resume, gradient accumulation adapts to keep it.
        micro = cfg.train.micro_batch_size
        global_batch = resume["progress"]["global_batch"] if resume else micro * cfg.train.grad_accum_steps * ctx.world_size
        if global_batch % (micro * ctx.world_size):
            raise UserError(f"the run's global batch of {global_batch} sequences cannot be split into micro-batches "
                            f"of {micro} on {ctx.world_size} processes; change train.micro_batch_size")
        self.grad_accum = global_batch // (micro * ctx.world_size)
        if global_batch > self.train_data.num_samples:
            raise UserError(f"a global batch of {global_batch} sequences is larger than the train split "
                            f"({self.train_data.num_samples} samples of {cfg.model.context_length + 1} tokens); "
                            "lower train.micro_batch_size or train.grad_accum_steps")
        self.sampler = DistributedStepSampler(self.train_data.num_samples, global_batch, ctx.rank,
                                              ctx.world_size, cfg.run.seed)
        self.total_steps = cfg.train.max_steps or cfg.train.epochs * self.sampler.steps_per_epoch
        self.progress = Progress(global_batch=global_batch)

        if ctx.device.type == "cpu" and cfg.train.reuse_host_memory:
            host_memory.keep_freed_memory()
        if ctx.device.type == "cuda" and cfg.train.tf32:  # fp32 matmuls on tensor cores (10-bit mantissa)
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        torch.manual_seed(cfg.run.seed)  # the same initial weights on every rank
        self.model = GPTModel(cfg.model)
        if init_weights is not None and not resume:
            load_weights(self.model, init_weights, cfg.model.init_from)
            print0(f"initialised from the weights of {cfg.model.init_from}")
        self.model.to(ctx.device)
        self.dtype = precision.resolve(cfg.train.precision, ctx.device)
        self.autocast = precision.autocast(self.dtype, ctx.device)
        self.scaler = precision.grad_scaler(self.dtype, ctx.device)
        # FP8 layers, activation checkpointing, torch.compile, DDP or FSDP: the optimizer comes after,
        # since fully_shard replaces the parameters with their shards.
        self.parallel = parallelize(self.model, cfg.train, ctx, self.dtype)
        self.optimizer = adamw(self.model, cfg.optim)  # fused: it skips non-finite steps on the device
        self.guard = NonFiniteGuard(cfg.train.max_bad_steps, ctx.device)
        self.schedule = WarmupCosineSchedule(self.optimizer, cfg.schedule, cfg.optim.lr, self.total_steps)
        torch.manual_seed(cfg.run.seed + ctx.rank)  # each rank its own dropout stream
        self.states = {"model": ModelState(self.model), "optimizer": OptimizerState(self.model, self.optimizer),
                       "scaler": self.scaler,
                       "schedule": self.schedule, "sampler": self.sampler, "progress": self.progress,
                       "rng": RNGState(ctx, cfg.run.seed), "tracking": self.tracker}
        if resume:
            self.checkpointer.restore(resume, self.states)
        self.resumed_from = resume["path"] if resume else None
        tokens_per_step = self.progress.global_batch * cfg.model.context_length
        peak = device_peak(ctx.device, self.dtype)  # for MFU: a table on GPUs, measured now on a CPU
        self.throughput = Throughput(tokens_per_step, flops_per_token(self.model), peak, ctx.world_size, self.total_steps)
        self.log = None
        self.startup["setup_s"] = round(time.perf_counter() - started, 3)

    def _resume_payload(self) -> dict | None:
        mode, folder = self.cfg.checkpoint.resume, self.checkpointer.folder
        if mode == "never":
            if checkpoint.checkpoint_paths(folder):
                raise UserError(f"{folder} already holds checkpoints and checkpoint.resume is never; "
                                "use another run.out_dir so that they are not overwritten")
            return None
        payload = checkpoint.newest_good(folder) if mode == "auto" else {**checkpoint.read(Path(mode)), "path": mode}
        if payload is None:
            if checkpoint.checkpoint_paths(folder):
                raise UserError(f"no checkpoint in {folder} can be loaded; move them away to start afresh")
            return None
        check_architecture(payload["config"]["model"], self.cfg.model, payload["path"])
        return payload

    # --- the run -------------------------------------------------------------------

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
        self.model.train()
        while self.progress.step < self.total_steps:
            step_loss, grad_norm = self.train_step(self.next_batches())
            step = self.progress.step
            final = step == self.total_steps

            if step == first_step:
                self._log_first_step()
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

    def next_batches(self) -> list[torch.Tensor]:
        """This rank's micro-batches for the next optimizer step: all the data loading of a step."""
        if self.sampler.epoch_done():
            self.sampler.set_epoch(self.sampler.epoch + 1)
        indices = self.sampler.next_step()
        micro = self.cfg.train.micro_batch_size
        batches = [self.train_data.batch(indices[i * micro : (i + 1) * micro]) for i in range(self.grad_accum)]
        if self.ctx.device.type == "cuda":  # pinned pages copy asynchronously, overlapping compute
            return [b.pin_memory().to(self.ctx.device, non_blocking=True) for b in batches]
        return batches

    def train_step(self, batches: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimizer step over the micro-batches; returns (mean loss, gradient norm) on the device."""
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
        self.optimizer.found_inf = self.guard.update(grad_norm, step_loss, loss_scaling=self.scaler.is_enabled())
        self.optimizer.step()
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.schedule.step()
        self.progress.step += 1
        self.progress.tokens_seen += self.progress.global_batch * self.cfg.model.context_length
        return step_loss, grad_norm

    def _check_divergence(self) -> None:
        """Stop a run whose last train.max_bad_steps steps in a row were not finite (reads the guard: a sync)."""
        if not self.guard.diverged(self.progress.step):
            return
        newest = checkpoint.checkpoint_paths(self.checkpointer.folder)
        raise UserError(
            f"training diverged: {self.guard.limit} steps in a row with a non-finite loss or gradient norm "
            f"(seen at step {self.progress.step}; none of them was applied); lower optim.lr or raise "
            "schedule.warmup_steps, then resume" + (f" from {newest[-1]}" if newest else "")
        )

    def _save(self, step: int, durable: bool) -> None:
        """Checkpoint at this step boundary; with `durable`, return only once it is on disk."""
        self._check_divergence()
        # Each rank checks what it holds (its shards under fsdp), all in one sync, and every rank learns the verdict.
        finite = torch.stack([torch.isfinite(local_tensor(p)).all() for p in self.model.parameters()]).all()
        if distributed.any_rank(not bool(finite), self.ctx):
            raise UserError(f"the weights are not finite at step {step}: no checkpoint written")
        summary = {"step": step, "epoch": self.epoch, "tokens_seen": self.progress.tokens_seen}
        self._log_saved(self.checkpointer.save(step, self.states, self.cfg.to_dict(), summary))
        if durable:
            self._log_saved(self.checkpointer.wait())

    def _note_finished_write(self, stop: StopRequest) -> None:
        """A background write that ended since the last step: its row, or its failure, which stops every rank."""
        try:
            self._log_saved(self.checkpointer.poll())
        except UserError as err:
            stop.fail(err)

    def _log_saved(self, saved: checkpoint.Saved | None) -> None:
        if saved is None:
            return
        if self.log is not None:
            self.log.write({"event": "checkpoint", "step": saved.step, "path": str(saved.path), "bytes": saved.bytes,
                            "stall_s": saved.stall_s, "write_s": saved.write_s})
        print0(f"saved {saved.path} ({saved.bytes / 2**20:,.0f} MiB; training stopped {saved.stall_s:.2f} s, "
               f"written in {saved.write_s:.2f} s)")

    @property
    def epoch(self) -> float:
        return self.sampler.epoch + self.sampler.position / self.sampler.num_samples

    def _start_log(self) -> None:
        if not self.ctx.is_main:
            return
        try:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            config.save(self.cfg, self.out_dir / "config.yaml")
            self.log = metrics.MetricsLog(self.out_dir)
        except OSError as err:
            raise unwritable(self.out_dir, err, f" ({err.filename})") from None
        self.tracker.start(self.out_dir)
        if self.resumed_from:
            self.log.write({"event": "resume", "step": self.progress.step, "checkpoint": self.resumed_from,
                            "world_size": self.ctx.world_size, **self.startup})
            print0(f"resumed from {self.resumed_from} at step {self.progress.step}")
            return
        params, tokens_per_step = self.model.num_params(), self.throughput.tokens_per_step
        self.log.write({"event": "start", "config": self.cfg.to_dict(), "world_size": self.ctx.world_size,
                        "device": str(self.ctx.device), "precision": str(self.dtype).removeprefix("torch."),
                        "parameters": params, "tokens_per_step": tokens_per_step, "grad_accum_steps": self.grad_accum,
                        "total_steps": self.total_steps, "peak_flops": self.throughput.peak_flops,
                        "peak_source": self.throughput.peak_source, **self.startup})
        print0(f"training {params / 1e6:.1f}M parameters on {self.ctx.world_size} x {self.ctx.device} "
               f"({str(self.dtype).removeprefix('torch.')}), {tokens_per_step:,} tokens/step, "
               f"{self.total_steps} steps, train {self.train_data.num_samples} / val {self.val_data.num_samples} samples")

    def _log_first_step(self) -> None:
        """The time to the first step (compilation, warm-up): waits for the device, once per run."""
        seconds = self.throughput.first_step_done(self.ctx.device)
        if self.log is not None:
            self.log.write({"event": "first_step", "step": self.progress.step, "seconds": round(seconds, 3),
                            "compile": self.cfg.train.compile})
        print0(f"first step done in {seconds:.1f} s" + (" (compiling the model and its loss)" if self.cfg.train.compile else ""))

    def _log_step(self, step_loss: torch.Tensor, grad_norm: torch.Tensor) -> None:
        """Read the step's loss and gradient norm (the loop's host sync), log them, stop a diverged run."""
        loss = distributed.all_reduce_mean(step_loss).item()
        row = {"step": self.progress.step, "epoch": round(self.epoch, 4), "loss": loss,
               "lr": self.optimizer.param_groups[0]["lr"], "grad_norm": grad_norm.item(),
               "tokens_seen": self.progress.tokens_seen, **self.throughput.measure(self.progress.step)}
        if self.log is not None:
            self._record(row)
            print0(f"step {row['step']:>6}/{self.total_steps} | epoch {row['epoch']:.2f} | loss {loss:.4f} | "
                   f"lr {row['lr']:.2e} | grad norm {row['grad_norm']:.3f} | {row['tokens_per_sec']:,.0f} tokens/s | "
                   f"mfu {100 * row['mfu']:.1f}% | eta {duration(row['eta_s'])}")
        self._check_divergence()

    def evaluate(self) -> tuple[float, float]:
        """Train and val loss on eval.batches batches of each split, through the compiled training loss."""
        batches, micro = self.cfg.eval.batches, self.cfg.train.micro_batch_size
        return tuple(evaluation.evaluate_loss(self.parallel.loss, windows, batches, micro, self.ctx, self.autocast)
                     for windows in (self.train_data, self.val_data))

    def _evaluate(self) -> None:
        start = time.perf_counter()
        train_loss, val_loss = self.evaluate()
        eval_s = round(time.perf_counter() - start, 3)
        sample = self.cfg.sample
        with self.autocast:  # on every rank: under fsdp each forward gathers the weights from all of them
            text = complete(self.model, sample.prompt, sample.max_new_tokens, sample.temperature, sample.top_k,
                            self.cfg.run.seed, self.ctx.device)
        if self.log is None:
            return
        row = {"step": self.progress.step, "epoch": round(self.epoch, 4), "tokens_seen": self.progress.tokens_seen,
               "train_loss": train_loss, "val_loss": val_loss, "val_ppl": evaluation.perplexity(val_loss),
               "eval_s": eval_s}
        self._record(row)
        print0(f"eval step {row['step']}: train loss {train_loss:.4f} | val loss {val_loss:.4f} | "
               f"val perplexity {row['val_ppl']:.2f} | {row['eval_s']:.1f} s")
        if metrics.plot_losses(self.log.path, self.out_dir / "loss.png"):
            self.tracker.log_plot(self.out_dir / "loss.png", self.progress.step)
        print0(f"sample: {text!r}")
        self.tracker.log_sample(text, self.progress.step)

    def _score_hellaswag(self) -> None:
        """HellaSwag accuracy of the model now (every rank scores its share), when eval.hellaswag_interval asks."""
        if self.hellaswag is None:
            return
        start = time.perf_counter()
        scores = hellaswag.score(self.model, self.hellaswag, self.ctx, self.autocast, self.cfg.train.micro_batch_size)
        if self.log is None:
            return
        row = {"step": self.progress.step, "epoch": round(self.epoch, 4), "tokens_seen": self.progress.tokens_seen,
               "hellaswag_acc": scores["acc"], "hellaswag_acc_norm": scores["acc_norm"],
               "hellaswag_items": scores["items"], "hellaswag_s": round(time.perf_counter() - start, 3)}
        self._record(row)
        print0(f"hellaswag step {row['step']}: acc {scores['acc']:.4f} | acc_norm {scores['acc_norm']:.4f} "
               f"({scores['items']} items, {row['hellaswag_s']:.1f} s)")

    def _record(self, row: dict) -> None:
        """One row to metrics.jsonl and, when tracking, to W&B."""
        self.log.write(row)
        self.tracker.log(row, row["step"])

    def close(self) -> None:
        """On any exit: a checkpoint still being written completes first (or says why it could not)."""
        try:
            self._log_saved(self.checkpointer.close())
        except UserError as err:
            print0(f"warning: {err}")
        self.tracker.finish()
        if self.log is not None:
            self.log.close()
