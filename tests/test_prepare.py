import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from environment import VERDICT
from processes import PYTHON, forked_pid, run_main, run_module, wait_for_exit

from gptdist.data import corpus, shards, tokenizing
from gptdist.errors import UserError
from gptdist.tokenizer import EOT_TOKEN, decode, encode


def load_split(folder, split):
    manifest = shards.read_manifest(folder)
    parts = [np.fromfile(p, dtype=manifest.dtype) for p in manifest.shard_paths(split)]
    return np.concatenate(parts) if parts else np.zeros(0, manifest.dtype)


def prepare(*args, env=None):
    """gptdist.prepare in this process; as a process of its own where it needs its own environment or
    tokenizes in several worker processes (this process has threads that a fork would not take along)."""
    workers = str(args[args.index("--workers") + 1]) if "--workers" in args else None
    if env is not None or workers not in (None, "1"):
        return run_module("gptdist.prepare", *args, env=env)
    return run_main("gptdist.prepare", *args, *(["--workers", "1"] if workers is None else []))


def write_docs(folder, count, words=40):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    vocab = ["alpha", "beta", "gamma", "delta", "<|endoftext|>", "epsilon", "zeta", "eta", "\n"]
    texts = []
    for i in range(count):
        text = f"Document {i}. " + " ".join(rng.choice(vocab, size=words))
        (folder / f"doc{i:04d}.txt").write_text(text)
        texts.append(text)
    return texts


def test_verdict_round_trip(verdict_data):
    manifest = json.loads((verdict_data / "manifest.json").read_text())
    assert manifest["format"] == "gptdist-shards/1"
    assert manifest["vocab_size"] == 50257 and manifest["eot_token"] == EOT_TOKEN
    assert manifest["dtype"] == "uint16"
    assert manifest["source"]["split_by"] == "text"  # one document: split inside the text
    train, val = load_split(verdict_data, "train"), load_split(verdict_data, "val")
    assert len(train) + len(val) == 5145 + 1  # 5,145 tokens and one EOT
    assert len(val) == round(0.1 * 5146) and val[-1] == EOT_TOKEN
    both = np.concatenate([train, val])
    assert (both == EOT_TOKEN).sum() == 1
    assert decode(both[both != EOT_TOKEN].tolist()) == VERDICT.read_text(encoding="utf-8")


def test_one_eot_per_document_and_special_tokens_are_text(tmp_path):
    texts = write_docs(tmp_path / "docs", 30)
    result = prepare("--input", tmp_path / "docs", "--out", tmp_path / "out", "--workers", "1")
    assert result.returncode == 0, result.stderr
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["source"]["split_by"] == "documents"
    train, val = load_split(tmp_path / "out", "train"), load_split(tmp_path / "out", "val")
    assert (train == EOT_TOKEN).sum() + (val == EOT_TOKEN).sum() == 30
    assert manifest["splits"]["train"]["documents"] + manifest["splits"]["val"]["documents"] == 30
    assert manifest["splits"]["val"]["documents"] >= 1
    # "<|endoftext|>" inside a document is ordinary text, never the EOT id
    expected = sum(len(encode(t)) + 1 for t in texts)
    assert len(train) + len(val) == expected


def test_output_identical_for_any_worker_count(tmp_path):
    write_docs(tmp_path / "docs", 60)
    outputs = []
    for workers in (1, 2, 3):
        out = tmp_path / f"out{workers}"
        result = prepare("--input", tmp_path / "docs", "--out", out, "--workers", workers, "--shard-tokens",
                         "500")
        assert result.returncode == 0, result.stderr
        outputs.append(out)
    reference = {p.name: p.read_bytes() for p in outputs[0].glob("*.bin")}
    assert len(reference) > 2  # several shards
    for out in outputs[1:]:
        assert {p.name: p.read_bytes() for p in out.glob("*.bin")} == reference
        assert json.loads((out / "manifest.json").read_text())["splits"] == \
            json.loads((outputs[0] / "manifest.json").read_text())["splits"]


def test_input_folders_give_their_text_files_in_the_order_of_their_paths_parts(tmp_path):
    root = tmp_path / "root"
    for folder in ("a/c", "dir.txt", "../outside"):
        (root / folder).mkdir(parents=True)
    for name in ("a-b.txt", "a/b.txt", "a/c/d.txt", ".hidden.txt", "notes.md", "../outside/o.txt"):
        (root / name).write_text("text")
    (root / "linked").symlink_to(tmp_path / "outside")  # a link to a folder is not walked
    (root / "file-link.txt").symlink_to(tmp_path / "outside" / "o.txt")  # a link to a file is a file
    (root / "broken.txt").symlink_to(tmp_path / "nowhere")
    assert corpus.expand_inputs([str(root)]) == [root / ".hidden.txt", root / "a/b.txt", root / "a/c/d.txt",
                                                 root / "a-b.txt", root / "file-link.txt"]


def test_output_does_not_depend_on_how_documents_are_grouped_into_tasks(tmp_path, monkeypatch):
    docs = tmp_path / "docs"
    write_docs(docs, 50)
    for i in range(7):  # problems in many tasks: named and counted as in one
        (docs / f"latin1-{i}.txt").write_bytes(b"caf\xe9 au lait " * 3)
        (docs / f"image-{i}.txt").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    arguments = ["--input", docs, "--shard-tokens", "300", "--val-fraction", "0.3"]
    together = prepare(*arguments, "--out", tmp_path / "together")
    assert together.returncode == 0, together.stderr
    monkeypatch.setattr(tokenizing, "FIRST_TASK_DOCUMENTS", 1)
    monkeypatch.setattr(tokenizing, "TASK_TOKENS", 1)  # one document a task
    apart = prepare(*arguments, "--out", tmp_path / "apart")
    assert apart.returncode == 0, apart.stderr
    assert folder_bytes(tmp_path / "apart") == folder_bytes(tmp_path / "together")  # the summary's names too
    assert len(shards.read_manifest(tmp_path / "apart").shard_paths("train")) > 3


def test_the_prepare_benchmark_sets_prepare_beside_tiktoken_at_each_worker_count(download_cache):
    result = run_module("gptdist.bench", "prepare", "--megabytes", "1", "--workers", "2", "--repeats", "3")
    assert result.returncode == 0, result.stderr[-2000:]
    row = json.loads(result.stdout.strip().splitlines()[-1])
    assert row["documents"] > 50 and row["tokens"] > 200_000  # The Verdict's paragraphs, to a megabyte
    assert [count["workers"] for count in row["by_workers"]] == [1, 2]
    for count in row["by_workers"]:
        assert len(count["pairs"]) == 3 and all(ratio > 0 for ratio in count["pairs"])
        assert count["prepare_vs_tiktoken"] == pytest.approx(sorted(count["pairs"])[1], abs=1e-3)
    lowest = min(count["prepare_vs_tiktoken"] for count in row["by_workers"])
    assert row["lowest_prepare_vs_tiktoken"] == lowest


def test_manifest_checksums_and_verify(tmp_path, verdict_data):
    copy = tmp_path / "copy"
    subprocess.run(["cp", "-r", str(verdict_data), str(copy)], check=True)
    assert prepare("--verify", copy).returncode == 0
    shard = copy / "train-00000.bin"
    data = bytearray(shard.read_bytes())
    data[10] ^= 1
    shard.write_bytes(bytes(data))
    result = prepare("--verify", copy)
    assert result.returncode == 2 and "sha256" in result.stderr and "Traceback" not in result.stderr
    shard.write_bytes(bytes(data[:-2]))
    result = prepare("--verify", copy)
    assert result.returncode == 2 and "truncated" in result.stderr


def test_verify_finds_token_ids_beyond_the_vocabulary(tmp_path, verdict_data):
    copy = tmp_path / "copy"
    subprocess.run(["cp", "-r", str(verdict_data), str(copy)], check=True)
    manifest = json.loads((copy / "manifest.json").read_text())
    tokens = np.fromfile(copy / "val-00000.bin", dtype="<u2")
    tokens[0] = 60000
    tokens.tofile(copy / "val-00000.bin")
    manifest["splits"]["val"]["shards"][0]["sha256"] = shards.hashlib.sha256(tokens.tobytes()).hexdigest()
    (copy / "manifest.json").write_text(json.dumps(manifest))
    result = prepare("--verify", copy)
    assert result.returncode == 2 and "60000" in result.stderr


GUTENBERG_BOOK = """The Project Gutenberg EBook of A Made-up Tale, by Nobody

This eBook is for the use of anyone anywhere at no cost.

*** START OF THIS PROJECT GUTENBERG EBOOK A MADE-UP TALE ***




Chapter I.



It was a dark and stormy night.
The rain fell.

End of the Project Gutenberg EBook of A Made-up Tale

*** END OF THIS PROJECT GUTENBERG EBOOK A MADE-UP TALE ***
Licence text that must go.
"""

OLD_STYLE_BOOK = """*The Project Gutenberg Etext of Old Things*
*END*THE SMALL PRINT! FOR PUBLIC DOMAIN ETEXTS*Ver.04.29.93*END*
Old things were new once.
***END OF THE PROJECT GUTENBERG ETEXT***
"""


def test_gutenberg_cleaning_on_made_up_books(tmp_path):
    books = tmp_path / "books"
    books.mkdir()
    (books / "a.txt").write_text(GUTENBERG_BOOK)
    (books / "b.txt").write_text(OLD_STYLE_BOOK)
    not_english = "это не английский " * 50
    (books / "c.txt").write_text("*** START OF THE PROJECT GUTENBERG EBOOK X ***\n" + not_english)
    (books / "d.txt").write_text("*** START OF THE PROJECT GUTENBERG EBOOK X ***\n\n*** END OF THE PROJECT "
                                 "GUTENBERG EBOOK X ***")
    assert corpus.clean_gutenberg(GUTENBERG_BOOK) == ("Chapter I.\n\nIt was a dark and stormy night.\nThe "
                                                      "rain fell.", None)
    assert corpus.clean_gutenberg(OLD_STYLE_BOOK) == ("Old things were new once.", None)
    result = prepare("--input", books, "--gutenberg", "--out", tmp_path / "out")
    assert result.returncode == 0, result.stderr
    assert "skipped 1 file(s): not mostly English" in result.stdout
    assert "1 file(s): empty after removing the licence text" in result.stdout
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert sum(manifest["source"]["skipped"].values()) == 2
    tokens = np.concatenate([load_split(tmp_path / "out", s) for s in ("train", "val")])
    text = decode(tokens[tokens != EOT_TOKEN].tolist())
    assert "Licence" not in text and "START OF" not in text
    assert "stormy night" in text and "Old things" in text


@pytest.mark.parametrize("fmt", ["parquet", "jsonl"])
def test_local_files_through_datasets(tmp_path, fmt):
    pytest.importorskip("datasets")
    import datasets

    rows = [{"text": f"row number {i} says hello", "id": i} for i in range(25)]
    path = tmp_path / f"data.{fmt}"
    table = datasets.Dataset.from_list(rows)
    table.to_parquet(str(path)) if fmt == "parquet" else table.to_json(str(path))
    result = prepare("--hf", fmt, "--data-files", path, "--out", tmp_path / "out",
                     env={"HF_DATASETS_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr
    tokens = np.concatenate([load_split(tmp_path / "out", s) for s in ("train", "val")])
    assert (tokens == EOT_TOKEN).sum() == 25
    assert sum(len(encode(r["text"])) + 1 for r in rows) == len(tokens)
    result = prepare("--hf", fmt, "--data-files", path, "--text-column", "body", "--out", tmp_path / "out2")
    assert result.returncode == 2 and "no column 'body'" in result.stderr and "text, id" in result.stderr


def test_hub_dataset_offline_is_a_clear_error(tmp_path):
    pytest.importorskip("datasets")
    result = prepare("--hf", "someone/some-corpus", "--out", tmp_path / "out",
                     env={"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"})
    assert result.returncode == 2
    assert "cannot load Hugging Face dataset 'someone/some-corpus'" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "out").exists()


def test_verdict_offline_without_cache_says_where_to_put_it(tmp_path):
    result = prepare("--dataset", "verdict", "--out", tmp_path / "out",
                     env={"GPTDIST_CACHE": str(tmp_path / "c")})
    assert result.returncode == 2
    assert f"place the file at {tmp_path / 'c' / 'the-verdict.txt'}" in result.stderr


def test_altered_cached_verdict_is_refused(tmp_path):
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "the-verdict.txt").write_text("not the verdict")
    result = prepare("--dataset", "verdict", "--out", tmp_path / "out",
                     env={"GPTDIST_CACHE": str(tmp_path / "c")})
    assert result.returncode == 2 and "does not match" in result.stderr


@pytest.mark.parametrize("case", ["missing", "empty", "unknown-dataset", "existing-out", "bad-dir"])
def test_bad_input_is_one_clear_line(tmp_path, case):
    out = tmp_path / "out"
    if case == "missing":
        args, expected = ["--input", tmp_path / "nope.txt"], "does not exist"
    elif case == "empty":
        (tmp_path / "e.txt").write_text("")
        args, expected = ["--input", tmp_path / "e.txt", "--gutenberg"], "the corpus is empty"
    elif case == "unknown-dataset":
        args, expected = ["--dataset", "pile"], "argument --dataset: invalid choice: 'pile'"
    elif case == "existing-out":
        out.mkdir()
        (out / "keep.txt").write_text("precious")
        (tmp_path / "a.txt").write_text("hello")
        args, expected = ["--input", tmp_path / "a.txt"], "holds 'keep.txt', which prepare did not write"
    else:
        (tmp_path / "d").mkdir()
        args, expected = ["--input", tmp_path / "d"], "holds no *.txt files"
    result = prepare(*args, "--out", out)
    assert result.returncode == 2, result.stderr
    assert expected in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()[-1]) > 0
    if case == "existing-out":
        assert (out / "keep.txt").read_text() == "precious"
    else:
        assert not out.exists()
    assert not list(tmp_path.glob(".out.tmp-*"))


def test_undecodable_bytes_are_replaced_and_counted(tmp_path):
    (tmp_path / "bad.txt").write_bytes(b"good text \xff\xfe more text")
    result = prepare("--input", tmp_path / "bad.txt", "--out", tmp_path / "out")
    assert result.returncode == 0, result.stderr
    said = f"1 file(s) had undecodable bytes, 2 replaced with U+FFFD ({tmp_path / 'bad.txt'})"
    assert said in result.stdout


def test_overwrite_replaces_only_when_asked(tmp_path):
    (tmp_path / "a.txt").write_text("first corpus " * 20)
    assert prepare("--input", tmp_path / "a.txt", "--out", tmp_path / "out").returncode == 0
    (tmp_path / "a.txt").write_text("second corpus " * 20)
    assert prepare("--input", tmp_path / "a.txt", "--out", tmp_path / "out").returncode == 2
    assert prepare("--input", tmp_path / "a.txt", "--out", tmp_path / "out", "--overwrite").returncode == 0
    tokens = np.concatenate([load_split(tmp_path / "out", s) for s in ("train", "val")])
    assert decode(tokens[:-1].tolist()).startswith("second corpus")


def folder_bytes(folder):
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir())}


def test_a_killed_prepare_resumes_and_ends_byte_for_byte_as_an_uninterrupted_one(tmp_path):
    docs = tmp_path / "docs"
    write_docs(docs, 3000, words=1000)  # 4M tokens: the workers are busy when it is killed
    out = tmp_path / "out"
    arguments = ["--input", docs, "--out", out, "--workers", "2", "--shard-tokens", "500000"]
    proc = subprocess.Popen([PYTHON, "-m", "gptdist.prepare", *map(str, arguments)], stderr=subprocess.PIPE,
                            env=os.environ)
    record = tmp_path / ".out.partial" / "progress.json"
    deadline = time.time() + 60
    while not (record.exists() and json.loads(record.read_text())["documents"] >= 600):  # several shards
        assert proc.poll() is None and time.time() < deadline, "prepare ended before it could be killed"
        time.sleep(0.02)
    main = forked_pid(proc)
    workers = [int(pid) for pid in Path(f"/proc/{main}/task/{main}/children").read_text().split()]
    assert len(workers) == 2
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    wait_for_exit([main])  # the process that ran it (forked for its launcher) is gone too: it writes no more
    assert not out.exists() and not list(tmp_path.rglob("manifest.json"))
    done = json.loads(record.read_text())["documents"]
    again = prepare(*arguments)  # the same command again, at once: the killed one's workers hold no lock
    assert again.returncode == 0, again.stderr
    assert f"resuming a prepare killed after {done:,} documents" in again.stderr
    wait_for_exit(workers)  # and they end: their main process gone, they have nothing to wait for
    assert not list(tmp_path.glob(".out.*")) and shards.verify(out)
    whole = prepare(*arguments[:3], tmp_path / "whole", *arguments[4:])
    assert whole.returncode == 0, whole.stderr
    assert folder_bytes(out) == folder_bytes(tmp_path / "whole")  # shards and manifest, byte for byte
    # other arguments into the same --out do not resume what another command left
    (tmp_path / ".other.partial").mkdir()
    (tmp_path / ".other.partial" / "train-00000.bin").write_bytes(b"left by another prepare")
    result = prepare("--input", docs / "doc0001.txt", "--out", tmp_path / "other")
    assert result.returncode == 0 and "resuming" not in result.stderr and shards.verify(tmp_path / "other")


def test_files_that_are_not_text_or_have_undecodable_bytes_are_named(tmp_path):
    docs = tmp_path / "docs"
    write_docs(docs, 3)
    for i in range(7):
        (docs / f"latin1-{i}.txt").write_bytes(b"caf\xe9 au lait " * 3)
    for i in range(2):
        (docs / f"image-{i}.txt").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    result = prepare("--input", docs, "--out", tmp_path / "out")
    assert result.returncode == 0, result.stderr
    first = ", ".join(str(docs / f"latin1-{i}.txt") for i in range(5))
    assert f"7 file(s) had undecodable bytes, 21 replaced with U+FFFD ({first} and 2 more)" in result.stdout
    images = f"{docs / 'image-0.txt'}, {docs / 'image-1.txt'}"
    assert f"skipped 2 file(s): not text (NUL bytes) ({images})" in result.stdout
    source = shards.read_manifest(tmp_path / "out").raw["source"]
    assert source["skipped"] == {"not text (NUL bytes)": 2}
    assert len(source["examples"]["undecodable bytes"]) == 5


def test_a_folder_killed_while_being_replaced_is_put_back(tmp_path):
    (tmp_path / "a.txt").write_text("a corpus " * 50)
    out = tmp_path / "out"
    assert prepare("--input", tmp_path / "a.txt", "--out", out).returncode == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    dead = subprocess.Popen(["true"])  # ended and not reaped: a zombie, which runs no more
    wait_for_exit([dead.pid])
    # a prepare killed between its two renames: the old folder set aside, the new one not yet in place
    old = tmp_path / f".out.old-{socket.gethostname()}-{dead.pid}"
    out.rename(old)
    result = prepare("--input", tmp_path / "b.txt", "--out", out)  # fails (no b.txt), after putting it back
    assert result.returncode == 2 and f"restored {out} from {old.name}" in result.stdout
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    dead.wait()


@pytest.mark.parametrize("case", ["out-is-input", "out-is-parent", "out-inside-input", "user-folder",
                                  "prepared-plus-user-file", "input-links-into-out",
                                  "out-inside-linked-input"])
def test_overwrite_never_deletes_what_prepare_did_not_write(tmp_path, case):
    books = tmp_path / "books"
    write_docs(books, 3)
    (tmp_path / "notes.txt").write_text("my notes")
    out = {"out-is-input": books, "out-is-parent": tmp_path, "out-inside-input": books / "out",
           "out-inside-linked-input": books / "out"}.get(case, tmp_path / "out")
    given = books
    if case == "user-folder":
        out.mkdir()
        (out / "thesis.tex").write_text("years of work")
    if case == "prepared-plus-user-file":
        assert prepare("--input", books, "--out", out).returncode == 0
        (out / "thesis.tex").write_text("years of work")
    if case == "input-links-into-out":  # a file of the input folder is a link to a file of --out
        assert prepare("--input", books, "--out", out).returncode == 0
        (books / "linked.txt").symlink_to(out / "manifest.json")
    if case == "out-inside-linked-input":  # the input is a link to the folder that holds --out
        given = tmp_path / "library"
        given.symlink_to(books)
    everything = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    result = prepare("--input", given, "--out", out, "--overwrite")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    expected = {"out-is-input": "is the input", "out-is-parent": "holds the input",
                "out-inside-input": "lies inside the input",
                "out-inside-linked-input": "lies inside the input",
                "input-links-into-out": f"holds the input {books / 'linked.txt'}",
                "user-folder": "holds 'thesis.tex', which prepare did not write",
                "prepared-plus-user-file": "holds 'thesis.tex', which prepare did not write"}[case]
    assert expected in result.stderr and "--overwrite to replace" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == everything


@pytest.mark.parametrize("forged", ["../secret.bin", "/etc/hostname", "sub/train-00000.bin", ".."])
def test_shard_paths_must_be_file_names_inside_the_folder(tmp_path, verdict_data, forged):
    data = tmp_path / "data"
    data.mkdir()
    for item in verdict_data.iterdir():
        (data / item.name).write_bytes(item.read_bytes())
    (tmp_path / "secret.bin").write_bytes(b"\0" * 10302)
    manifest = json.loads((data / "manifest.json").read_text())
    manifest["splits"]["train"]["shards"][0]["path"] = forged
    (data / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(UserError) as err:
        shards.read_manifest(data)
    assert f"shard path {forged!r} is not a file name inside {data}" in str(err.value)
    assert "bytes" not in str(err.value)  # nothing about the file it names


def test_parts_merged_hold_the_same_documents_and_split_as_one_prepare(tmp_path):
    docs = tmp_path / "docs"
    write_docs(docs, 50)
    assert prepare("--input", docs, "--out", tmp_path / "whole", "--shard-tokens", "700").returncode == 0
    parts = []
    for number in (1, 2, 3):
        parts.append(tmp_path / f"part{number}")
        result = prepare("--input", docs, "--part", f"{number}/3", "--out", parts[-1],
                         "--shard-tokens", "700")
        assert result.returncode == 0, result.stderr
    result = prepare("--merge", parts[2], parts[0], parts[1], "--out", tmp_path / "merged")  # any order
    assert result.returncode == 0, result.stderr
    assert "merged from 3 parts, shards linked" in result.stdout
    whole, merged = shards.verify(tmp_path / "whole"), shards.verify(tmp_path / "merged")
    for split in shards.SPLITS:
        assert np.array_equal(load_split(tmp_path / "whole", split), load_split(tmp_path / "merged", split))
        assert whole.splits[split]["documents"] == merged.splits[split]["documents"]
    assert merged.raw["source"]["inputs"] == whole.raw["source"]["inputs"]
    linked = merged.shard_paths("train")[0]
    assert linked.stat().st_ino == shards.read_manifest(parts[0]).shard_paths("train")[0].stat().st_ino
    # what --merge refuses: a missing part, a folder that is no part
    result = prepare("--merge", parts[0], parts[2], "--out", tmp_path / "short")
    assert result.returncode == 2 and "needs parts 1 to 3 of one input, each once; it was given parts 1, 3" \
        in result.stderr
    result = prepare("--merge", tmp_path / "whole", "--out", tmp_path / "none")
    assert result.returncode == 2 and "is not a part (prepare it with --part K/N)" in result.stderr
    assert not (tmp_path / "short").exists() and not (tmp_path / "none").exists()


def test_a_stream_goes_on_after_transient_errors_from_the_row_it_had_reached():
    failures = {3: 2, 7: 1}  # row -> times reading it fails with a network error
    opened = []

    def open_rows(position):
        opened.append(position)
        for row in range(position, 10):
            if failures.get(row):
                failures[row] -= 1
                raise ConnectionResetError("connection reset by peer")
            yield row

    assert list(corpus.resilient_rows(open_rows, 0, "dataset 'x'", backoff=0)) == list(range(10))
    assert opened == [0, 3, 3, 7]

    def broken(position):
        yield from range(position, 2)
        raise ConnectionResetError("gone")

    with pytest.raises(UserError, match=r"dataset 'x' failed at row 2 after 3 tries \(ConnectionReset"):
        list(corpus.resilient_rows(broken, 0, "dataset 'x'", retries=2, backoff=0))

    def bad_data(position):
        yield from range(position, 2)
        raise ValueError("column type mismatch")

    with pytest.raises(UserError, match=r"failed at row 2 \(ValueError: column type mismatch\)"):
        list(corpus.resilient_rows(bad_data, 0, "dataset 'x'", backoff=0))  # not the network's: no retry


def test_a_streamed_dataset_resumes_at_its_row(tmp_path):
    pytest.importorskip("datasets")
    import datasets

    path = tmp_path / "data.jsonl"
    datasets.Dataset.from_list([{"text": f"row {i}"} for i in range(30)]).to_json(str(path))
    texts = corpus.hf_texts("json", None, "train", "text", [str(path)], start=17)
    assert list(texts) == [f"row {i}" for i in range(17, 30)]
