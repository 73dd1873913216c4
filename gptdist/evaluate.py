"""python -m gptdist.evaluate: loss and perplexity of a checkpoint or OpenAI GPT-2 on prepared data.

    python -m gptdist.evaluate --gpt2 124M --data data/verdict --context-length 256
    torchrun --nproc_per_node=4 -m gptdist.evaluate --checkpoint runs/gutenberg-gpt2-124m --data data/gutenberg

Under torchrun every rank evaluates its share and the results are summed exactly.
The book's exercise 5.5 (GPT-2 124M on The Verdict, context 256) gives train 3.75, val 3.56.
"""

import json

from . import distributed, loading, precision, shards
from .arguments import ArgumentParser, positive_int
from .data import TokenWindows
from .errors import UserError, cli
from .evaluation import evaluate_loss, perplexity
from .loss import NextTokenLoss
from .trainer import check_data_matches_model


def parse_args(argv=None):
    parser = ArgumentParser(prog="gptdist.evaluate", description=__doc__.split("\n\n")[0])
    loading.add_model_arguments(parser)
    parser.add_argument("--data", required=True, help="a prepared data folder")
    parser.add_argument("--splits", nargs="+", default=list(shards.SPLITS), choices=shards.SPLITS)
    parser.add_argument("--context-length", type=positive_int, help="window length (default: the model's)")
    parser.add_argument("--stride", type=positive_int, help="tokens between windows (default: the context length)")
    parser.add_argument("--batch-size", type=positive_int, default=8)
    parser.add_argument("--batches", type=positive_int, help="batches per rank (default: the whole split)")
    parser.add_argument("--precision", default="auto", choices=("auto", *precision.DTYPES))
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    return parser.parse_args(argv)


@cli("gptdist.evaluate")
def main(argv=None) -> None:
    args = parse_args(argv)
    ctx = distributed.setup(args.device, "--device")
    try:
        model = loading.model_from_arguments(args, ctx.device)
        manifest = shards.read_manifest(args.data)
        check_data_matches_model(manifest, model.cfg)
        context = args.context_length or model.cfg.context_length
        if context > model.cfg.context_length:
            raise UserError(f"--context-length {context} exceeds the model's {model.cfg.context_length}")
        autocast = precision.autocast(precision.resolve(args.precision, ctx.device), ctx.device)
        results = {}
        for split in args.splits:
            windows = TokenWindows(manifest, split, context, args.stride or context)
            batches = args.batches or -(-windows.num_samples // args.batch_size)
            loss = evaluate_loss(NextTokenLoss(model), windows, batches, args.batch_size, ctx, autocast)
            results[split] = {"loss": round(loss, 4), "perplexity": round(perplexity(loss), 2),
                              "samples": min(windows.num_samples, batches * args.batch_size * ctx.world_size)}
            distributed.print0(f"{split}: loss {loss:.4f} | perplexity {perplexity(loss):.2f}")
        distributed.print0(json.dumps(results))
    finally:
        distributed.teardown()


if __name__ == "__main__":
    main()
