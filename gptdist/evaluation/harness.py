"""lm-evaluation-harness on gptdist's own model: any checkpoint, every model option, no export.

`GPTDistLM` is an lm-eval model class: the log-likelihood of a continuation after a context (and
whether it is the greedy one), the rolling log-likelihood of a whole text (lm-eval's disjoint
windows of the model's context), and generation until a stop sequence (through the KV cache).
Requests go through the model in batches, longest first; under torchrun each rank takes every
world_size-th request and the results are gathered exactly, so every rank hands lm-eval the same
answers and lm-eval computes the same scores on each. Under fsdp every forward needs every rank:
all ranks run as many batches (a short rank repeats a request), and generation is done whole by
every rank (it stops at a different step on each otherwise).

Texts are encoded as gptdist's HellaSwag scoring encodes them: the context and the continuation
each on its own, spaces at the context's end moved to the continuation's start (as lm-eval's own
models do), an empty context replaced by <|endoftext|>.
"""

import functools
import json
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path

import torch

from .. import distributed
from ..errors import UserError
from ..model.sampling import generate
from ..tokenizer import EOT_TOKEN, decode, encode


def lm_eval_module():
    try:
        import lm_eval
        import lm_eval.api.model
        import lm_eval.tasks
        import lm_eval.utils
    except ImportError:
        raise UserError("lm-eval tasks need lm-evaluation-harness: pip install 'gptdist[eval]'") from None
    return lm_eval


def shared(items: list, compute: Callable[[list], list], batch_size: int, ctx: distributed.Dist,
           lockstep: bool, length: Callable = len) -> list:
    """compute(batch of items) -> their results, for every item: each rank computes every
    world_size-th item, longest first, `batch_size` at a time, and every rank gets all results in
    order. `lockstep`: every rank runs as many batches (under fsdp)."""
    if not items:
        return []
    mine = sorted(range(ctx.rank, len(items), ctx.world_size), key=lambda i: -length(items[i]))
    batches = [mine[start : start + batch_size] for start in range(0, len(mine), batch_size)]
    if lockstep:
        batches += [[]] * (math.ceil(math.ceil(len(items) / ctx.world_size) / batch_size) - len(batches))
    results = {}
    for batch in batches:
        answers = compute([items[i] for i in batch] or [items[0]])
        results.update(zip(batch, answers, strict=False))
    merged = {}
    for part in distributed.all_gather_objects(results):
        merged.update(part)
    return [merged[i] for i in range(len(items))]


def encode_pair(context: str, continuation: str) -> tuple[list[int], list[int]]:
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    return encode(context) if context else [EOT_TOKEN], encode(continuation)


@functools.cache
def lm_class():
    """GPTDistLM: an lm_eval.api.model.LM subclass (defined once lm-eval is imported)."""
    lm_eval = lm_eval_module()

    class GPTDistLM(lm_eval.api.model.LM):
        def __init__(self, model: torch.nn.Module, ctx: distributed.Dist, autocast, batch_size: int,
                     sharded: bool):
            super().__init__()
            self.model, self.ctx, self.autocast = model, ctx, autocast
            self.batch_size, self.sharded = batch_size, sharded
            self.context_length = model.cfg.context_length

        @property
        def tokenizer_name(self) -> str:
            return "gpt2"

        def _checked(self, tokens: list[int]) -> list[int]:
            if tokens and max(tokens) >= self.model.cfg.vocab_size:
                raise UserError(f"an lm-eval request encodes to GPT-2 token id {max(tokens)}, beyond the "
                                f"model's vocabulary of {self.model.cfg.vocab_size} tokens")
            return tokens

        @torch.no_grad()
        def _score(self, pairs: list[tuple[list[int], list[int]]]) -> list[tuple[float, bool]]:
            """(sum of the continuation's log-probabilities, whether it is the greedy one) of each pair,
            the sequence cut from the left to the context length."""
            rows = []
            for context, continuation in pairs:
                sequence = (context + continuation)[-(self.context_length + 1) :]
                rows.append((sequence[:-1], continuation[-(len(sequence) - 1) :]))
            width = max(len(inputs) for inputs, _ in rows)
            tokens = torch.zeros(len(rows), width, dtype=torch.long)
            for row, (inputs, _) in enumerate(rows):
                tokens[row, : len(inputs)] = torch.tensor(inputs)
            with self.autocast:
                logits = self.model(tokens.to(self.ctx.device))
            answers = []
            for row, (inputs, continuation) in enumerate(rows):
                wanted = torch.tensor(continuation, device=logits.device)
                scores = logits[row, len(inputs) - len(continuation) : len(inputs)].float().log_softmax(-1)
                logprob = scores.gather(1, wanted[:, None]).sum().item()
                answers.append((logprob, bool((scores.argmax(-1) == wanted).all())))
            return answers

        def _score_all(self, pairs):
            return shared(pairs, self._score, self.batch_size, self.ctx, self.sharded,
                          length=lambda pair: len(pair[0]) + len(pair[1]))

        def loglikelihood(self, requests) -> list[tuple[float, bool]]:
            pairs = [tuple(map(self._checked, encode_pair(*request.args))) for request in requests]
            return self._score_all(pairs)

        def loglikelihood_rolling(self, requests) -> list[float]:
            utils = lm_eval.utils
            windows, owners = [], []
            for number, request in enumerate(requests):
                tokens = self._checked(encode(request.args[0]))
                for window in utils.get_rolling_token_windows(tokens, EOT_TOKEN, self.context_length, 1):
                    windows.append(utils.make_disjoint_window(window))
                    owners.append(number)
            totals = [0.0] * len(requests)
            for owner, (logprob, _) in zip(owners, self._score_all(windows), strict=True):
                totals[owner] += logprob
            return totals

        @torch.no_grad()
        def _generate(self, requests: list[tuple[str, dict]]) -> list[str]:
            kwargs = requests[0][1]  # every request of a batch has the same
            until = kwargs.get("until") or [decode([EOT_TOKEN])]
            until = [until] if isinstance(until, str) else list(until)
            sample = kwargs.get("do_sample", False) and kwargs.get("temperature", 1.0) > 0
            prompts = [self._checked(encode(context) or [EOT_TOKEN]) for context, _ in requests]

            def cut(text: str) -> str:
                return text[: min([text.index(stop) for stop in until if stop in text], default=len(text))]

            with self.autocast:
                continuations = generate(self.model, prompts, kwargs.get("max_gen_toks", 256),
                                         kwargs.get("temperature", 1.0) if sample else 0.0,
                                         generator=torch.Generator(self.ctx.device).manual_seed(1234),
                                         ends=lambda tokens: any(stop in decode(tokens) for stop in until))
            return [cut(decode(tokens)) for tokens in continuations]

        def generate_until(self, requests) -> list[str]:
            groups: dict[str, list[int]] = {}
            for number, request in enumerate(requests):
                groups.setdefault(json.dumps(request.args[1], sort_keys=True, default=str), []).append(number)
            texts = [""] * len(requests)
            for numbers in groups.values():
                group = [requests[number].args for number in numbers]
                if self.sharded:  # every rank generates all: each forward needs every rank
                    answers = [text for start in range(0, len(group), self.batch_size)
                               for text in self._generate(group[start : start + self.batch_size])]
                else:
                    answers = shared(group, self._generate, self.batch_size, self.ctx, False,
                                     length=lambda request: len(request[0]))
                for number, text in zip(numbers, answers, strict=True):
                    texts[number] = text
            return texts

    return GPTDistLM


@functools.cache
def _manager(include_path: str | None, defaults: bool):
    """lm-eval's TaskManager of --include-path's tasks (and of its built-in ones with `defaults`): made once
    per process, indexing the thousands of built-in task files takes seconds."""
    logging.getLogger("lm_eval").setLevel(logging.ERROR)  # its INFO lines would bury the run's own
    return lm_eval_module().tasks.TaskManager(include_path=include_path, include_defaults=defaults)


def task_manager(tasks: tuple[str, ...], include_path: str | None):
    """lm-eval's TaskManager that knows `tasks`: --include-path's alone when it holds them all, else with
    the built-in ones; a task neither has is one line."""
    lm_eval_module()
    if include_path is not None:
        if not Path(include_path).is_dir():
            raise UserError(f"--include-path {include_path} is not a folder of lm-eval task YAML files")
        manager = _manager(include_path, False)
        if set(tasks) <= set(manager.all_tasks):
            return manager
    manager = _manager(include_path, True)
    unknown = sorted(set(tasks) - set(manager.all_tasks))
    if unknown:
        raise UserError(f"lm-eval has no task {', '.join(unknown)}"
                        + (f" (nor has --include-path {include_path})" if include_path else "")
                        + "; `lm-eval ls tasks` lists them, --include-path DIR adds YAML tasks")
    return manager


def run(model: torch.nn.Module, manager, tasks: list[str] | tuple[str, ...], ctx: distributed.Dist, autocast,
        batch_size: int, limit: int | None = None, num_fewshot: int | None = None,
        sharded: bool = False) -> dict:
    """lm-eval's results of `tasks` (its "results" table: task -> metric -> value), the same on every
    rank, and the seconds they took. The global RNGs are left alone (a training run draws on them)."""
    lm_eval = lm_eval_module()
    was_training = model.training
    model.eval()
    start = time.perf_counter()
    try:
        output = lm_eval.simple_evaluate(
            model=lm_class()(model, ctx, autocast, batch_size, sharded), tasks=list(tasks),
            task_manager=manager, limit=limit, num_fewshot=num_fewshot, log_samples=False, verbosity="ERROR",
            random_seed=None, numpy_random_seed=None, torch_random_seed=None)
    finally:
        model.train(was_training)
    # lm-eval hands its results to the process of LOCAL_RANK 0 alone; every rank computed the same
    scores = {"results": output["results"], "n-shot": output.get("n-shot")} if ctx.is_main else None
    return {**distributed.broadcast_object(scores), "seconds": round(time.perf_counter() - start, 3)}


def write_beside(checkpoint: Path, output: dict) -> Path:
    """`output`'s results into CHECKPOINT.lm-eval.json beside the checkpoint (step_N.lm-eval.json), added
    to those of tasks scored before; written whole, then renamed."""
    path = checkpoint.with_name(checkpoint.name.removesuffix(".pt") + ".lm-eval.json")
    try:
        earlier = json.loads(path.read_text()) if path.is_file() else {}
    except ValueError:
        earlier = {}
    merged = {"results": {**earlier.get("results", {}), **output["results"]},
              "n-shot": {**(earlier.get("n-shot") or {}), **(output.get("n-shot") or {})}}
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(merged, indent=2, default=str) + "\n")
    partial.replace(path)
    return path


def scores(results: dict) -> dict[str, float]:
    """lm-eval's numeric results as flat metrics.jsonl keys: lm_eval/TASK/METRIC (its ",none" filter
    dropped, standard errors kept as METRIC_stderr)."""
    flat = {}
    for task, metrics in results.items():
        for key, value in metrics.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and key != "sample_len":
                metric, _, kind = key.partition(",")
                flat[f"lm_eval/{task}/{metric}" + ("" if kind in ("", "none") else f"_{kind}")] = value
    return flat
