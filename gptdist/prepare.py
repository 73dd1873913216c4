"""python -m gptdist.prepare: corpora to memory-mapped token shards.

    python -m gptdist.prepare --dataset verdict --out data/verdict
    python -m gptdist.prepare --input books/ --gutenberg --out data/gutenberg --workers 16
    python -m gptdist.prepare --hf parquet --data-files 'corpus/*.parquet' --out data/corpus
    python -m gptdist.prepare --verify data/verdict
    python -m gptdist.prepare --input books/ --part 2/8 --out data/parts/2   (slurm/prepare.sbatch)
    python -m gptdist.prepare --merge data/parts/* --out data/books

Killed, the same command again goes on from where it was. The work is gptdist/data/preparation.py's (a
resume: data/progress.py; a merge: data/merge.py); the shard format is gptdist/data/shards.py's.
"""

import time

from .arguments import ArgumentParser, fraction, input_path, output_path, part, positive_int, seed, text
from .data import corpus, merge, shards
from .data.preparation import PrepareOptions, prepare
from .errors import cli


def named(examples: list[str], count: int) -> str:
    """The first few names and how many more."""
    more = f" and {count - len(examples)} more" if count > len(examples) else ""
    return f"{', '.join(examples)}{more}"


def summary(manifest: dict, out: str, seconds: float) -> str:
    train, val, src = manifest["splits"]["train"], manifest["splits"]["val"], manifest["source"]
    total = train["tokens"] + val["tokens"]
    line = (
        f"prepared {out}: {train['documents'] + val['documents']:,} documents, {total:,} tokens "
        f"(train {train['tokens']:,} in {len(train['shards'])} shards, val {val['tokens']:,}; "
        f"split by {src['split_by']}) in {seconds:.1f}s"
    )
    examples = src.get("examples", {})
    if src["skipped"]:
        line += "; skipped " + ", ".join(f"{n} file(s): {why} ({named(examples.get(why, []), n)})"
                                         for why, n in src["skipped"].items())
    if src["replaced_characters"]:
        count = src["files_with_replacements"]
        line += (f"; {count} file(s) had undecodable bytes, {src['replaced_characters']} replaced with "
                 f"U+FFFD ({named(examples.get('undecodable bytes', []), count)})")
    return line


def build_parser() -> ArgumentParser:
    defaults = PrepareOptions(out="")
    parser = ArgumentParser(prog="gptdist.prepare", description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--input", nargs="+", type=input_path, metavar="PATH",
                        help="text files, folders (*.txt, recursive), globs")
    source.add_argument("--dataset", choices=tuple(corpus.DATASETS),
                        help=f"a known dataset, downloaded and cached: {', '.join(corpus.DATASETS)}")
    source.add_argument("--hf", type=text, metavar="NAME", help="a Hugging Face dataset (streamed), or "
                                                     "parquet|json|csv|text")
    source.add_argument("--verify", type=input_path, metavar="DIR",
                        help="re-check a prepared folder: sizes, sha256, token ids")
    source.add_argument("--merge", nargs="+", type=input_path, metavar="PART",
                        help="join the folders of --part K/N runs into --out (shards linked, not copied)")
    parser.add_argument("--out", type=output_path, help="output folder (created atomically)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    parser.add_argument("--gutenberg", action="store_true", help="clean Project Gutenberg books")
    parser.add_argument("--hf-config", type=text, help="the dataset's configuration name")
    parser.add_argument("--hf-split", type=text, default=defaults.hf_split,
                        help=f"the dataset split to read (default: {defaults.hf_split})")
    parser.add_argument("--text-column", type=text, default=defaults.text_column,
                        help=f"the column holding the text (default: {defaults.text_column})")
    parser.add_argument("--data-files", nargs="+", type=input_path,
                        help="files for --hf parquet|json|csv|text")
    parser.add_argument("--val-fraction", type=fraction, default=defaults.val_fraction,
                        help=f"share of documents for val (default {defaults.val_fraction})")
    parser.add_argument("--seed", type=seed, default=defaults.seed, help="seed of the train/val split")
    parser.add_argument("--workers", type=positive_int, default=defaults.workers, help="tokenizer processes")
    parser.add_argument("--part", type=part, metavar="K/N",
                        help="prepare the K-th of N consecutive runs of the input's documents (merge them "
                             "with --merge)")
    parser.add_argument("--shard-tokens", type=positive_int, default=defaults.shard_tokens, help="tokens per "
                                                                                                 "shard")
    return parser


def parse_args(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.verify and not args.out:
        parser.error("--out is required")
    if args.part and not (args.input or args.dataset):
        parser.error("--part splits a list of input files (--input, --dataset); a streamed dataset or a "
                     "prepared folder has no documents to split")
    for flag, value in (("--data-files", args.data_files), ("--hf-config", args.hf_config)):
        if value is not None and not args.hf:
            parser.error(f"{flag} is for --hf (a Hugging Face dataset or local parquet|json|csv|text files)")
    return args


@cli("gptdist.prepare")
def main(argv=None) -> None:
    args = parse_args(argv)
    if args.verify:
        manifest = shards.verify(args.verify)
        total = sum(manifest.splits[s]["tokens"] for s in shards.SPLITS)
        print(f"{args.verify}: OK ({total:,} tokens, sizes, sha256 and token ids checked)")
        return
    if args.merge:
        started = time.perf_counter()
        manifest = merge.merge(args.merge, args.out, args.overwrite)
        print(summary(manifest, args.out, time.perf_counter() - started)
              + f"; merged from {len(args.merge)} parts, shards linked")
        return
    options = PrepareOptions(**{key: value for key, value in vars(args).items()
                                if key not in ("verify", "merge")})
    manifest, seconds = prepare(options)
    print(summary(manifest, args.out, seconds))


if __name__ == "__main__":
    main()
