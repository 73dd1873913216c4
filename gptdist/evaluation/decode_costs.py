"""The generation benchmark of `python -m gptdist.bench generate`: gptdist's cached generation beside
transformers' `generate()` on the same weights exported (hf.py writes them to a temporary folder,
transformers loads them as any user would), and, with --recompute, beside the book's loop that
recomputes the whole window for every token.

Each run generates --new-tokens greedy tokens after a --prompt-tokens prompt (of every row of a
--batch-size batch), never stopping early. Both sides are warmed up first (gptdist's step compiled
on CUDA), then run --repeats times, alternating which goes first; each reports the run of median
tokens per second (new tokens of all rows / seconds), its time to the first new token, every run's
rate, and the highest peak memory (the device's, or on a CPU the process's resident peak above
what it held before). `same_tokens` says whether every run gave gptdist's cached tokens.
"""

import shutil
import time

import torch

from .. import config
from ..checkpoint import pretrained
from ..distributed import pick_device
from ..errors import UserError
from ..files.replace import own_temporary_folder
from ..model import hf
from ..model.gpt import GPTModel
from ..model.sampling import generate
from ..observe.memory import peak_device_bytes, reset_peak_host, resident_host_bytes
from ..observe.throughput import synchronize
from ..tokenizer import encode

GPT2_124M = ["model.preset=gpt2-small", "model.tie_embeddings=true", "model.qkv_bias=true"]
PROMPT_TEXT = "I had always thought Jack Gisburn rather a cheap genius--though a good fellow enough--so it "


def prompt_tokens(count: int, batch: int) -> list[list[int]]:
    """`batch` prompts of `count` real English tokens (The Verdict's first sentence, repeated)."""
    tokens = encode(PROMPT_TEXT * (count // 10 + 1))[:count]
    return [tokens] * batch


class Meter:
    """Time to the first token and peak memory of one timed generation."""

    def __init__(self, device: torch.device):
        self.device = device

    def __enter__(self):
        synchronize(self.device)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
        else:
            reset_peak_host()
            self.base = resident_host_bytes()
        self.first = None
        self.start = time.perf_counter()
        return self

    def token(self, *_) -> None:
        if self.first is None:
            synchronize(self.device)
            self.first = time.perf_counter() - self.start

    def __exit__(self, *exc):
        synchronize(self.device)
        self.seconds = time.perf_counter() - self.start
        self.peak_mb = round((peak_device_bytes(self.device) - self.base) / 2**20, 1)


def row(meter: Meter, tokens: int, generated: list[list[int]]) -> dict:
    return {"tokens_per_sec": tokens / meter.seconds, "first_token_s": meter.first, "seconds": meter.seconds,
            "peak_memory_mb": meter.peak_mb, "tokens": generated}


def median_row(rows: list[dict], ours: list[list[int]]) -> dict:
    """The run of median tokens/s among `rows` (each side's repeats), every run's rate, the highest peak,
    and whether every run gave gptdist's tokens."""
    middle = sorted(rows, key=lambda r: r["tokens_per_sec"])[len(rows) // 2]
    return {"tokens_per_sec": round(middle["tokens_per_sec"], 2),
            "first_token_s": round(middle["first_token_s"], 4), "seconds": round(middle["seconds"], 3),
            "peak_memory_mb": max(r["peak_memory_mb"] for r in rows),
            "runs_tokens_per_sec": [round(r["tokens_per_sec"], 2) for r in rows],
            "same_tokens": all(r["tokens"] == ours for r in rows)}


def transformers_model(model: GPTModel, folder, dtype: torch.dtype, device: torch.device):
    """`model`'s weights exported (as `python -m gptdist.export` writes them) and loaded by transformers."""
    try:
        import transformers
    except ImportError:
        raise UserError("bench generate compares with transformers: pip install 'gptdist[hf]'") from None
    state = pretrained.unpadded(model.state_dict(), model.cfg)
    hf.write(folder, model.cfg, state, torch.float32, hf.tokenizer_files(model.cfg.context_length), "")
    theirs = transformers.AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True, dtype=dtype)
    return theirs.to(device).eval()


class Streamer:
    """transformers' streamer interface: put() gets the prompt first, then each new token."""

    def __init__(self, meter: Meter):
        self.meter, self.calls = meter, 0

    def put(self, _) -> None:
        self.calls += 1
        if self.calls == 2:
            self.meter.token()

    def end(self) -> None:
        pass


def bench_generate(args) -> dict:
    device = pick_device(args.device, 0, "--device")
    dtype = {"auto": torch.bfloat16 if device.type == "cuda" else torch.float32, "fp32": torch.float32,
             "bf16": torch.bfloat16}[args.dtype]
    source = next((flag for flag, given in (("--checkpoint", args.checkpoint), ("--gpt2", args.gpt2),
                                             ("--gpt2-dir", args.gpt2_dir)) if given), None)
    if source and (args.config or args.overrides):
        raise UserError(f"--config and overrides build a model; {source} brings its own: give one or the "
                        "other")
    if source:
        model = pretrained.model_from_arguments(args, device)
    else:  # a model of the config's shape (default OpenAI's GPT-2 124M), its weights as initialised
        shape = [] if args.config else GPT2_124M
        model = GPTModel(config.load(args.config, [*shape, *args.overrides]).model)
    model = model.to(device, dtype).eval()
    if args.prompt_tokens + args.new_tokens > model.cfg.context_length and args.recompute:
        raise UserError("--recompute compares within one context: --prompt-tokens + --new-tokens must be at "
                        f"most the model's context of {model.cfg.context_length}")
    prompts = prompt_tokens(args.prompt_tokens, args.batch_size)
    new_tokens = args.new_tokens * args.batch_size
    step = torch.compile(model) if device.type == "cuda" and not args.no_compile else None
    result = {"benchmark": "generate", "device": str(device), "dtype": str(dtype).removeprefix("torch."),
              "parameters": model.num_params(), "prompt_tokens": args.prompt_tokens,
              "new_tokens": args.new_tokens, "batch_size": args.batch_size, "compiled": step is not None}
    tmp = own_temporary_folder("gptdist-bench")
    try:
        with torch.inference_mode():
            theirs = transformers_model(model, tmp, dtype, device)
            ids = torch.tensor(prompts, device=device)

            def gptdist_side(tokens: int, meter: Meter) -> list[list[int]]:
                return generate(model, prompts, tokens, eos_id=None, step=step, on_tokens=meter.token)

            def transformers_side(tokens: int, meter: Meter) -> list[list[int]]:
                out = theirs.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                      max_new_tokens=tokens, min_new_tokens=tokens, pad_token_id=0,
                                      streamer=Streamer(meter))
                return out[:, ids.shape[1] :].tolist()

            sides = {"gptdist": gptdist_side, "transformers": transformers_side}
            for side in sides.values():  # warmed up (and compiled) before timing: neither pays a first call
                with Meter(device) as warm_up:
                    side(8, warm_up)
            runs: dict[str, list[dict]] = {name: [] for name in sides}
            ours = None
            for repeat in range(args.repeats):  # alternating, first one side, then the other
                for name in (sides if repeat % 2 == 0 else reversed(sides)):
                    with Meter(device) as meter:
                        tokens = sides[name](args.new_tokens, meter)
                    ours = tokens if name == "gptdist" else ours
                    runs[name].append(row(meter, new_tokens, tokens))
            for name, rows in runs.items():
                result[name] = median_row(rows, ours)
            if args.recompute:
                with Meter(device) as meter:
                    again = generate(model, prompts, args.new_tokens, eos_id=None, cache=False,
                                     on_tokens=meter.token)
                result["gptdist_recompute"] = median_row([row(meter, new_tokens, again)], ours)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    result["vs_transformers"] = round(result["gptdist"]["tokens_per_sec"]
                                      / result["transformers"]["tokens_per_sec"], 3)
    if args.recompute:
        result["vs_recompute"] = round(result["gptdist"]["tokens_per_sec"]
                                       / result["gptdist_recompute"]["tokens_per_sec"], 3)
    return result
