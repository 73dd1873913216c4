r"""python -m gptdist.evaluate: loss and perplexity on prepared data, HellaSwag accuracy, or
lm-evaluation-harness tasks, of any model.

    python -m gptdist.evaluate --gpt2 124M --data data/verdict --context-length 256
    torchrun --nproc_per_node=4 -m gptdist.evaluate --checkpoint runs/gutenberg-gpt2-124m \
        --data data/gutenberg
    python -m gptdist.evaluate --task hellaswag --gpt2-dir gpt2-hf
    torchrun --nproc_per_node=2 -m gptdist.evaluate --task lm-eval --tasks arc_easy,lambada_openai \
        --checkpoint runs/gutenberg-gpt2-124m-modern

Under torchrun every rank evaluates its share and the results are gathered exactly.
The book's exercise 5.5 (GPT-2 124M on The Verdict, context 256) gives train 3.75, val 3.56;
HellaSwag's validation set gives GPT-2 124M acc 0.2859, acc_norm 0.2955 (one JSON line).
lm-eval's tasks (pip install 'gptdist[eval]') run on gptdist's own model, every option, any
checkpoint (evaluation/harness.py); --include-path adds tasks from YAML files. Their results are
one JSON line, and of a --checkpoint also written beside it (step_N.lm-eval.json).
"""

import json
from pathlib import Path

from . import distributed
from .arguments import ArgumentParser, input_path, non_negative_int, positive_int, text
from .checkpoint import pretrained
from .data import shards
from .data.windows import TokenWindows
from .errors import UserError, cli
from .evaluation import harness, hellaswag
from .evaluation.perplexity import evaluate_loss, perplexity
from .training import precision


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="gptdist.evaluate", description=__doc__.split("\n\n")[0])
    pretrained.add_model_arguments(parser)
    parser.add_argument("--task", default="loss", choices=("loss", "hellaswag", "lm-eval"),
                        help="loss: loss and perplexity on --data; hellaswag: accuracy on HellaSwag's "
                             "validation set; lm-eval: lm-evaluation-harness's --tasks")
    parser.add_argument("--tasks", type=text, help="--task lm-eval: task names, comma-separated")
    parser.add_argument("--include-path", type=input_path, help="--task lm-eval: a folder of lm-eval task "
                                                                "YAML files")
    parser.add_argument("--num-fewshot", type=non_negative_int, help="--task lm-eval: examples before each "
                                                                     "question (default: each task's)")
    parser.add_argument("--data", type=input_path, help="a prepared data folder (--task loss)")
    parser.add_argument("--hellaswag-file", type=input_path,
                        help="a local file in HellaSwag's JSONL format (default: the official validation "
                             "set, downloaded once into the cache)")
    parser.add_argument("--limit", type=positive_int,
                        help="--task hellaswag, lm-eval: score only the first N items (of each task)")
    parser.add_argument("--splits", nargs="+", default=list(shards.SPLITS), choices=shards.SPLITS)
    parser.add_argument("--context-length", type=positive_int, help="window length (default: the model's)")
    parser.add_argument("--stride", type=positive_int, help="tokens between windows (default: the context "
                                                            "length)")
    parser.add_argument("--batch-size", type=positive_int, default=8,
                        help="sequences per forward (hellaswag: rounded down to whole items of 4)")
    parser.add_argument("--batches", type=positive_int, help="batches per rank (default: the whole split)")
    parser.add_argument("--precision", default="auto", choices=("auto", *precision.DTYPES))
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    return parser


def parse_args(argv=None):
    return build_parser().parse_args(argv)


# The flags that only some tasks read: given to another, they are a mistake, not something to ignore.
TASK_FLAGS = {"data": ("loss",), "context_length": ("loss",), "stride": ("loss",), "batches": ("loss",),
              "hellaswag_file": ("hellaswag",), "limit": ("hellaswag", "lm-eval"), "tasks": ("lm-eval",),
              "include_path": ("lm-eval",), "num_fewshot": ("lm-eval",)}


def check_task_flags(args) -> None:
    for name, tasks in TASK_FLAGS.items():
        if getattr(args, name) is not None and args.task not in tasks:
            raise UserError(f"--{name.replace('_', '-')} is for --task {' or '.join(tasks)}, not --task "
                            f"{args.task}")
    if args.task == "loss" and not args.data:
        raise UserError("--task loss needs --data (a prepared data folder)")
    if args.task == "lm-eval" and not args.tasks:
        raise UserError("--task lm-eval needs --tasks NAME[,NAME...]")


@cli("gptdist.evaluate")
def main(argv=None) -> None:
    args = parse_args(argv)
    check_task_flags(args)
    ctx = distributed.setup(args.device, "--device")
    items = hellaswag.load(args.hellaswag_file, args.limit, ctx) if args.task == "hellaswag" else None
    tasks = tuple(name.strip() for name in args.tasks.split(",") if name.strip()) if args.tasks else None
    manager = harness.task_manager(tasks, args.include_path) if tasks else None  # before the model
    manifest = shards.read_manifest(args.data) if args.data else None
    checkpoint = pretrained.checkpoint_file(args.checkpoint) if args.checkpoint else None
    model = pretrained.model_from_arguments(args, ctx.device)
    autocast = precision.autocast(precision.resolve(args.precision, ctx.device), ctx.device)
    if items:
        distributed.print0(json.dumps(hellaswag.score(model, items, ctx, autocast, args.batch_size)))
    elif tasks:
        output = harness.run(model, manager, tasks, ctx, autocast, args.batch_size, args.limit,
                             args.num_fewshot)
        if checkpoint is not None and ctx.is_main:
            distributed.print0(f"written to {harness.write_beside(Path(checkpoint), output)}")
        distributed.print0(json.dumps(output, default=str))
    else:
        distributed.print0(json.dumps(evaluate_splits(model, manifest, args, ctx, autocast)))


def evaluate_splits(model, manifest: shards.Manifest, args, ctx: distributed.Dist, autocast) -> dict:
    """Loss, perplexity and sample count of every --splits split of --data (its `manifest`)."""
    manifest.check_vocabulary(model.cfg.vocab_size, "the model's vocabulary")
    context = args.context_length or model.cfg.context_length
    if context > model.cfg.context_length:
        raise UserError(f"--context-length {context} exceeds the model's {model.cfg.context_length}")
    results = {}
    for split in args.splits:
        windows = TokenWindows(manifest, split, context, args.stride or context)
        batches = args.batches or -(-windows.num_samples // args.batch_size)
        loss = evaluate_loss(model, windows, batches, args.batch_size, ctx, autocast)
        results[split] = {"loss": round(loss, 4), "perplexity": round(perplexity(loss), 2),
                          "samples": min(windows.num_samples, batches * args.batch_size * ctx.world_size)}
        distributed.print0(f"{split}: loss {loss:.4f} | perplexity {perplexity(loss):.2f}")
    return results


if __name__ == "__main__":
    main()
