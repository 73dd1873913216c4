"""Mixtures of sources (data.sources), document-aligned windows (data.windows documents) and the document
mask (model.document_mask): their order, their resume, their metrics, their refusals."""

import dataclasses
import json
import shutil
import subprocess
import tracemalloc
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from inputs import metrics_rows, newest_model, train_args
from processes import REPO, kill_job, run_main, torchrun_command, train, wait_for

from gptdist import config
from gptdist.checkpoint import store
from gptdist.data import documents, shards, sources
from gptdist.data.mixture import MixtureSampler, SourceOrder, StrideStream
from gptdist.model import document_mask
from gptdist.model.gpt import GPTModel
from gptdist.tokenizer import EOT_TOKEN


def run_config(verdict_data, paragraphs_data, *overrides, weights=(3, 1)):
    mixture = [{"name": "verdict", "dir": str(verdict_data), "weight": weights[0]},
               {"name": "paragraphs", "dir": str(paragraphs_data), "weight": weights[1]}]
    return config.build({"data": {"sources": mixture, **dict(o.split("=") for o in overrides)},
                         "model": {"context_length": 32}, "run": {"seed": 5}})


def samplers(cfg, world, global_batch=8):
    data = sources.open_sources(cfg)
    return [sources.training_order(cfg, data, global_batch, rank, world, report=False)[0]
            for rank in range(world)]


@pytest.mark.parametrize("windows", ["stride", "documents"])
def test_every_global_batch_follows_the_weights_and_is_the_same_on_any_world_size(verdict_data,
                                                                                    paragraphs_data, windows):
    cfg = run_config(verdict_data, paragraphs_data, f"windows={windows}", weights=(0.7, 0.3))
    (alone,) = samplers(cfg, 1)
    steps = [alone.next_step() for _ in range(200)]
    drawn = np.array([[sum(which == i for which, _ in step) for i in range(2)] for step in steps]).sum(0)
    assert abs(drawn[0] / drawn.sum() - 0.7) < 0.02 and abs(drawn[1] / drawn.sum() - 0.3) < 0.02
    assert alone.tokens_by_source(32) == {"verdict": drawn[0] * 32, "paragraphs": drawn[1] * 32}
    assert all(len({which for which, _ in step}) == 2 for step in steps[:20])  # both in every batch
    for world in (2, 4):  # each rank's slice, side by side, is the one-process global batch
        ranks = samplers(cfg, world)
        for step in steps[:30]:
            assert [row for sampler in ranks for row in sampler.next_step()] == step
    # a resume (here: on 2 processes, from the 1-process state at step 200) continues the same order
    state = alone.state_dict()
    expected = [alone.next_step() for _ in range(5)]
    moved = samplers(cfg, 2)
    for sampler in moved:
        sampler.load_state_dict(state)
    assert [[row for sampler in moved for row in sampler.next_step()] for _ in range(5)] == expected


def test_a_mixture_holds_no_array_that_grows_with_its_sources():
    huge = SimpleNamespace(num_samples=10**12, stride=1024, window=1025, total_tokens=10**15)
    orders = [SourceOrder(name, weight, StrideStream(huge, seed))
              for name, weight, seed in (("a", 2.0, 1), ("b", 1.0, 2))]
    tracemalloc.start()
    sampler = MixtureSampler(orders, 64, 1, 4, seed=0)
    rows = [sampler.next_step() for _ in range(100)]
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 2**20
    starts = {start for step in rows for _, ranges in step for start, _ in ranges}
    assert len(starts) == 1600 and max(starts) > 10**14  # distinct windows, spread over the sources


def test_document_windows_start_at_documents_and_resume_exactly(paragraphs_data):
    manifest = shards.read_manifest(paragraphs_data)
    windows = sources.TokenWindows(manifest, "train", 32, 32)
    tokens = windows.tokens(0, windows.total_tokens)
    document_starts = np.concatenate([[0], np.flatnonzero(tokens == EOT_TOKEN) + 1])
    span = documents.block_span(windows)
    stream = documents.DocumentStream(windows, EOT_TOKEN, seed=3)
    epoch = stream.take(stream.estimate()["windows_per_epoch"])
    assert stream.state_dict() == {"epoch": 1, "group": 0, "offset": 0}  # exact: it packs every block here
    covered = 0
    for ranges in epoch:
        for start, _ in ranges:  # the window's first token, and that of each piece packed after it:
            document = document_starts[np.searchsorted(document_starts, start, side="right") - 1]
            # a document's first token; else a document longer than a window, continued every 32 tokens
            # (from its start, or from the block boundary where it went on past a window's worth)
            boundary = max(document, start // span * span)
            assert (start - document) % 32 == 0 or (start - boundary) % 32 == 0, (start, document)
        assert sum(length for _, length in ranges) == 33
        covered += 33
    assert 0.9 * windows.total_tokens < covered < 1.1 * windows.total_tokens
    rows = windows.rows(epoch[:8])
    first = rows[:, 0]
    assert ((first != EOT_TOKEN) | (rows[:, 1] != EOT_TOKEN)).all()
    # a resume anywhere continues the same windows; the next epoch is another order
    uninterrupted = documents.DocumentStream(windows, EOT_TOKEN, seed=3)
    expected = uninterrupted.take(500)
    resumed = documents.DocumentStream(windows, EOT_TOKEN, seed=3)
    got = resumed.take(77)
    again = documents.DocumentStream(windows, EOT_TOKEN, seed=3)
    again.load_state_dict(resumed.state_dict())
    assert got + again.take(423) == expected
    assert expected[:100] != expected[len(epoch) : len(epoch) + 100]


def test_packing_is_best_fit_and_counts_what_it_crops():
    rows, cropped = documents.pack([(0, 5), (10, 3), (20, 4), (30, 2), (40, 6)], 8)
    assert rows == [[(40, 6), (30, 2)], [(0, 5), (10, 3)], [(20, 4)]][:2] and cropped == 4  # 4 left: dropped
    rows, cropped = documents.pack([(0, 7), (10, 3), (20, 3), (30, 3)], 8)
    assert rows == [[(0, 7), (10, 1)], [(20, 3), (30, 3)]][:1] and cropped == 2 + 6


@pytest.mark.parametrize("positions", ["learned", "rotary"])
def test_with_the_mask_a_document_is_not_changed_by_another_in_its_window(positions):
    cfg = config.build({"model": {"emb_dim": 32, "n_heads": 2, "n_layers": 2, "context_length": 32,
                                  "drop_rate": 0.0, "document_mask": True, "positions": positions}}).model
    torch.manual_seed(0)
    masked = GPTModel(cfg).eval()
    plain = GPTModel(dataclasses.replace(cfg, document_mask=False)).eval()
    plain.load_state_dict(masked.state_dict())
    ours, one, other = (torch.randint(0, 50000, (1, n)) for n in (12, 10, 10))
    eot = torch.tensor([[EOT_TOKEN]])
    with_one, with_other = torch.cat([one, eot, ours], 1), torch.cat([other, eot, ours], 1)
    logits = {name: [model(x)[0, 11:, :50257] for x in (with_one, with_other)]
              for name, model in (("masked", masked), ("plain", plain))}
    assert torch.equal(*logits["masked"])
    assert not torch.allclose(*logits["plain"], atol=1e-3)  # without the mask, attention reads the other one
    assert torch.allclose(masked(with_one)[0, :11, :50257], plain(with_one)[0, :11, :50257], atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("compiled", [False, True], ids=["eager-model", "compiled-model"])
def test_the_flex_attention_path_masks_as_the_boolean_mask_does(monkeypatch, compiled):
    """The CUDA path of model.document_mask (a FlexAttention BlockMask, FlexAttention compiled alone or in
    the model's graph as under train.compile), run on this CPU, where FlexAttention runs forward (not
    backward): the BlockMask is the boolean mask's."""
    cfg = config.build({"model": {"emb_dim": 64, "n_heads": 4, "n_layers": 2, "context_length": 128,
                                  "drop_rate": 0.0, "document_mask": True, "positions": "rotary"}}).model
    torch.manual_seed(0)
    model = GPTModel(cfg).eval()
    windows = torch.randint(0, 50000, (2, 128))
    windows[0, [10, 40, 41, 90]] = EOT_TOKEN  # documents of 11, 30, 1, 49 and 37 tokens; one of 100 and 28
    windows[1, 99] = EOT_TOKEN
    with torch.no_grad():
        boolean = model(windows)[..., :50257]
        monkeypatch.setattr(document_mask, "uses_flex", lambda device, dropout: dropout == 0.0)
        assert not isinstance(document_mask.make(windows, EOT_TOKEN, 0.0), torch.Tensor)  # a BlockMask
        flex = (torch.compile(model) if compiled else model)(windows)[..., :50257]
    assert torch.allclose(flex, boolean, atol=1e-5)


MIXTURE = ("train.max_steps=24", "checkpoint.interval=4", "checkpoint.keep=10", "eval.interval=12",
           "model.drop_rate=0.1", "data.windows=documents", "model.document_mask=true")


def mixture_args(verdict_data, paragraphs_data, out, *overrides):
    sources_yaml = (f"data.sources=[{{name: verdict, dir: {verdict_data}, weight: 1}}, "
                    f"{{name: paragraphs, dir: {paragraphs_data}, weight: 2}}]")
    return train_args(verdict_data, out, sources_yaml, *MIXTURE, *overrides)


@pytest.mark.slow
def test_a_killed_mixture_resumes_bit_for_bit_and_continues_its_order_on_one_process(tmp_path, verdict_data,
                                                                                    paragraphs_data):
    whole = tmp_path / "whole"
    result = train(2, *mixture_args(verdict_data, paragraphs_data, whole))
    assert "of tokens cropped" in result.stdout
    rows = metrics_rows(whole)
    steps = [row for row in rows if "loss" in row]
    assert all(set(row["tokens_by_source"]) == {"verdict", "paragraphs"} for row in steps)
    final = steps[-1]["tokens_by_source"]
    assert final["paragraphs"] == 2 * final["verdict"] and sum(final.values()) == steps[-1]["tokens_seen"]
    evaluations = [row for row in rows if "val_loss" in row]
    by_source = evaluations[-1]["val_loss_by_source"]
    weighted = (by_source["verdict"] + 2 * by_source["paragraphs"]) / 3
    assert evaluations[-1]["val_loss"] == pytest.approx(weighted)

    killed = tmp_path / "killed"
    proc = subprocess.Popen(torchrun_command(2, *mixture_args(verdict_data, paragraphs_data, killed)),
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    wait_for((killed / "checkpoints" / "step_00000008.pt").exists, proc)
    kill_job(proc, killed)
    assert not (killed / "checkpoints" / "step_00000024.pt").exists(), "the run ended before the kill"
    moved = tmp_path / "moved"
    shutil.copytree(killed, moved)
    for later in store.checkpoint_paths(moved / "checkpoints")[2:]:  # from step 8 on (4, 8 kept)
        later.unlink()
    train(2, *mixture_args(verdict_data, paragraphs_data, killed))
    expected, got = newest_model(whole), newest_model(killed)
    assert all(torch.equal(expected[k], got[k]) for k in expected)

    # 2 -> 1: the same global batches (accumulated) in the same order, to the same place (at step 12:
    # the order does not depend on the run's length)
    result = run_main("gptdist.train", *mixture_args(verdict_data, paragraphs_data, moved,
                                                     "train.grad_accum_steps=2", "train.max_steps=12"))
    assert result.returncode == 0, result.stderr[-3000:]
    final_moved = store.read(store.checkpoint_paths(moved / "checkpoints")[-1])
    final_whole = store.read(whole / "checkpoints" / "step_00000012.pt")
    assert final_moved["sampler"] == final_whole["sampler"]  # (the weights differ: dropout's streams do)
    assert final_moved["progress"] == final_whole["progress"]


def test_sources_of_another_vocabulary_or_a_changed_mixture_are_refused_in_one_line(tmp_path, verdict_data,
                                                                                   paragraphs_data):
    other = tmp_path / "other"
    shutil.copytree(paragraphs_data, other)
    manifest = json.loads((other / "manifest.json").read_text())
    (other / "manifest.json").write_text(json.dumps({**manifest, "tokenizer": "cl100k_base"}))
    mixture = f"data.sources=[{{name: a, dir: {verdict_data}}}, {{name: b, dir: {other}}}]"
    result = run_main("gptdist.train", *train_args(verdict_data, tmp_path / "run", mixture))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        f"gptdist.train: error: data.sources[1] (b) at {other} was prepared with tokenizer 'cl100k_base' but "
        f"data.sources[0] (a) at {verdict_data} with 'gpt2': a run reads one vocabulary; prepare every "
        "source with the same tokenizer")
    assert not (tmp_path / "run").exists()
    # a run of one source resumed as a mixture: its order is another; one line, nothing written
    plain = tmp_path / "plain"
    assert run_main("gptdist.train", *train_args(verdict_data, plain, "train.max_steps=2")).returncode == 0
    before = sorted(p.name for p in (plain / "checkpoints").iterdir())
    result = run_main("gptdist.train", *train_args(
        verdict_data, plain, "train.max_steps=4",
        f"data.sources=[{{name: a, dir: {verdict_data}}}, {{name: b, dir: {paragraphs_data}}}]"))
    assert result.returncode == 2 and "data.sources, data.windows or the data changed" in result.stderr
    assert sorted(p.name for p in (plain / "checkpoints").iterdir()) == before


def test_every_config_of_configs_loads_the_mixture_among_them():
    loaded = {path.name: config.load(str(path), []) for path in sorted((REPO / "configs").glob("*.yaml"))}
    mixture = loaded["gutenberg-fineweb-mixture.yaml"].data.sources
    assert [(s.name, s.weight) for s in mixture] == [("gutenberg", 0.3), ("fineweb-edu", 0.7)]
