"""The shard format: flat little-endian token arrays plus a manifest.

A prepared folder holds `train-00000.bin`, `train-00001.bin`, ..., `val-00000.bin`, ...
(no header: `np.memmap(path, dtype, mode="r")` reads one) and `manifest.json`:

    {"format": "gptdist-shards/1", "tokenizer": "gpt2", "vocab_size": 50257,
     "eot_token": 50256, "dtype": "uint16",
     "splits": {"train": {"tokens": N, "documents": D,
                          "shards": [{"path": "train-00000.bin", "tokens": n, "sha256": "..."}]},
                "val": {...}},
     "source": {...what produced it...}}
"""

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import UserError

FORMAT = "gptdist-shards/1"
MANIFEST = "manifest.json"
SPLITS = ("train", "val")


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 holds GPT-2's 50,257 ids; larger vocabularies need uint32."""
    return np.dtype("<u2") if vocab_size <= 1 << 16 else np.dtype("<u4")


class ShardWriter:
    """Appends token arrays to one split's shards, starting a new shard every `shard_tokens`."""

    def __init__(self, folder: Path, split: str, dtype: np.dtype, shard_tokens: int):
        self.folder, self.split, self.dtype, self.shard_tokens = folder, split, dtype, shard_tokens
        self.shards: list[dict] = []
        self.tokens = 0
        self.documents = 0
        self._file = None
        self._hash = None
        self._in_shard = 0

    def _open_next(self) -> None:
        name = f"{self.split}-{len(self.shards):05d}.bin"
        self._file = open(self.folder / name, "wb")
        self._hash = hashlib.sha256()
        self._in_shard = 0
        self.shards.append({"path": name, "tokens": 0, "sha256": None})

    def _close_current(self) -> None:
        if self._file is not None:
            self._file.close()
            self.shards[-1].update(tokens=self._in_shard, sha256=self._hash.hexdigest())
            self._file = None

    def write(self, tokens: np.ndarray) -> None:
        tokens = tokens.astype(self.dtype, copy=False)
        while len(tokens):
            if self._file is None:
                self._open_next()
            room = self.shard_tokens - self._in_shard
            head, tokens = tokens[:room], tokens[room:]
            data = memoryview(head).cast("B")  # the array's own bytes, not a copy
            self._file.write(data)
            self._hash.update(data)
            self._in_shard += len(head)
            self.tokens += len(head)
            if self._in_shard == self.shard_tokens:
                self._close_current()

    def add_documents(self, tokens: np.ndarray, documents: int = 1) -> None:
        """Append `documents` whole documents, their tokens concatenated."""
        self.write(tokens)
        self.documents += documents

    def close(self) -> dict:
        """Finish the split and return its manifest entry."""
        self._close_current()
        return {"tokens": self.tokens, "documents": self.documents, "shards": self.shards}

    def state_dict(self) -> dict:
        """Where the split is, its open shard's bytes on disk first (a resume continues from here:
        data/progress.py)."""
        if self._file is not None:
            self._file.flush()
            os.fsync(self._file.fileno())
        return {"tokens": self.tokens, "documents": self.documents, "shards": [dict(s) for s in self.shards],
                "in_shard": self._in_shard if self._file is not None else None}

    def load_state_dict(self, state: dict) -> None:
        """Continue from `state`: the open shard cut back to what it held then, and hashed again."""
        self.tokens, self.documents = state["tokens"], state["documents"]
        self.shards = [dict(s) for s in state["shards"]]
        if state["in_shard"] is None:
            return
        path = self.folder / self.shards[-1]["path"]
        size = state["in_shard"] * self.dtype.itemsize
        if not path.is_file() or path.stat().st_size < size:
            raise FileNotFoundError(f"{path} holds less than its progress record says")
        with open(path, "r+b") as f:
            f.truncate(size)
        self._hash = hashlib.sha256()
        with open(path, "rb") as f:
            while block := f.read(1 << 24):
                self._hash.update(block)
        self._file, self._in_shard = open(path, "ab"), state["in_shard"]


@dataclass
class Manifest:
    """A checked manifest.json of a prepared folder."""

    folder: Path
    vocab_size: int
    eot_token: int
    dtype: np.dtype
    splits: dict
    raw: dict

    def shard_paths(self, split: str) -> list[Path]:
        return [self.folder / s["path"] for s in self.splits[split]["shards"]]

    def shard_lengths(self, split: str) -> list[int]:
        return [s["tokens"] for s in self.splits[split]["shards"]]

    def check_vocabulary(self, vocab_size: int, whose: str = "model.vocab_size") -> None:
        """Refuse a model whose vocabulary is not the one the shards were tokenized for (`whose` says
        where the model's vocabulary comes from)."""
        if self.vocab_size != vocab_size:
            raise UserError(
                f"{self.folder} was tokenized for a vocabulary of {self.vocab_size} tokens but {whose} is "
                f"{vocab_size}; prepare the data with the model's tokenizer"
            )


def files_not_prepared(folder: Path) -> list[str]:
    """The entries of `folder` that are not its manifest or a shard it lists (all of them without a
    manifest)."""
    entries = sorted(entry.name for entry in folder.iterdir())
    try:
        raw = json.loads((folder / MANIFEST).read_text())
        listed = {shard["path"] for split in raw["splits"].values() for shard in split["shards"]}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return entries
    if raw.get("format") != FORMAT:
        return entries
    return [name for name in entries if name != MANIFEST and name not in listed]


def write_manifest(folder: Path, manifest: dict) -> None:
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")


def read_manifest(folder: str | Path) -> Manifest:
    """Read and check a prepared folder: format, dtype and every shard's size on disk.

    Cheap enough for every start of training; `verify` also hashes the contents.
    """
    folder = Path(folder)
    path = folder / MANIFEST
    if not folder.is_dir():
        raise UserError(f"data folder {folder} does not exist; create it with python -m gptdist.prepare")
    if not path.is_file():
        raise UserError(f"{path} is missing: {folder} is not a prepared data folder (python -m "
                        "gptdist.prepare)")
    try:
        raw = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"{path} is not valid JSON ({err}); prepare the data again") from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        found = raw.get("format") if isinstance(raw, dict) else None
        raise UserError(f"{path}: unknown format {found!r}, expected {FORMAT!r}; prepare the data again")
    try:
        dtype = np.dtype(raw["dtype"]).newbyteorder("<")
        manifest = Manifest(folder, int(raw["vocab_size"]), int(raw["eot_token"]), dtype, raw["splits"], raw)
        for split in SPLITS:
            for shard in manifest.splits[split]["shards"]:
                name = shard["path"]
                if not isinstance(name, str) or name in ("", ".", "..") or Path(name).name != name:
                    raise UserError(f"{path}: shard path {name!r} is not a file name inside {folder}; "
                                    "prepare the data again")
                shard_path = folder / name
                expected = int(shard["tokens"]) * dtype.itemsize
                if not shard_path.is_file():
                    raise UserError(f"shard {shard_path} listed in {path} is missing")
                if shard_path.stat().st_size != expected:
                    raise UserError(
                        f"shard {shard_path} is {shard_path.stat().st_size} bytes, the manifest says "
                        f"{expected}: it is truncated or altered; prepare the data again"
                    )
    except (KeyError, TypeError, ValueError) as err:
        problem = f"{type(err).__name__}: {err}"
        raise UserError(f"{path} is malformed ({problem}); prepare the data again") from None
    return manifest


def verify(folder: str | Path) -> Manifest:
    """Full check of a prepared folder: sizes, sha256 of every shard, token ids below vocab_size.

    Shards are read in blocks with plain reads, not mapped: memory stays flat whatever their size.
    """
    manifest = read_manifest(folder)
    block_bytes = (1 << 24) * manifest.dtype.itemsize
    for split in SPLITS:
        for shard, path in zip(manifest.splits[split]["shards"], manifest.shard_paths(split), strict=True):
            digest = hashlib.sha256()
            with open(path, "rb") as f:
                while data := f.read(block_bytes):
                    digest.update(data)
                    block = np.frombuffer(data, dtype=manifest.dtype)
                    if int(block.max()) >= manifest.vocab_size:
                        raise UserError(
                            f"shard {path} holds token id {int(block.max())} >= vocab_size "
                            f"{manifest.vocab_size}"
                        )
            if digest.hexdigest() != shard["sha256"]:
                raise UserError(f"shard {path} does not match its sha256 in the manifest: it was altered")
    return manifest
