"""The data benchmarks of `python -m gptdist.bench`: the data loader alone, and prepare's throughput beside
tiktoken's."""

import shutil
import statistics
import time
from pathlib import Path

from .. import config
from ..files.replace import own_temporary_folder
from ..tokenizer import gpt2_encoding
from . import corpus, sources
from .preparation import PrepareOptions, prepare
from .workers import start_context


def bench_data(args) -> dict:
    """Samples per second from the shards alone: the run's order (one source, a mixture, document windows)
    and its windows read, no model."""
    cfg = config.load(args.config, args.overrides)
    data = sources.open_sources(cfg)
    batch = cfg.train.micro_batch_size
    sampler, reader = sources.training_order(cfg, data, batch, 0, 1, report=False)
    samples, start = 0, time.perf_counter()
    while time.perf_counter() - start < args.seconds:
        samples += len(reader.batch(sampler.next_step()))
    seconds = time.perf_counter() - start
    return {"benchmark": "data", "data": [str(source.manifest.folder) for source in data],
            "windows": cfg.data.windows, "micro_batch_size": batch,
            "context_length": cfg.model.context_length, "samples_per_sec": samples / seconds,
            "tokens_per_sec": samples * (cfg.model.context_length + 1) / seconds,
            "ms_per_batch": 1000 * seconds * batch / samples}


def synthetic_corpus(folder: Path, megabytes: int) -> Path:
    """Many documents of real English: The Verdict cut into paragraphs, repeated to `megabytes`."""
    paragraphs = [p for p in corpus.verdict_path().read_text().split("\n\n") if p.strip()]
    folder.mkdir(parents=True, exist_ok=True)
    written, index = 0, 0
    while written < megabytes * 2**20:
        text = "\n\n".join(paragraphs[(index + k) % len(paragraphs)] for k in range(40))
        path = folder / f"doc{index:06d}.txt"
        path.write_text(text)
        written += len(text.encode())
        index += 1
    return folder


def _count_tokens(texts: list[str]) -> int:
    encoding = gpt2_encoding()
    return sum(len(encoding.encode_ordinary(text)) for text in texts)


def tiktoken_rate(texts: list[str], workers: int) -> float:
    """tiktoken's raw encoding rate (tokens/s) over `workers` processes, each encoding its share of
    `texts` in memory: what prepare would reach if reading, splitting and writing cost nothing."""
    if workers == 1:
        start = time.perf_counter()
        return _count_tokens(texts) / (time.perf_counter() - start)
    chunks = [texts[k :: 8 * workers] for k in range(8 * workers)]  # few messages, no worker idle long
    with start_context().Pool(workers) as pool:
        pool.map(_count_tokens, [texts[:1]] * workers)  # every process started, its tokenizer loaded
        start = time.perf_counter()
        tokens = sum(pool.map(_count_tokens, chunks, chunksize=1))
        return tokens / (time.perf_counter() - start)


def worker_counts(most: int) -> list[int]:
    """1, 2, 4, ... and `most` itself."""
    return sorted({most, *(2**k for k in range(most.bit_length()) if 2**k <= most)})


def _prepared(docs: Path, out: Path, workers: int) -> tuple[int, float]:
    """(tokens, seconds) of one prepare of `docs`, its output removed."""
    manifest, seconds = prepare(PrepareOptions(out=str(out), input=[str(docs)], workers=workers))
    shutil.rmtree(out)
    return sum(split["tokens"] for split in manifest["splits"].values()), seconds


def bench_prepare(args) -> dict:
    """prepare's tokens/s beside tiktoken's raw rate over the same number of processes, at each worker
    count, on a synthetic corpus of many documents: `args.repeats` pairs of runs back to back (which goes
    first alternating), the median of the pairs' ratios (this machine's speed drifts by a quarter from
    minute to minute: a pair sees the same machine, the best of each side may not)."""
    gpt2_encoding()  # offline without its files: one line now, before any work
    corpus.verdict_path()
    tmp = own_temporary_folder("gptdist-bench")
    try:
        docs = synthetic_corpus(tmp / "docs", args.megabytes)
        texts = [p.read_text() for p in sorted(docs.iterdir())]
        rows = []
        for workers in worker_counts(args.workers):
            raw, rates = [], []
            for repeat in range(args.repeats):
                if repeat % 2 == 0:
                    raw.append(tiktoken_rate(texts, workers))
                tokens, seconds = _prepared(docs, tmp / "out", workers)
                rates.append(tokens / seconds)
                if repeat % 2 == 1:
                    raw.append(tiktoken_rate(texts, workers))
            ratios = [rate / base for rate, base in zip(rates, raw, strict=True)]
            rows.append({"workers": workers, "prepare_vs_tiktoken": statistics.median(ratios),
                         "pairs": [round(ratio, 3) for ratio in ratios],
                         "prepare_tokens_per_sec": max(rates), "tiktoken_tokens_per_sec": max(raw)})
        return {"benchmark": "prepare", "megabytes": args.megabytes, "documents": len(texts),
                "tokens": tokens, "by_workers": rows,
                "lowest_prepare_vs_tiktoken": min(row["prepare_vs_tiktoken"] for row in rows)}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
