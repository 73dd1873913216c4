"""The environment every test process and every process it starts shares, set once before anything runs:
temporary files in memory, GPT-2's tokenizer files from tests/data, one thread a process, and where
torch.compile keeps what it built."""

import os
import shutil
import tempfile
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "tests" / "data"
VERDICT = DATA / "the-verdict.txt"
# tiktoken's cache names (the sha1 of each file's URL) for the GPT-2 files in tests/data/gpt2
TIKTOKEN_NAMES = {"vocab.bpe": "6d1cbeee0f20b3d9449abfede4726ed8212e3aee",
                  "encoder.json": "6c7ea1a7e38e3a7f062df639a5b80947f075ffe6"}


def _in_memory_temp() -> None:
    """Temporary files in memory where the machine has room (/dev/shm): the tests write and fsync
    thousands of shards, checkpoints and logs, which a disk makes the slowest part of many tests."""
    shm = Path("/dev/shm")
    if "TMPDIR" in os.environ or not (shm.is_dir() and os.access(shm, os.W_OK)):
        return
    stats = os.statvfs(shm)
    if stats.f_bavail * stats.f_frsize >= 8 << 30:
        os.environ["TMPDIR"] = str(shm)
        tempfile.tempdir = None  # gettempdir() reads TMPDIR again


def _tiktoken_cache() -> Path:
    """A tiktoken cache holding tests/data/gpt2's files (tiktoken checks their sha256 as it reads them)."""
    cache = Path(tempfile.gettempdir()) / f"gptdist-tests-tiktoken-{os.getuid()}"
    cache.mkdir(exist_ok=True)
    for name, cached in TIKTOKEN_NAMES.items():
        source, target = DATA / "gpt2" / name, cache / cached
        if not target.is_file() or target.stat().st_size != source.stat().st_size:
            shutil.copy(source, f"{target}.{os.getpid()}")
            os.replace(f"{target}.{os.getpid()}", target)
    return cache


_in_memory_temp()
# Where torch.compile keeps what it built, named before anything compiles: inductor sets this variable in
# the process that compiles first, and a test process whose variables differ from its preloaded server's
# would start every command after that in a new interpreter (tests/preloaded.py's IMPORT_PREFIXES).
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR",
                      str(Path(tempfile.gettempdir()) / f"torchinductor-{os.getuid()}"))
os.environ["TIKTOKEN_CACHE_DIR"] = str(_tiktoken_cache())
# Threads that wait for work sleep instead of spinning: the tests' processes outnumber the cores, and a
# spinning OpenMP thread takes a core from another test's process (set before torch's OpenMP starts).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# One thread in every process the tests start, and in the test processes themselves: more test processes
# and ranks run at once than there are cores (pyproject's --numprocesses), and a second thread in each
# would only contend for a core another is using. One thread is also the same arithmetic in every process.
os.environ["OMP_NUM_THREADS"] = "1"
torch.set_num_threads(1)
