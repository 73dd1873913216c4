"""prepare's workers: runs of documents read, tokenized and sent to their split, in worker processes.

A worker gets a `Task` (consecutive documents, about TASK_TOKENS tokens of them) and sends back one
`Tokenized`: each split's tokens concatenated, and the few documents worth naming in the summary. The
main process only writes two arrays a task: on a machine with as many workers as cores, its time is
taken from the workers.
"""

import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from ..errors import UserError
from ..tokenizer import EOT_TOKEN, GPT2_VOCAB_SIZE, gpt2_encoding
from . import corpus, shards
from .workers import ordered_map

TASK_TOKENS = 1 << 18  # tokens a task aims at (about 1 MB of text): every task wakes the main process
# twice, and tasks of 32 documents of 10 kB left two workers 0.05x slower; far larger ones leave a worker
# idle longer at the end
FIRST_TASK_DOCUMENTS = 32  # before any document's length is known
MOST_TASK_DOCUMENTS = 4096  # however short the documents
TOKEN_DTYPE = shards.token_dtype(GPT2_VOCAB_SIZE)


@dataclass(frozen=True)
class Split:
    """How documents are sent to train or val: a seeded coin per document's index in the whole input."""

    seed: int
    val_fraction: float

    def goes_to_val(self, index: int) -> bool:
        """A seeded, order-independent coin for document `index`."""
        digest = hashlib.blake2b(f"{self.seed}:{index}".encode(), digest_size=8).digest()
        return int.from_bytes(digest, "little") / 2**64 < self.val_fraction


@dataclass(frozen=True)
class Task:
    """Consecutive documents as a worker gets them: file paths as plain strings (a Path pickles several
    times slower, and the main process's time is what the workers wait for), or the texts themselves."""

    first: int  # the index of the first document in the whole input
    refs: list[str]
    files: bool  # refs are paths to read, not texts
    gutenberg: bool  # clean Project Gutenberg books
    split: Split


@dataclass
class Tokenized:
    """A task's documents tokenized, each followed by <|endoftext|>, concatenated per split in input order."""

    tokens: dict[str, np.ndarray]  # split name -> its documents' tokens
    documents: dict[str, int]  # split name -> its documents
    count: int  # documents read, those skipped included
    problems: list[tuple[int, dict]]  # (index, stats) of each document skipped or with undecodable bytes


def tokenize_document(ref: str, is_file: bool, gutenberg: bool) -> tuple[np.ndarray | None, dict]:
    """One document (a path to read, or the text itself) to its tokens plus EOT, or None if skipped."""
    replaced, name = 0, ref if is_file else None
    if is_file:
        try:
            text, replaced = corpus.read_text(ref)
        except OSError as err:  # listed as an input moments ago
            raise UserError(f"cannot read the input file {ref} ({err.strerror or err}); restore it, or leave "
                            "it out of --input") from None
        if text is None:
            return None, {"skipped": "not text (NUL bytes)", "replaced": 0, "name": name}
    else:
        text = ref
    if gutenberg:
        text, why = corpus.clean_gutenberg(text)
        if text is None:
            return None, {"skipped": why, "replaced": replaced, "name": name}
    # encode_ordinary's ids straight into a numpy buffer (no Python list): with nothing allowed
    # and nothing disallowed, text that looks like a special token is ordinary text.
    ids = gpt2_encoding().encode_to_numpy(text, allowed_special=set(), disallowed_special=())
    tokens = np.empty(len(ids) + 1, dtype=TOKEN_DTYPE)
    tokens[:-1] = ids
    tokens[-1] = EOT_TOKEN
    return tokens, {"skipped": None, "replaced": replaced, "name": name}


def tokenize_task(task: Task) -> Tokenized:
    pieces: dict[str, list[np.ndarray]] = {name: [] for name in shards.SPLITS}
    problems = []
    for index, ref in enumerate(task.refs, start=task.first):
        tokens, stats = tokenize_document(ref, task.files, task.gutenberg)
        if stats["skipped"] or stats["replaced"]:
            problems.append((index, stats))
        if tokens is not None:
            pieces["val" if task.split.goes_to_val(index) else "train"].append(tokens)
    return Tokenized({name: np.concatenate(arrays) if arrays else np.empty(0, TOKEN_DTYPE)
                      for name, arrays in pieces.items()},
                     {name: len(arrays) for name, arrays in pieces.items()}, len(task.refs), problems)


class TaskSize:
    """Documents per task, so that a task holds about TASK_TOKENS tokens whatever the documents' length
    (posts or books): from the mean length of the documents tokenized so far. The output does not
    depend on it: a document's split is its index's, and the tasks' tokens are written in input order."""

    def __init__(self):
        self.documents = self.tokens = 0

    def saw(self, result: Tokenized) -> None:
        self.documents += result.count
        self.tokens += sum(len(tokens) for tokens in result.tokens.values())

    def documents_per_task(self) -> int:
        if not self.tokens:
            return FIRST_TASK_DOCUMENTS
        return max(1, min(MOST_TASK_DOCUMENTS, round(TASK_TOKENS * self.documents / self.tokens)))


def tasks(refs: Iterable, first: int, gutenberg: bool, split: Split, size: TaskSize) -> Iterator[Task]:
    """The documents `refs` (paths or texts), the first of them document `first` of the input, in tasks
    of `size`'s length at the time."""
    batch: list = []
    for ref in refs:
        if not batch:
            limit = size.documents_per_task()
        batch.append(ref)
        if len(batch) == limit:
            yield _task(batch, first, gutenberg, split)
            first, batch = first + len(batch), []
    if batch:
        yield _task(batch, first, gutenberg, split)


def _task(batch: list, first: int, gutenberg: bool, split: Split) -> Task:
    files = not isinstance(batch[0], str)
    return Task(first, [str(ref) for ref in batch] if files else batch, files, gutenberg, split)


def tokenized(refs: Iterable, first: int, gutenberg: bool, split: Split, workers: int) -> Iterator[Tokenized]:
    """The documents `refs` (the first of them document `first` of the input) tokenized in tasks, in
    order, by `workers` processes (one: this one; a thread beside it was slower, the two taking turns at
    the GIL)."""
    # tiktoken's first encode_to_numpy in a process takes 0.1 s (whatever it builds, even for ""): once
    # here, and forked workers start with it built (four cold workers cost two cores 0.2 s)
    gpt2_encoding().encode_to_numpy("")
    size = TaskSize()
    work = tasks(refs, first, gutenberg, split, size)
    results = map(tokenize_task, work) if workers <= 1 else ordered_map(tokenize_task, work, workers)
    for result in results:
        size.saw(result)
        yield result
