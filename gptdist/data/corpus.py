"""Where documents come from: local files, The Verdict, Project Gutenberg, Hugging Face datasets.

A source yields *document references*, cheap to send to a worker process: a file path
(read, cleaned and tokenized in the worker, so that a mirror of tens of thousands of
books is never held in the main process) or the text itself (Hugging Face rows).
"""

import glob
import os
import re
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from ..errors import UserError
from ..files.download import cache_dir, download

VERDICT_URL = (
    "https://raw.githubusercontent.com/rasbt/LLMs-from-scratch/main/ch02/01_main-chapter-code/the-verdict.txt"
)
VERDICT_SIZE = 20479
VERDICT_SHA256 = "b41e41a68f0398a3154ae69e2e4c0e2694e17fe0d66730536837f1b01935b31f"
DATASETS = ("verdict",)
READ_BYTES = 1 << 22  # a read's most bytes
LOCAL_HF_BUILDERS = {"parquet": "parquet", "json": "json", "jsonl": "json", "csv": "csv", "text": "text"}


def verdict_path() -> Path:
    """The Verdict, downloaded once into the cache and verified by size and sha256."""
    return download([VERDICT_URL], cache_dir() / "the-verdict.txt", VERDICT_SIZE, VERDICT_SHA256)


def dataset_paths(name: str) -> list[Path]:
    if name == "verdict":
        return [verdict_path()]
    raise UserError(f"unknown dataset {name!r}; known datasets: {', '.join(DATASETS)}")


def expand_inputs(inputs: list[str]) -> list[Path]:
    """Files as given, directories walked recursively for *.txt (sorted), globs expanded (sorted)."""
    files: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_file():
            files.append(path)
        elif path.is_dir():
            found = [Path(p) for p in sorted(_text_files(str(path)), key=_parts)]
            if not found:
                raise UserError(f"input folder {path} holds no *.txt files")
            files.extend(found)
        elif glob.has_magic(item):
            found = sorted(Path(p) for p in glob.glob(item, recursive=True) if os.path.isfile(p))
            if not found:
                raise UserError(f"input pattern {item!r} matches no files")
            files.extend(found)
        else:
            raise UserError(f"input {path} does not exist")
    return files


def _text_files(folder: str) -> Iterator[str]:
    """The *.txt files under `folder` and its subfolders (not those behind a link to a folder, as
    Path.rglob), unsorted: one scandir per folder, whose entries know their type without a stat each (an
    input of 10^5 files is listed in a fraction of a second)."""
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                yield from _text_files(entry.path)
            elif entry.name.endswith(".txt") and entry.is_file():
                yield entry.path


def _parts(path: str) -> list[str]:
    """The order in which Paths sort (by their parts), for path strings."""
    return path.split(os.sep)


def _read_bytes(path: str | Path) -> bytes:
    """A file's bytes in as few system calls as can be: a buffered open() costs a 10 kB file about half
    again the time of reading it, and prepare reads every document once."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        chunks = []
        while chunk := os.read(descriptor, READ_BYTES):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(descriptor)


def read_text(path: str | Path) -> tuple[str | None, int]:
    """A file's text as UTF-8; undecodable bytes become U+FFFD and are counted. None for a file that is not
    text (it holds NUL bytes, as binary formats do and text never does)."""
    data = _read_bytes(path)
    if b"\x00" in data:
        return None, 0
    try:
        return data.decode("utf-8"), 0
    except UnicodeDecodeError:
        text = data.decode("utf-8", errors="replace")
        return text, text.count("\ufffd") - data.count("\ufffd".encode())


# --- Project Gutenberg -------------------------------------------------------------

# Marker lines that open and close the licence boilerplate, current and older variants.
_GUTENBERG_START = re.compile(
    r"^\s*\*{3}\s*START OF (THE|THIS) PROJECT GUTENBERG"
    r"|^\s*\*END\*THE SMALL PRINT!"
    r"|^\s*\*{3}\s*START OF THE COPYRIGHTED PROJECT GUTENBERG",
    re.IGNORECASE,
)
_GUTENBERG_END = re.compile(
    r"^\s*\*{3}\s*END OF (THE|THIS) PROJECT GUTENBERG"
    r"|^\s*End of (the |this )?Project Gutenberg"
    r"|^\s*\*{3}\s*END OF THE COPYRIGHTED PROJECT GUTENBERG",
    re.IGNORECASE,
)
_BLANK_RUNS = re.compile(r"\n\s*\n")
MIN_ASCII_SHARE = 0.9


def strip_gutenberg_boilerplate(text: str) -> str:
    """The text between the last START marker line and the first END marker line after it."""
    lines = text.splitlines()
    start = 0
    for i, line in enumerate(lines):
        if _GUTENBERG_START.match(line):
            start = i + 1
    end = len(lines)
    for i in range(start, len(lines)):
        if _GUTENBERG_END.match(lines[i]):
            end = i
            break
    return "\n".join(lines[start:end])


def clean_gutenberg(text: str) -> tuple[str | None, str | None]:
    """(cleaned text, None), or (None, why it is skipped)."""
    body = strip_gutenberg_boilerplate(text).strip()
    if not body:
        return None, "empty after removing the licence text"
    if sum(ch.isascii() for ch in body) < MIN_ASCII_SHARE * len(body):
        return None, f"not mostly English (ASCII share < {MIN_ASCII_SHARE:.0%})"
    return _BLANK_RUNS.sub("\n\n", body), None


# --- Hugging Face datasets -------------------------------------------------------------


RETRIES = 5  # transient errors in a row that a streamed dataset survives
BACKOFF_SECONDS = 2.0  # the first wait after one; each next waits twice as long
NETWORK_MODULES = ("httpx", "requests", "urllib3", "aiohttp", "huggingface_hub", "fsspec")


def transient(err: Exception) -> bool:
    """Whether an error reading a stream is the network's (worth another try), not the data's or ours."""
    local = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)
    if isinstance(err, OSError):  # ConnectionError and TimeoutError are OSErrors too
        return not isinstance(err, local)
    return type(err).__module__.split(".")[0] in NETWORK_MODULES


def _said(err: Exception) -> str:
    """An error as one line: its type and the first line of its message."""
    return f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"


def resilient_rows(open_rows: Callable[[int], Iterator], position: int, what: str,
                   retries: int = RETRIES, backoff: float = BACKOFF_SECONDS) -> Iterator:
    """The rows of `open_rows(position)` on; after a transient error, opened again at the row it had
    reached, after a wait that doubles with each failure in a row (`retries` at most)."""
    failures = 0
    while True:
        try:
            for row in open_rows(position):
                yield row
                position += 1
                failures = 0
            return
        except Exception as err:  # a stream's errors are many types (datasets, fsspec, the hub client)
            said = _said(err)
            if not transient(err) or failures == retries:
                tries = f" after {failures + 1} tries" if failures else ""
                raise UserError(f"reading {what} failed at row {position:,}{tries} ({said}); run the same "
                                "command again to resume from the last progress record") from None
            wait = backoff * 2**failures
            failures += 1
            print(f"warning: reading {what} failed at row {position:,} ({said}); trying again in "
                  f"{wait:.0f} s ({failures}/{retries})", file=sys.stderr)
            time.sleep(wait)


def hf_texts(name: str, config: str | None, split: str, column: str,
             data_files: list[str] | None, start: int = 0) -> Iterator[str]:
    """Rows of a dataset's text column from row `start` on, streamed: a 100 GB corpus never sits in
    memory, and a transient network error costs a wait, not the run (`resilient_rows`)."""
    try:
        import datasets
    except ImportError:
        raise UserError("--hf needs the datasets package: pip install 'gptdist[hf]'") from None
    builder = LOCAL_HF_BUILDERS.get(name)
    if builder and not data_files:
        raise UserError(f"--hf {name} reads local files: give them with --data-files")

    def rows_from(position: int) -> Iterator[dict]:
        if builder:
            stream = datasets.load_dataset(builder, data_files=data_files, split=split, streaming=True)
        else:
            stream = datasets.load_dataset(name, config, split=split, streaming=True)
        return iter(stream.skip(position) if position else stream)

    try:
        rows = rows_from(start)
        first = next(rows, None)
    except Exception as err:  # the hub client raises many types: offline, not found, bad config
        raise UserError(
            f"cannot load Hugging Face dataset {name!r} (split {split!r}): {_said(err)} -- offline, use a "
            "local copy with --hf parquet|json|csv --data-files FILES"
        ) from None
    if first is None:
        return
    if column not in first:
        raise UserError(f"dataset {name!r} has no column {column!r}; its columns: {', '.join(first)} "
                        "(--text-column)")
    yield first[column]
    opened = [rows]  # the stream already open goes on; a reopened one starts where it failed

    def reopen(position: int) -> Iterator[dict]:
        return opened.pop() if opened else rows_from(position)

    for row in resilient_rows(reopen, start + 1, f"dataset {name!r}"):
        yield row[column]
