"""python -m gptdist.generate: text from a gptdist checkpoint or OpenAI GPT-2.

    python -m gptdist.generate --checkpoint runs/verdict-tiny --prompt "Every effort moves you"
    python -m gptdist.generate --gpt2 124M --temperature 0.7 --top-k 40

Temperature scaling and top-k filtering as in the book; greedy with --temperature 0 or
--top-k 1; generation stops at <|endoftext|>. The same --seed gives the same text.
"""

import torch

from .arguments import ArgumentParser, non_negative_float, non_negative_int, positive_int, seed, text
from .checkpoint import pretrained
from .distributed import pick_device
from .errors import cli
from .model.sampling import complete


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="gptdist.generate", description=__doc__.split("\n\n")[0])
    pretrained.add_model_arguments(parser)
    parser.add_argument("--prompt", type=text, default="Every effort moves you")
    parser.add_argument("--max-new-tokens", type=positive_int, default=50)
    parser.add_argument("--temperature", type=non_negative_float, default=1.0, help="0: greedy")
    parser.add_argument("--top-k", type=non_negative_int, default=50, help="sample among the k likeliest "
                                                                           "tokens (0: all)")
    parser.add_argument("--seed", type=seed, default=123)
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    return parser


def parse_args(argv=None):
    return build_parser().parse_args(argv)


@cli("gptdist.generate")
def main(argv=None) -> None:
    args = parse_args(argv)
    device = pick_device(args.device, 0, "--device")
    model = pretrained.model_from_arguments(args, device)
    with torch.inference_mode():
        print(complete(model, args.prompt, args.max_new_tokens, args.temperature, args.top_k or None,
                       args.seed, device))


if __name__ == "__main__":
    main()
