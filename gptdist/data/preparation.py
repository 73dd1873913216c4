"""Corpora to memory-mapped token shards: what `python -m gptdist.prepare` does.

Every document is GPT-2 BPE-encoded and followed by one <|endoftext|>. Documents go to
train or val by a seeded hash of their position, so the output is the same for any
number of workers; a corpus too small for that (The Verdict is one document) is split
inside its token stream, first (1 - val_fraction) to train, as the book does.
Everything is written to a folder beside the output, renamed into place at the end; a prepare that
is killed resumes from it (progress.py). `--part K/N` prepares the K-th of N consecutive runs of the
input's documents, each document split as in a prepare of the whole; merge.py joins the parts.
"""

import glob
import os
import sys
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .. import __version__
from ..errors import UserError
from ..files.replace import Kind, check_apart, clean_stale_temporaries, replace_folder
from ..tokenizer import EOT_TOKEN, GPT2_VOCAB_SIZE, TOKENIZER_NAME, gpt2_encoding
from . import corpus, progress, shards, tokenizing
from .tally import Tally


@dataclass
class PrepareOptions:
    """What to prepare and how: one source (input, dataset or hf), the output folder and the split."""

    out: str  # the output folder (created atomically)
    input: list[str] | None = None  # text files, folders (*.txt, recursive), globs
    dataset: str | None = None  # a known dataset (corpus.DATASETS), downloaded and cached
    hf: str | None = None  # a Hugging Face dataset (streamed), or parquet|json|csv|text for local files
    hf_config: str | None = None  # the dataset's configuration name
    hf_split: str = "train"  # the dataset split to read
    text_column: str = "text"  # the column holding the text
    data_files: list[str] | None = None  # files for hf parquet|json|csv|text
    overwrite: bool = False  # replace an existing output folder (one that prepare made)
    gutenberg: bool = False  # clean Project Gutenberg books
    val_fraction: float = 0.1  # share of documents for val
    seed: int = 1337  # seed of the train/val split
    workers: int = field(default_factory=lambda: os.cpu_count() or 1)  # tokenizer processes
    shard_tokens: int = 100_000_000  # tokens per shard
    part: tuple[int, int] | None = None  # (K, N): the K-th of N consecutive runs of the input's documents


def split_inside_text(folder: Path, train: dict, val: dict, val_fraction: float, shard_tokens: int) -> dict:
    """Re-split a corpus whose documents all landed in one split: by position in its token stream."""
    whole = train if train["documents"] else val
    sources = [folder / s["path"] for s in whole["shards"]]
    for path in sources:
        path.rename(path.with_suffix(".old"))
    total = whole["tokens"]
    n_val = max(1, int(round(val_fraction * total)))
    writers = {
        name: shards.ShardWriter(folder, name, tokenizing.TOKEN_DTYPE, shard_tokens)
        for name in shards.SPLITS
    }
    position = 0
    for path in sources:
        old = path.with_suffix(".old")
        tokens = np.fromfile(old, dtype=tokenizing.TOKEN_DTYPE)
        cut = min(max(total - n_val - position, 0), len(tokens))
        writers["train"].write(tokens[:cut])
        writers["val"].write(tokens[cut:])
        writers["train"].documents += int((tokens[:cut] == EOT_TOKEN).sum())
        writers["val"].documents += int((tokens[cut:] == EOT_TOKEN).sum())
        position += len(tokens)
        old.unlink()
    return {name: writer.close() for name, writer in writers.items()}


def document_refs(args: PrepareOptions) -> tuple[Iterable, dict]:
    """The documents named on the command line (the part's, with --part), and a description of them for
    the manifest."""
    if args.hf:
        if args.part:
            raise UserError("--part splits a list of input files (--input, --dataset); a streamed dataset "
                            "has no count to split: prepare it whole")
        source = {"hf": args.hf, "hf_config": args.hf_config, "hf_split": args.hf_split,
                  "text_column": args.text_column, "data_files": args.data_files}
        return corpus.hf_texts(args.hf, args.hf_config, args.hf_split, args.text_column,
                               args.data_files), source
    files = corpus.dataset_paths(args.dataset) if args.dataset else corpus.expand_inputs(args.input)
    source = {"dataset": args.dataset} if args.dataset else {}
    if args.part:
        first, end = part_range(len(files), *args.part)
        source["part"] = {"number": args.part[0], "of": args.part[1], "first_document": first,
                          "input_documents": len(files)}
        files = files[first:end]
    return files, {**source, "inputs": [str(f) for f in files]} if not args.dataset else source


def part_range(documents: int, number: int, parts: int) -> tuple[int, int]:
    """The documents [first, end) of part `number` (1-based) of `parts` consecutive, nearly equal parts."""
    return (number - 1) * documents // parts, number * documents // parts


def input_paths(args: PrepareOptions, refs) -> list[Path]:
    """The local files and folders a run reads: an output folder must hold none of them."""
    if args.input:
        return [Path(p) for p in args.input if not glob.has_magic(p)] + list(refs)
    if args.dataset:
        return list(refs)
    return corpus.expand_inputs(args.data_files) if args.data_files else []


PREPARED = Kind("a prepared data folder", "prepare", shards.files_not_prepared)


def prepare(args: PrepareOptions) -> tuple[dict, float]:
    """Write the shards and manifest of `args.out`; returns the manifest and the seconds it took. A
    prepare of the same arguments killed before goes on from where it was (progress.py)."""
    out = Path(args.out)
    clean_stale_temporaries(out)  # first: a folder a killed prepare was replacing is put back
    refs, source = document_refs(args)
    check_apart(out, [("--input", path) for path in input_paths(args, refs)], "--out")
    start = time.perf_counter()
    options = {k: v for k, v in asdict(args).items() if k not in ("out", "overwrite", "workers")}
    key = progress.fingerprint({**options, "version": __version__}, refs)
    manifest = replace_folder(out, PREPARED, args.overwrite,
                              lambda tmp: _write_shards(tmp, refs, source, args, key),
                              kept=progress.partial_folder(out))
    return manifest, time.perf_counter() - start


def _started(tmp: Path, args: PrepareOptions, record: progress.PrepareProgress) -> tuple[dict, Tally, int]:
    """(each split's writer, the tally, the documents done): where a killed prepare of these arguments
    was, or the start."""
    writers = {name: shards.ShardWriter(tmp, name, tokenizing.TOKEN_DTYPE, args.shard_tokens)
               for name in shards.SPLITS}
    tally, state = Tally(), record.resumable()
    if state is None:
        return writers, tally, 0
    try:
        for name, writer in writers.items():
            writer.load_state_dict(state["writers"][name])
    except (OSError, KeyError) as err:  # its shards were changed since
        print(f"the progress record in {record.folder} does not match its shards ({err}); starting afresh",
              file=sys.stderr)
        record.clear()
        return _started(tmp, args, record)
    tally.load_state_dict(state["tally"])
    print(f"resuming a prepare killed after {state['documents']:,} documents "
          f"({sum(w.tokens for w in writers.values()):,} tokens in {record.folder})", file=sys.stderr)
    return writers, tally, state["documents"]


def _documents_from(refs: Iterable, args: PrepareOptions, done: int) -> Iterable:
    """The input's documents after the first `done`."""
    if isinstance(refs, list):
        return refs[done:]
    return corpus.hf_texts(args.hf, args.hf_config, args.hf_split, args.text_column, args.data_files,
                           start=done)


def _write_shards(tmp: Path, refs: Iterable, source: dict, args: PrepareOptions, key: str) -> dict:
    gpt2_encoding()  # fail early, before any worker starts, if the BPE files cannot be had
    record = progress.PrepareProgress(tmp, key)
    writers, tally, done = _started(tmp, args, record)
    first = source["part"]["first_document"] if "part" in source else 0  # the split's coin is global
    start = time.perf_counter()
    bar = tqdm(desc="prepare", unit=" docs", file=sys.stderr, dynamic_ncols=True, initial=done)
    documents = tokenizing.tokenized(_documents_from(refs, args, done), first + done, args.gutenberg,
                                     tokenizing.Split(args.seed, args.val_fraction), args.workers)
    for result in documents:
        for index, stats in result.problems:
            tally.add(stats, index)
        for name, writer in writers.items():
            writer.add_documents(result.tokens[name], result.documents[name])
        done += result.count
        shards_begun = sum(len(writer.shards) for writer in writers.values())
        if record.due(shards_begun):
            record.save({"documents": done, "tally": tally.state_dict(),
                         "writers": {name: writer.state_dict() for name, writer in writers.items()}},
                        shards_begun)
        written = sum(writer.tokens for writer in writers.values())
        bar.set_postfix_str(f"{written / (time.perf_counter() - start):,.0f} tokens/s", refresh=False)
        bar.update(result.count)
    bar.close()
    splits = {name: writer.close() for name, writer in writers.items()}
    if splits["train"]["documents"] + splits["val"]["documents"] == 0 and not args.part:
        reasons = "; ".join(f"{n} {why}" for why, n in tally.skipped.items())
        raise UserError("the corpus is empty: no document left to "
                        f"tokenize{f' ({reasons})' if reasons else ''}")
    split_method = "documents"
    # a part is split by documents whatever it holds: the merged parts are split as a whole would be
    if (not splits["train"]["documents"] or not splits["val"]["documents"]) and not args.part:
        split_method = "text"
        splits = split_inside_text(tmp, splits["train"], splits["val"], args.val_fraction, args.shard_tokens)
    manifest = {
        "format": shards.FORMAT,
        "tokenizer": TOKENIZER_NAME,
        "vocab_size": GPT2_VOCAB_SIZE,
        "eot_token": EOT_TOKEN,
        "dtype": tokenizing.TOKEN_DTYPE.name,
        "splits": splits,
        "source": {
            **source,
            "gutenberg": args.gutenberg,
            "val_fraction": args.val_fraction,
            "seed": args.seed,
            "shard_tokens": args.shard_tokens,
            "split_by": split_method,
            **tally.state_dict(),
            "gptdist_version": __version__,
        },
    }
    record.finish()
    shards.write_manifest(tmp, manifest)
    return manifest
