"""python -m gptdist.generate: text from a gptdist checkpoint or OpenAI GPT-2.

    python -m gptdist.generate --checkpoint runs/verdict-tiny --prompt "Every effort moves you" --stream
    python -m gptdist.generate --gpt2 124M --temperature 0.7 --top-k 40 --num-samples 4
    python -m gptdist.generate --checkpoint runs/verdict-tiny --prompt-file prompts.txt --temperature 0

Temperature scaling and top-k filtering as in the book; greedy with --temperature 0 or
--top-k 1; a sequence ends at <|endoftext|>. Each layer's keys and values are cached, so a new
token costs one position's work (model/sampling.py); on CUDA the one-token step is compiled.
Prompts of a --prompt-file (one per line) and --num-samples samples of each are generated
together, --batch-size rows at a time, and printed in order, each under a header line. The same
--seed gives the same text.
"""

import argparse
import codecs
from collections.abc import Iterator
from pathlib import Path

import torch

from .arguments import (
    ArgumentParser,
    input_path,
    non_negative_float,
    non_negative_int,
    positive_int,
    seed,
    text,
)
from .checkpoint import pretrained
from .distributed import pick_device
from .errors import UserError, cli
from .model.sampling import generate, prompt_ids
from .tokenizer import decode, token_bytes
from .training import precision


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="gptdist.generate", description=__doc__.split("\n\n")[0])
    pretrained.add_model_arguments(parser)
    prompts = parser.add_mutually_exclusive_group()
    prompts.add_argument("--prompt", type=text, default="Every effort moves you")
    prompts.add_argument("--prompt-file", type=input_path, help="a text file of prompts, one per line")
    parser.add_argument("--num-samples", type=positive_int, default=1, help="samples of each prompt")
    parser.add_argument("--batch-size", type=positive_int, default=16, help="sequences generated together")
    parser.add_argument("--stream", action="store_true", help="print the text as it is generated (one "
                                                              "sequence)")
    parser.add_argument("--max-new-tokens", type=positive_int, default=50)
    parser.add_argument("--temperature", type=non_negative_float, default=1.0, help="0: greedy")
    parser.add_argument("--top-k", type=non_negative_int, default=50, help="sample among the k likeliest "
                                                                           "tokens (0: all)")
    parser.add_argument("--seed", type=seed, default=123)
    parser.add_argument("--no-cache", action="store_true",
                        help="recompute the whole window for every token (the book's loop; slower)")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                        help="compile the one-token step (default: on CUDA)")
    parser.add_argument("--precision", default="auto", choices=("auto", *precision.DTYPES))
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    return parser


def parse_args(argv=None):
    return build_parser().parse_args(argv)


def read_prompts(args) -> list[str]:
    if args.prompt_file is None:
        return [args.prompt]
    try:
        lines = Path(args.prompt_file).read_text().splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"cannot read --prompt-file {args.prompt_file} ({type(err).__name__})") from None
    prompts = [line for line in lines if line.strip()]
    if not prompts:
        raise UserError(f"--prompt-file {args.prompt_file} holds no prompt (one per line)")
    return prompts


def batches(rows: list[list[int]], size: int, one_length: bool) -> Iterator[list[list[int]]]:
    """`rows` in order, `size` at a time; with `one_length`, a batch also ends where the length changes
    (the book's loop takes no padding)."""
    batch: list[list[int]] = []
    for row in rows:
        if batch and (len(batch) == size or (one_length and len(row) != len(batch[0]))):
            yield batch
            batch = []
        batch.append(row)
    yield batch


class TextStream:
    """Prints a sequence's tokens as they come: the bytes of a character split across tokens wait for
    the rest of it."""

    def __init__(self):
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def write(self, tokens: list[int | None]) -> None:
        if tokens[0] is not None:
            print(self.decoder.decode(token_bytes(tokens[0])), end="", flush=True)


@cli("gptdist.generate")
def main(argv=None) -> None:
    args = parse_args(argv)
    prompts = read_prompts(args)
    sequences = len(prompts) * args.num_samples
    if args.stream and sequences > 1:
        raise UserError(f"--stream prints one sequence; this asks for {sequences} (--prompt-file, "
                        "--num-samples)")
    if args.no_cache and args.compile:
        raise UserError("--compile compiles the cached one-token step; --no-cache has none")
    device = pick_device(args.device, 0, "--device")
    model = pretrained.model_from_arguments(args, device)
    ids = [prompt_ids(prompt, model.cfg.vocab_size, "--prompt-file" if args.prompt_file else "--prompt")
           for prompt in prompts]
    rows = [prompt for prompt in ids for _ in range(args.num_samples)]
    compile_step = device.type == "cuda" if args.compile is None else args.compile
    step = torch.compile(model) if compile_step and not args.no_cache else None
    autocast = precision.autocast(precision.resolve(args.precision, device), device)
    generator = torch.Generator(device=device).manual_seed(args.seed)
    stream = TextStream() if args.stream else None
    if stream:
        print(decode(rows[0]), end="", flush=True)
    number = 0
    with torch.inference_mode(), autocast:
        for batch in batches(rows, args.batch_size, args.no_cache):
            continuations = generate(model, batch, args.max_new_tokens, args.temperature, args.top_k or None,
                                     generator=generator, cache=not args.no_cache, step=step,
                                     on_tokens=stream.write if stream else None)
            if stream:
                print(stream.decoder.decode(b"", final=True))
                continue
            for prompt, continuation in zip(batch, continuations, strict=True):
                if sequences > 1:
                    print(f"==> prompt {number // args.num_samples + 1}, sample "
                          f"{number % args.num_samples + 1} <==")
                print(decode(prompt + continuation))
                number += 1


if __name__ == "__main__":
    main()
