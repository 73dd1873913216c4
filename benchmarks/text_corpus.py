"""Write a folder of text documents (The Verdict's paragraphs, repeated) for benchmarks that train on real
English: prepare's throughput, the FP8 loss curves of benchmarks/gpu.sh.

    python benchmarks/text_corpus.py --megabytes 32 --out /tmp/corpus

Needs The Verdict in the download cache and GPT-2's tokenizer files (both checked before anything is
written); --out must not exist.
"""

from pathlib import Path

from gptdist.arguments import ArgumentParser, output_path, positive_int
from gptdist.data import corpus, rates
from gptdist.errors import UserError, cli
from gptdist.tokenizer import gpt2_encoding


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="text_corpus.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--megabytes", type=positive_int, required=True, help="the corpus's size")
    parser.add_argument("--out", type=output_path, required=True, help="the folder to write (must not exist)")
    return parser


@cli("text_corpus.py")
def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    out = Path(args.out)
    if out.exists() or out.is_symlink():
        raise UserError(f"--out {out} already exists; choose a new folder")
    corpus.verdict_path()
    gpt2_encoding()  # the curves' runs prepare this corpus: without the tokenizer, say so now
    rates.synthetic_corpus(out, args.megabytes)


if __name__ == "__main__":
    main()
