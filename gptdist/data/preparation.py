"""Corpora to memory-mapped token shards: what `python -m gptdist.prepare` does.

Every document is GPT-2 BPE-encoded and followed by one <|endoftext|>. Documents go to
train or val by a seeded hash of their position, so the output is the same for any
number of workers; a corpus too small for that (The Verdict is one document) is split
inside its token stream, first (1 - val_fraction) to train, as the book does.
Everything is written to a temporary folder renamed into place at the end.
"""

import glob
import hashlib
import multiprocessing
import os
import sys
import time
from collections import Counter, deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .. import __version__
from ..errors import UserError
from ..files.replace import Kind, check_apart, clean_stale_temporaries, replace_folder
from ..tokenizer import EOT_TOKEN, GPT2_VOCAB_SIZE, TOKENIZER_NAME, gpt2_encoding
from . import corpus, shards

DOCS_PER_TASK = 8  # documents sent to a worker at once: amortises inter-process overhead


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


def tokenize_document(ref: str | Path, gutenberg: bool) -> tuple[np.ndarray | None, dict]:
    """One document (a path to read, or the text itself) to its tokens plus EOT, or None if skipped."""
    replaced = 0
    if isinstance(ref, Path):
        text, replaced = corpus.read_text(ref)
    else:
        text = ref
    if gutenberg:
        text, why = corpus.clean_gutenberg(text)
        if text is None:
            return None, {"skipped": why, "replaced": replaced}
    # encode_ordinary's ids straight into a numpy buffer (no Python list): with nothing allowed
    # and nothing disallowed, text that looks like a special token is ordinary text.
    ids = gpt2_encoding().encode_to_numpy(text, allowed_special=set(), disallowed_special=())
    tokens = np.empty(len(ids) + 1, dtype=shards.token_dtype(GPT2_VOCAB_SIZE))
    tokens[:-1] = ids
    tokens[-1] = EOT_TOKEN
    return tokens, {"skipped": None, "replaced": replaced}


def _tokenize_task(task: tuple[list, bool]) -> list:
    refs, gutenberg = task
    return [tokenize_document(ref, gutenberg) for ref in refs]


def _batched(items: Iterable, size: int) -> Iterator[list]:
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def tokenized_documents(refs: Iterable, gutenberg: bool, workers: int) -> Iterator[tuple]:
    """(tokens, stats) per document, in input order, tokenized by `workers` processes.

    Pool.imap would read the whole input ahead of the workers (a streamed 100 GB
    dataset included), so at most a few tasks per worker are kept in flight.
    """
    tasks = ((batch, gutenberg) for batch in _batched(refs, DOCS_PER_TASK))
    if workers <= 1:
        for task in tasks:
            yield from _tokenize_task(task)
        return
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
    with context.Pool(workers) as pool:
        in_flight: deque = deque()
        for task in tasks:
            in_flight.append(pool.apply_async(_tokenize_task, (task,)))
            if len(in_flight) >= 4 * workers:
                yield from in_flight.popleft().get()
        while in_flight:
            yield from in_flight.popleft().get()


def goes_to_val(index: int, seed: int, val_fraction: float) -> bool:
    """A seeded, order-independent coin for document `index`."""
    digest = hashlib.blake2b(f"{seed}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2**64 < val_fraction


def split_inside_text(folder: Path, train: dict, val: dict, val_fraction: float, shard_tokens: int) -> dict:
    """Re-split a corpus whose documents all landed in one split: by position in its token stream."""
    whole = train if train["documents"] else val
    sources = [folder / s["path"] for s in whole["shards"]]
    for path in sources:
        path.rename(path.with_suffix(".old"))
    total = whole["tokens"]
    n_val = max(1, int(round(val_fraction * total)))
    writers = {
        name: shards.ShardWriter(folder, name, shards.token_dtype(GPT2_VOCAB_SIZE), shard_tokens)
        for name in shards.SPLITS
    }
    position = 0
    for path in sources:
        old = path.with_suffix(".old")
        tokens = np.fromfile(old, dtype=shards.token_dtype(GPT2_VOCAB_SIZE))
        cut = min(max(total - n_val - position, 0), len(tokens))
        writers["train"].write(tokens[:cut])
        writers["val"].write(tokens[cut:])
        writers["train"].documents += int((tokens[:cut] == EOT_TOKEN).sum())
        writers["val"].documents += int((tokens[cut:] == EOT_TOKEN).sum())
        position += len(tokens)
        old.unlink()
    return {name: writer.close() for name, writer in writers.items()}


def document_refs(args: PrepareOptions) -> tuple[Iterable, dict]:
    """The documents named on the command line, and a description of them for the manifest."""
    if args.hf:
        source = {"hf": args.hf, "hf_config": args.hf_config, "hf_split": args.hf_split,
                  "text_column": args.text_column, "data_files": args.data_files}
        return corpus.hf_texts(args.hf, args.hf_config, args.hf_split, args.text_column,
                               args.data_files), source
    if args.dataset:
        return corpus.dataset_paths(args.dataset), {"dataset": args.dataset}
    files = corpus.expand_inputs(args.input)
    return files, {"inputs": [str(f) for f in files]}


def input_paths(args: PrepareOptions, refs) -> list[Path]:
    """The local files and folders a run reads: an output folder must hold none of them."""
    if args.input:
        return [Path(p) for p in args.input if not glob.has_magic(p)] + list(refs)
    if args.dataset:
        return list(refs)
    return corpus.expand_inputs(args.data_files) if args.data_files else []


PREPARED = Kind("a prepared data folder", "prepare", shards.files_not_prepared)


def prepare(args: PrepareOptions) -> tuple[dict, float]:
    """Write the shards and manifest of `args.out`; returns the manifest and the seconds it took."""
    out = Path(args.out)
    clean_stale_temporaries(out)  # first: a folder a killed prepare was replacing is put back
    refs, source = document_refs(args)
    check_apart(out, [("--input", path) for path in input_paths(args, refs)], "--out")
    start = time.perf_counter()
    manifest = replace_folder(out, PREPARED, args.overwrite,
                              lambda tmp: _write_shards(tmp, refs, source, args))
    return manifest, time.perf_counter() - start


def _write_shards(tmp: Path, refs: Iterable, source: dict, args: PrepareOptions) -> dict:
    gpt2_encoding()  # fail early, before any worker starts, if the BPE files cannot be had
    dtype = shards.token_dtype(GPT2_VOCAB_SIZE)
    writers = {name: shards.ShardWriter(tmp, name, dtype, args.shard_tokens) for name in shards.SPLITS}
    skipped: Counter = Counter()
    replaced_chars = files_with_replacements = 0
    start = time.perf_counter()
    bar = tqdm(desc="prepare", unit=" docs", file=sys.stderr, dynamic_ncols=True)
    for index, (tokens, stats) in enumerate(tokenized_documents(refs, args.gutenberg, args.workers)):
        bar.update()
        if stats["replaced"]:
            replaced_chars += stats["replaced"]
            files_with_replacements += 1
        if tokens is None:
            skipped[stats["skipped"]] += 1
            continue
        split = "val" if goes_to_val(index, args.seed, args.val_fraction) else "train"
        writers[split].add_document(tokens)
        tokens_so_far = writers["train"].tokens + writers["val"].tokens
        bar.set_postfix_str(f"{tokens_so_far / (time.perf_counter() - start):,.0f} tokens/s", refresh=False)
    bar.close()
    splits = {name: writer.close() for name, writer in writers.items()}
    if splits["train"]["documents"] + splits["val"]["documents"] == 0:
        reasons = "; ".join(f"{n} {why}" for why, n in skipped.items())
        raise UserError("the corpus is empty: no document left to "
                        f"tokenize{f' ({reasons})' if reasons else ''}")
    split_method = "documents"
    if not splits["train"]["documents"] or not splits["val"]["documents"]:
        split_method = "text"
        splits = split_inside_text(tmp, splits["train"], splits["val"], args.val_fraction, args.shard_tokens)
    manifest = {
        "format": shards.FORMAT,
        "tokenizer": TOKENIZER_NAME,
        "vocab_size": GPT2_VOCAB_SIZE,
        "eot_token": EOT_TOKEN,
        "dtype": dtype.name,
        "splits": splits,
        "source": {
            **source,
            "gutenberg": args.gutenberg,
            "val_fraction": args.val_fraction,
            "seed": args.seed,
            "shard_tokens": args.shard_tokens,
            "split_by": split_method,
            "skipped": dict(skipped),
            "replaced_characters": replaced_chars,
            "files_with_replacements": files_with_replacements,
            "gptdist_version": __version__,
        },
    }
    shards.write_manifest(tmp, manifest)
    return manifest
