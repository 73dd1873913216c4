"""What a run measures besides its training loss: the loss on both splits, a sample, HellaSwag, and
lm-evaluation-harness tasks.

Every rank takes part in each (under fsdp every forward gathers the weights from all of them)
and gets the same result; the Trainer hands it to the RunLog, which records it on rank 0.
"""

import time

from torch import nn

from ..config import Config
from ..data.sources import Source
from ..distributed import Dist
from ..evaluation import harness, hellaswag
from ..evaluation.perplexity import evaluate_loss, perplexity
from ..model.sampling import complete, prompt_ids


class Evaluator:
    def __init__(self, cfg: Config, ctx: Dist, loss: nn.Module, model: nn.Module, autocast,
                 sources: list[Source]):
        """`loss` is the training loss as compiled and wrapped (evaluation runs through it), `model` the
        model it computes."""
        self.cfg, self.ctx, self.loss, self.model, self.autocast = cfg, ctx, loss, model, autocast
        self.sources = sources
        prompt_ids(cfg.sample.prompt, cfg.model.vocab_size, "sample.prompt")  # checked now, not at a sample
        self.hellaswag_items = None  # tokenized once, now: offline, an error now and not at the first score
        if cfg.eval.hellaswag_interval:
            self.hellaswag_items = hellaswag.load(cfg.eval.hellaswag_file, cfg.eval.hellaswag_items, ctx)
        self.lm_eval_tasks = None  # found now: a missing lm-eval or an unknown task stops the run before work
        if cfg.eval.lm_eval_tasks:
            self.lm_eval_tasks = harness.task_manager(tuple(cfg.eval.lm_eval_tasks),
                                                      cfg.eval.lm_eval_include_path)

    def losses(self) -> dict:
        """Train and val loss on eval.batches batches of each split of each source, through the compiled
        training loss; a mixture's are the sources' weighted by their shares, and it adds each source's
        val loss (val_loss_by_source)."""
        batches, micro = self.cfg.eval.batches, self.cfg.train.micro_batch_size
        losses = {split: [evaluate_loss(self.loss, getattr(source, split), batches, micro, self.ctx,
                                        self.autocast) for source in self.sources]
                  for split in ("train", "val")}
        shares = [source.weight / sum(s.weight for s in self.sources) for source in self.sources]
        row = {f"{split}_loss": sum(loss * share for loss, share in zip(values, shares, strict=True))
               for split, values in losses.items()}
        if self.cfg.data.sources:
            row["val_loss_by_source"] = dict(zip([source.name for source in self.sources], losses["val"],
                                                 strict=True))
        return row

    def evaluate(self) -> tuple[dict, str]:
        """(train_loss, val_loss, val_ppl, a mixture's val_loss_by_source, and the seconds they and the
        sample took; a sample from sample.prompt)."""
        start = time.perf_counter()
        row = self.losses()
        sample = self.sample()
        row.update(val_ppl=perplexity(row["val_loss"]), eval_s=round(time.perf_counter() - start, 3))
        return row, sample

    def sample(self) -> str:
        sample = self.cfg.sample
        with self.autocast:
            return complete(self.model, sample.prompt, sample.max_new_tokens, sample.temperature,
                            sample.top_k, self.cfg.run.seed, self.ctx.device)

    def lm_eval(self) -> dict | None:
        """eval.lm_eval_tasks' scores now (lm_eval/TASK/METRIC, every rank scoring its share); None without
        them."""
        if self.lm_eval_tasks is None:
            return None
        evaluation = self.cfg.eval
        output = harness.run(self.model, self.lm_eval_tasks, evaluation.lm_eval_tasks, self.ctx,
                             self.autocast, self.cfg.train.micro_batch_size, evaluation.lm_eval_limit,
                             evaluation.lm_eval_num_fewshot, sharded=self.cfg.train.parallel == "fsdp")
        return {**harness.scores(output["results"]), "lm_eval_s": output["seconds"]}

    def hellaswag(self) -> dict | None:
        """HellaSwag accuracy of the model now (every rank scores its share); None without
        eval.hellaswag_interval."""
        if self.hellaswag_items is None:
            return None
        start = time.perf_counter()
        scores = hellaswag.score(self.model, self.hellaswag_items, self.ctx, self.autocast,
                                 self.cfg.train.micro_batch_size)
        return {"hellaswag_acc": scores["acc"], "hellaswag_acc_norm": scores["acc_norm"],
                "hellaswag_items": scores["items"], "hellaswag_s": round(time.perf_counter() - start, 3)}
