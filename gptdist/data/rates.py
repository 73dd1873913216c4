"""The data benchmarks of `python -m gptdist.bench`: the data loader alone, and prepare's throughput."""

import shutil
import time
from pathlib import Path

from .. import config
from ..files.replace import own_temporary_folder
from ..tokenizer import gpt2_encoding
from . import corpus, shards
from .preparation import PrepareOptions, prepare
from .sampler import DistributedStepSampler
from .windows import TokenWindows


def bench_data(args) -> dict:
    """Samples per second from the shards alone: sampler + memmap windows, no model."""
    cfg = config.load(args.config, args.overrides)
    manifest = shards.read_manifest(cfg.data.dir)
    windows = TokenWindows(manifest, "train", cfg.model.context_length, cfg.data.stride)
    batch = cfg.train.micro_batch_size
    sampler = DistributedStepSampler(windows.num_samples, batch, 0, 1, cfg.run.seed)
    samples, start = 0, time.perf_counter()
    while time.perf_counter() - start < args.seconds:
        if sampler.epoch_done():
            sampler.set_epoch(sampler.epoch + 1)
        samples += len(windows.batch(sampler.next_step()))
    seconds = time.perf_counter() - start
    return {"benchmark": "data", "data": cfg.data.dir, "micro_batch_size": batch,
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


def bench_prepare(args) -> dict:
    encoding = gpt2_encoding()  # offline without its files: one line now, before any work
    corpus.verdict_path()
    tmp = own_temporary_folder("gptdist-bench")
    try:
        docs = synthetic_corpus(tmp / "docs", args.megabytes)
        texts = [p.read_text() for p in sorted(docs.iterdir())]
        start = time.perf_counter()
        tokens = sum(len(encoding.encode_ordinary(t)) for t in texts)
        tiktoken_rate = tokens / (time.perf_counter() - start)
        rates = {}
        for workers in sorted({1, args.workers}):
            out = tmp / f"out{workers}"
            manifest, seconds = prepare(PrepareOptions(out=str(out), input=[str(docs)], workers=workers))
            total = sum(s["tokens"] for s in manifest["splits"].values())
            rates[workers] = total / seconds
        return {"benchmark": "prepare", "megabytes": args.megabytes, "documents": len(list(docs.iterdir())),
                "tokens": total, "tiktoken_single_thread_tokens_per_sec": tiktoken_rate,
                "tokens_per_sec_by_workers": rates, "one_worker_vs_tiktoken": rates[1] / tiktoken_rate,
                f"speedup_{args.workers}_workers": rates[args.workers] / rates[1]}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
