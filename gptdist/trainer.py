"""The training loop: DDP over the shards, evaluation, samples, metrics and checkpoints.

Read `Trainer.fit` top to bottom for one optimizer step: pick this rank's samples,
run the micro-batches (gradients synchronised only on the last), clip, step, log,
evaluate, checkpoint. Everything stateful is in `self.states` for the checkpointer.
"""

import contextlib
import signal
import time
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel

from . import checkpoint, config, distributed, evaluation, gpt2, host_memory, metrics, precision, shards
from .config import Config
from .data import DistributedStepSampler, TokenWindows
from .distributed import print0
from .errors import UserError
from .model import GPTModel, decay_groups
from .sampling import complete
from .schedule import WarmupCosineSchedule
from .states import Progress, RNGState
from .tracking import WandbTracker

# Keys that change the shapes of the weights: a checkpoint must match them to be resumed.
ARCHITECTURE_KEYS = ("vocab_size", "vocab_multiple", "context_length", "emb_dim", "n_heads", "n_layers", "qkv_bias")


class StopRequest:
    """SIGTERM or SIGUSR1 (preemption) sets a flag; the loop saves at the next step boundary and exits."""

    def __init__(self):
        self.signal_name: str | None = None
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        self.signal_name = signal.Signals(signum).name


def check_data_matches_model(manifest: shards.Manifest, model_cfg: config.ModelConfig) -> None:
    if manifest.vocab_size != model_cfg.vocab_size:
        raise UserError(
            f"{manifest.folder} was tokenized for a vocabulary of {manifest.vocab_size} tokens but "
            f"model.vocab_size is {model_cfg.vocab_size}; prepare the data with the model's tokenizer"
        )


def check_architecture(saved: dict, model_cfg: config.ModelConfig, source: str) -> None:
    current = vars(model_cfg)
    different = [f"model.{k}: {saved.get(k)!r} there, {current[k]!r} here" for k in ARCHITECTURE_KEYS
                 if saved.get(k) != current[k]]
    if different:
        raise UserError(f"{source} holds a checkpoint of another architecture ({'; '.join(different)}); "
                        "use another run.out_dir or the checkpoint's model settings")


def gpt2_folder(name: str, ctx: distributed.Dist) -> Path:
    """OpenAI weights for model.init_from: one download per node, the other ranks find them cached."""
    if ctx.local_rank == 0:
        gpt2.resolve(name)
    distributed.barrier()
    return gpt2.resolve(name)


class Trainer:
    def __init__(self, cfg: Config, ctx: distributed.Dist):
        init_folder = gpt2_folder(cfg.model.init_from, ctx) if cfg.model.init_from else None
        if init_folder:  # continued pretraining: the architecture is the checkpoint's
            cfg.model = gpt2.model_config(init_folder, cfg.model)
        self.cfg, self.ctx = cfg, ctx
        self.tracker = WandbTracker(cfg, ctx.is_main)  # without wandb installed: an error now, not later
        self.out_dir = Path(cfg.run.out_dir)
        self.checkpointer = checkpoint.Checkpointer(self.out_dir / "checkpoints", cfg.checkpoint.keep, ctx)
        resume = self._resume_payload()

        manifest = shards.read_manifest(cfg.data.dir)
        check_data_matches_model(manifest, cfg.model)
        if cfg.data.verify:  # never train on altered data: one read per node, the other ranks wait
            if ctx.local_rank == 0:
                shards.verify(cfg.data.dir)
            distributed.barrier()
        stride = cfg.data.stride or cfg.model.context_length
        self.train_data = TokenWindows(manifest, "train", cfg.model.context_length, stride)
        self.val_data = TokenWindows(manifest, "val", cfg.model.context_length, stride)

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
        if init_folder and not resume:
            gpt2.load_into(self.model, init_folder)
            print0(f"initialised from OpenAI GPT-2 weights in {init_folder}")
        self.model.to(ctx.device)
        self.dtype = precision.resolve(cfg.train.precision, ctx.device)
        self.autocast = precision.autocast(self.dtype, ctx.device)
        self.scaler = precision.grad_scaler(self.dtype, ctx.device)
        self.optimizer = torch.optim.AdamW(decay_groups(self.model, cfg.optim.weight_decay), lr=cfg.optim.lr,
                                           betas=cfg.optim.betas, fused=ctx.device.type == "cuda")
        self.schedule = WarmupCosineSchedule(self.optimizer, cfg.schedule, cfg.optim.lr, self.total_steps)
        self.forward_model = torch.compile(self.model) if cfg.train.compile else self.model
        self.ddp_model = self.forward_model
        if ctx.enabled:
            # Gradients as views into the all-reduce buckets: no copy in and out of them.
            self.ddp_model = DistributedDataParallel(
                self.forward_model, device_ids=[ctx.local_rank] if ctx.device.type == "cuda" else None,
                gradient_as_bucket_view=True, bucket_cap_mb=cfg.train.ddp_bucket_mb,
            )
        torch.manual_seed(cfg.run.seed + ctx.rank)  # each rank its own dropout stream
        self.states = {"model": self.model, "optimizer": self.optimizer, "scaler": self.scaler,
                       "schedule": self.schedule, "sampler": self.sampler, "progress": self.progress,
                       "rng": RNGState(ctx, cfg.run.seed), "tracking": self.tracker}
        if resume:
            self.checkpointer.restore(resume, self.states)
        self.resumed_from = resume["path"] if resume else None
        self.log = None
        self.bad_steps = 0  # non-finite steps in a row

    def _resume_payload(self) -> dict | None:
        mode, folder = self.cfg.checkpoint.resume, self.checkpointer.folder
        if mode == "never":
            if checkpoint.checkpoint_paths(folder):
                raise UserError(f"{folder} already holds checkpoints and checkpoint.resume is never; "
                                "use another run.out_dir so that they are not overwritten")
            return None
        payload = checkpoint.newest_good(folder) if mode == "auto" else checkpoint.read(Path(mode))
        if payload is None:
            if checkpoint.checkpoint_paths(folder):
                raise UserError(f"no checkpoint in {folder} can be loaded; move them away to start afresh")
            return None
        check_architecture(payload["config"]["model"], self.cfg.model, payload["path"] if mode == "auto" else mode)
        return payload

    # --- the run -------------------------------------------------------------------

    def fit(self) -> str:
        """Train to the end (returns "done") or until a stop signal (returns its name)."""
        cfg, ctx = self.cfg, self.ctx
        stop = StopRequest()
        self._start_log()
        last_log_time, last_log_tokens = time.perf_counter(), self.progress.tokens_seen
        self.ddp_model.train()
        while self.progress.step < self.total_steps:
            step_loss, grad_norm = self.train_step(self.next_batches())
            lr = self.optimizer.param_groups[0]["lr"]  # the rate this step used
            step = self.progress.step
            final = step == self.total_steps

            if step % cfg.logging.interval == 0 or final:  # the only host sync of a step
                loss_value = distributed.all_reduce_mean(step_loss).item()
                now = time.perf_counter()
                tokens_per_sec = (self.progress.tokens_seen - last_log_tokens) / (now - last_log_time)
                last_log_time, last_log_tokens = now, self.progress.tokens_seen
                self._log_step(loss_value, lr, grad_norm.item(), tokens_per_sec)
            if step % cfg.eval.interval == 0 or final:
                self._evaluate()
            stopping = distributed.any_rank(stop.signal_name is not None, ctx)
            if step % cfg.checkpoint.interval == 0 or final or stopping:
                if not all(torch.isfinite(p).all() for p in self.model.parameters()):
                    raise UserError(f"the weights are not finite at step {step}: no checkpoint written")
                summary = {"step": step, "epoch": self.epoch, "tokens_seen": self.progress.tokens_seen}
                path = self.checkpointer.save(step, self.states, cfg.to_dict(), summary)
                print0(f"saved {path}")
            if stopping:
                print0(f"stopped by {stop.signal_name or 'a signal on another rank'} after step {step}; "
                       "run the same command again to resume")
                return stop.signal_name or "signal"
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
            # DDP all-reduces gradients in backward; only the last micro-step's needs to.
            last = micro_step == len(batches) - 1
            sync = contextlib.nullcontext() if last or not self.ctx.enabled else self.ddp_model.no_sync()
            with sync:
                with self.autocast:
                    logits = self.ddp_model(batch[:, :-1])
                    loss = evaluation.next_token_loss(logits, batch[:, 1:])
                self.scaler.scale(loss / len(batches)).backward()
            step_loss += loss.detach() / len(batches)
        self.scaler.unscale_(self.optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.train.grad_clip or float("inf"))
        # A non-finite step is never applied. The gradient norm is the same on every rank (the
        # gradients are all-reduced); with fp16 the scaler skips overflowing steps itself, so
        # there only a non-finite loss counts. Reading the flag is this step's one host sync.
        finite = torch.isfinite(step_loss if self.scaler.is_enabled() else grad_norm)
        if distributed.any_rank(not bool(finite), self.ctx):
            self._skip_bad_step(step_loss, grad_norm)
        else:
            self.bad_steps = 0
            self.scaler.step(self.optimizer)
            self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.schedule.step()
        self.progress.step += 1
        self.progress.tokens_seen += self.progress.global_batch * self.cfg.model.context_length
        return step_loss, grad_norm

    def _skip_bad_step(self, loss: torch.Tensor, grad_norm: torch.Tensor) -> None:
        self.bad_steps += 1
        step, limit = self.progress.step + 1, self.cfg.train.max_bad_steps
        print0(f"warning: step {step}: loss {loss.item():.4g}, gradient norm {grad_norm.item():.4g}; "
               f"update skipped ({self.bad_steps} in a row, stopping at {limit})")
        if self.bad_steps >= limit:
            newest = checkpoint.checkpoint_paths(self.checkpointer.folder)
            raise UserError(
                f"training diverged: {self.bad_steps} steps in a row with a non-finite loss or gradient norm "
                f"(up to step {step}); lower optim.lr or raise schedule.warmup_steps, then resume"
                + (f" from {newest[-1]}" if newest else "")
            )

    @property
    def epoch(self) -> float:
        return self.sampler.epoch + self.sampler.position / self.sampler.num_samples

    def _start_log(self) -> None:
        if not self.ctx.is_main:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        config.save(self.cfg, self.out_dir / "config.yaml")
        self.log = metrics.MetricsLog(self.out_dir)
        self.tracker.start(self.out_dir)
        if self.resumed_from:
            self.log.write({"event": "resume", "step": self.progress.step, "checkpoint": self.resumed_from,
                            "world_size": self.ctx.world_size})
            print0(f"resumed from {self.resumed_from} at step {self.progress.step}")
            return
        params = self.model.num_params()
        tokens_per_step = self.progress.global_batch * self.cfg.model.context_length
        self.log.write({"event": "start", "config": self.cfg.to_dict(), "world_size": self.ctx.world_size,
                        "device": str(self.ctx.device), "precision": str(self.dtype).removeprefix("torch."),
                        "parameters": params, "tokens_per_step": tokens_per_step, "grad_accum_steps": self.grad_accum,
                        "total_steps": self.total_steps})
        print0(f"training {params / 1e6:.1f}M parameters on {self.ctx.world_size} x {self.ctx.device} "
               f"({str(self.dtype).removeprefix('torch.')}), {tokens_per_step:,} tokens/step, "
               f"{self.total_steps} steps, train {self.train_data.num_samples} / val {self.val_data.num_samples} samples")

    def _log_step(self, loss: float, lr: float, grad_norm: float, tokens_per_sec: float) -> None:
        if self.log is None:
            return
        row = {"step": self.progress.step, "epoch": round(self.epoch, 4), "loss": loss, "lr": lr,
               "grad_norm": grad_norm, "tokens_seen": self.progress.tokens_seen, "tokens_per_sec": tokens_per_sec}
        self._record(row)
        print0(f"step {row['step']:>6}/{self.total_steps} | epoch {row['epoch']:.2f} | loss {loss:.4f} | "
               f"lr {lr:.2e} | grad norm {grad_norm:.3f} | {tokens_per_sec:,.0f} tokens/s")

    def _evaluate(self) -> None:
        batches, micro = self.cfg.eval.batches, self.cfg.train.micro_batch_size
        train_loss = evaluation.evaluate_loss(self.forward_model, self.train_data, batches, micro, self.ctx, self.autocast)
        val_loss = evaluation.evaluate_loss(self.forward_model, self.val_data, batches, micro, self.ctx, self.autocast)
        if self.log is None:
            return
        row = {"step": self.progress.step, "epoch": round(self.epoch, 4), "tokens_seen": self.progress.tokens_seen,
               "train_loss": train_loss, "val_loss": val_loss, "val_ppl": evaluation.perplexity(val_loss)}
        self._record(row)
        print0(f"eval step {row['step']}: train loss {train_loss:.4f} | val loss {val_loss:.4f} | "
               f"val perplexity {row['val_ppl']:.2f}")
        if metrics.plot_losses(self.log.path, self.out_dir / "loss.png"):
            self.tracker.log_plot(self.out_dir / "loss.png", self.progress.step)
        sample = self.cfg.sample
        with self.autocast:
            text = complete(self.model, sample.prompt, sample.max_new_tokens, sample.temperature, sample.top_k,
                            self.cfg.run.seed, self.ctx.device)
        print0(f"sample: {text!r}")
        self.tracker.log_sample(text, self.progress.step)

    def _record(self, row: dict) -> None:
        """One row to metrics.jsonl and, when tracking, to W&B."""
        self.log.write(row)
        self.tracker.log(row, row["step"])

    def close(self) -> None:
        self.tracker.finish()
        if self.log is not None:
            self.log.close()
