"""Shared fixtures: the tokenizer files and The Verdict from tests/data, prepared shards, and helpers that
run gptdist's commands as real processes (torchrun included), started from a preloaded server
(tests/preloaded.py)."""

import contextlib
import importlib
import importlib.util
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import filelock
import preloaded
import pytest
import torch

from gptdist.files.replace import own_temporary_folder


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


_in_memory_temp()
# Where torch.compile keeps what it built, named before anything compiles: inductor sets this variable in
# the process that compiles first, and a test process whose variables differ from its preloaded server's
# would start every command after that in a new interpreter (tests/preloaded.py's IMPORT_PREFIXES).
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR",
                      str(Path(tempfile.gettempdir()) / f"torchinductor-{os.getuid()}"))
REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "tests" / "data"
VERDICT = DATA / "the-verdict.txt"
# tiktoken's cache names (the sha1 of each file's URL) for the GPT-2 files in tests/data/gpt2
TIKTOKEN_NAMES = {"vocab.bpe": "6d1cbeee0f20b3d9449abfede4726ed8212e3aee",
                  "encoder.json": "6c7ea1a7e38e3a7f062df639a5b80947f075ffe6"}


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


os.environ["TIKTOKEN_CACHE_DIR"] = str(_tiktoken_cache())
# Threads that wait for work sleep instead of spinning: the tests' processes outnumber the cores, and a
# spinning OpenMP thread takes a core from another test's process (set before torch's OpenMP starts).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# One thread in every process the tests start, and in the test processes themselves: more test processes
# and ranks run at once than there are cores (pyproject's --numprocesses), and a second thread in each
# would only contend for a core another is using. One thread is also the same arithmetic in every process.
os.environ["OMP_NUM_THREADS"] = "1"
torch.set_num_threads(1)

# `python3`, `python` and `torchrun` for every process the tests start: each is forked from this test
# process's preloaded server (tests/preloaded.py), or is a new interpreter until the server is up.
# (named for this host and process: what a killed test run left is removed here the next time)
LAUNCHERS = own_temporary_folder("gptdist-tests-python")
PYTHON = str(LAUNCHERS / "python3")
preloaded.write_launchers(LAUNCHERS, str(LAUNCHERS / "server"))
os.environ["PATH"] = f"{LAUNCHERS}{os.pathsep}{os.environ['PATH']}"


# The files that take longest, first: the test processes (pytest-xdist, whole files each) take files in
# this order as they free up, so the longest ones never start last (.ci/run prints the slowest tests).
LONGEST_FIRST = ["test_benchmarks.py", "test_checkpoint_ranks.py", "test_train.py", "test_slurm.py",
                 "test_time_to_loss.py",
                 "test_training_step.py", "test_fsdp.py", "test_reliability.py", "test_launch.py",
                 "test_modern_model.py", "test_wandb.py", "test_muon.py", "test_hellaswag.py"]


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: each file's own order kept


@pytest.fixture(scope="session", autouse=True)
def preloaded_server():
    """The server that this test process's launchers hand their commands to, for the whole session."""
    server = subprocess.Popen([sys.executable, preloaded.__file__, str(LAUNCHERS / "server"), str(LAUNCHERS)],
                              cwd=REPO)
    deadline = time.time() + 120
    while not (LAUNCHERS / "server").exists() and server.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    yield
    server.kill()
    server.wait()
    shutil.rmtree(LAUNCHERS, ignore_errors=True)


@pytest.fixture(scope="session")
def download_cache(tmp_path_factory) -> Path:
    """A GPTDIST_CACHE seeded with The Verdict, as if downloaded before."""
    cache = tmp_path_factory.mktemp("gptdist-cache")
    shutil.copy(VERDICT, cache / "the-verdict.txt")
    return cache


@pytest.fixture(autouse=True)
def _isolated_cache(monkeypatch, tmp_path_factory, request):
    """Every test gets a GPTDIST_CACHE: the seeded one where asked for, else an empty one."""
    if "download_cache" in request.fixturenames:
        cache = request.getfixturevalue("download_cache")
    else:
        cache = tmp_path_factory.mktemp("empty-cache")
    monkeypatch.setenv("GPTDIST_CACHE", str(cache))


def run_module(module: str, *args, env: dict | None = None, cwd=None,
               timeout=600) -> subprocess.CompletedProcess:
    """`python -m module args...` as a subprocess, output captured."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([PYTHON, "-m", module, *map(str, args)], capture_output=True, text=True,
                          env=full_env, cwd=cwd or REPO, timeout=timeout)


def command_module(name: str):
    """The module of a command: gptdist's by its name (`gptdist.train`), or a benchmark script by its file
    (`benchmarks/time_to_loss.py`)."""
    if not name.endswith(".py"):
        return importlib.import_module(name)
    spec = importlib.util.spec_from_file_location(Path(name).stem, REPO / name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_main(module: str, *args) -> subprocess.CompletedProcess:
    """`python -m module args...` (or `python SCRIPT args...`) in this process: the command's own
    main(argv), its output captured and its exit status as the process would have it (a bug raises here
    instead of printing a traceback).

    Without a process of its own to start, a command costs what it does, not the seconds of importing
    torch again: for every test that needs no torchrun, no signal, no kill and no environment of its own.
    """
    out, err = io.StringIO(), io.StringIO()
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGUSR1)}  # training's own
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            command_module(module).main([str(arg) for arg in args])
        status = 0
    except SystemExit as exit:
        status = exit.code if isinstance(exit.code, int) else int(exit.code is not None)
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    return subprocess.CompletedProcess([module, *args], status, out.getvalue(), err.getvalue())


def torchrun_command(nproc: int, *args) -> list[str]:
    return [PYTHON, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            "-m", "gptdist.train", *map(str, args)]


def made_once(tmp_path_factory, worker_id: str, name: str, make) -> Path:
    """The folder `name` that `make(folder)` fills: made once per session, by the first of the session's
    test processes (pytest-xdist's workers) to ask for it, and read by all of them."""
    if worker_id == "master":  # one test process
        folder = tmp_path_factory.mktemp(name)
        make(folder)
        return folder
    folder = tmp_path_factory.getbasetemp().parent / name  # the session's folder, above every worker's
    with filelock.FileLock(f"{folder}.lock"):
        if not (folder / ".made").exists():
            shutil.rmtree(folder, ignore_errors=True)  # a worker that failed to make it left a part
            folder.mkdir()
            make(folder)
            (folder / ".made").touch()
    return folder


@pytest.fixture(scope="session")
def verdict_data(tmp_path_factory, worker_id, download_cache) -> Path:
    """The Verdict prepared into shards (once per session)."""

    def prepare(folder: Path) -> None:
        result = run_module("gptdist.prepare", "--dataset", "verdict", "--out", folder / "verdict",
                            env={"GPTDIST_CACHE": str(download_cache)})
        assert result.returncode == 0, result.stderr

    return made_once(tmp_path_factory, worker_id, "data", prepare) / "verdict"


def write_paragraphs(folder: Path) -> Path:
    """The Verdict's paragraphs, one file (one document) each: a corpus of 83 documents of 5 to 200 tokens."""
    folder.mkdir(parents=True, exist_ok=True)
    text = (REPO / "tests" / "data" / "the-verdict.txt").read_text()
    for number, paragraph in enumerate(p for p in text.split("\n\n") if p.strip()):
        (folder / f"paragraph-{number:03d}.txt").write_text(paragraph)
    return folder


@pytest.fixture(scope="session")
def paragraphs_data(tmp_path_factory, worker_id) -> Path:
    """The Verdict's paragraphs prepared as 83 documents (once per session)."""

    def prepare(folder: Path) -> None:
        result = run_module("gptdist.prepare", "--input", write_paragraphs(folder / "text"), "--out",
                            folder / "paragraphs", "--workers", "1")
        assert result.returncode == 0, result.stderr

    return made_once(tmp_path_factory, worker_id, "paragraphs", prepare) / "paragraphs"


TINY = ["model.emb_dim=32", "model.n_heads=2", "model.n_layers=1", "model.context_length=32",
        "train.micro_batch_size=4", "eval.batches=2", "sample.max_new_tokens=5"]


def train_args(data_dir: Path, out_dir: Path, *overrides: str) -> list[str]:
    """Arguments of gptdist.train for a small, fast model on `data_dir`."""
    return ["--config", str(REPO / "configs" / "verdict-tiny.yaml"), f"data.dir={data_dir}",
            f"run.out_dir={out_dir}", *TINY, *overrides]


# A two-process run with dropout and checkpoints: run once, uninterrupted, it gives the weights that
# every interrupted run of the same arguments (a killed job, a restarted worker, two agents) must end
# on, bit for bit.
UNINTERRUPTED = ("train.max_steps=24", "checkpoint.interval=4", "checkpoint.keep=10", "eval.interval=12",
                 "model.drop_rate=0.1", "model.emb_dim=64", "model.context_length=64")


@pytest.fixture(scope="session")
def uninterrupted(tmp_path_factory, worker_id, verdict_data) -> dict:
    """The final weights of UNINTERRUPTED on two processes (torchrun --standalone)."""

    def train(folder: Path) -> None:
        command = torchrun_command(2, *train_args(verdict_data, folder / "run", *UNINTERRUPTED))
        result = subprocess.run(command, capture_output=True, text=True, cwd=REPO,
                                timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]

    return newest_model(made_once(tmp_path_factory, worker_id, "uninterrupted", train) / "run")


def metrics_rows(out_dir: Path) -> list[dict]:
    """The rows of a run's metrics.jsonl."""
    return [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]


def same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def newest_model(out_dir: Path) -> dict:
    from gptdist.checkpoint import store

    return store.read(store.checkpoint_paths(out_dir / "checkpoints")[-1])["model"]


def wait_for(condition, process: subprocess.Popen, timeout: float = 300) -> None:
    """Poll `condition()` while `process` runs; fail with its output if it ends first or the time runs out."""
    deadline = time.time() + timeout
    while not condition():
        if process.poll() is not None or time.time() > deadline:
            ended = process.poll() is not None
            if not ended:
                process.kill()
            output = "".join(text or "" for text in process.communicate())
            pytest.fail(f"{'the process ended' if ended else 'timed out'} first: {output[-2000:]}")
        time.sleep(0.01)


def run_processes(out_dir: Path, agents: bool = False) -> list[int]:
    """The pids of the processes training into `out_dir` (or, with `agents`, of their torchrun agents),
    found by their command lines."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        if f"run.out_dir={out_dir}".encode() not in args or b"gptdist.train" not in args:
            continue
        agent = b"torch.distributed.run" in args or any(arg.endswith(b"torchrun") for arg in args)
        if agent == agents:
            found.append(int(cmdline.parent.name))
    return sorted(found)


def kill_job(agent: subprocess.Popen, out_dir: Path) -> None:
    """SIGKILL a torchrun job's agent and workers at once, as a node failure would (torchrun starts its
    workers in sessions of their own: killed by pid, not by group), and wait until they are gone."""
    workers = run_processes(out_dir)
    for pid in [*workers, agent.pid]:
        os.kill(pid, signal.SIGKILL)
    agent.wait()
    wait_for_exit(workers)


def kill_a_worker_once_saved(agent: subprocess.Popen, checkpoint: Path) -> str:
    """Once `checkpoint` exists, SIGKILL the second of torchrun `agent`'s two workers, as a crash
    would; returns the agent's output once it ends, having restarted them under --max-restarts."""
    wait_for(checkpoint.exists, agent)
    workers = run_processes(checkpoint.parent.parent)
    assert len(workers) == 2
    os.kill(workers[1], signal.SIGKILL)
    output, _ = agent.communicate(timeout=600)
    assert agent.returncode == 0, output[-3000:]
    assert "resumed from" in output, output[-3000:]
    return output


def make_unwritable(folder: Path) -> list[str]:
    """Make `folder` unwritable even for root (immutable) where possible; returns the command that
    undoes it."""
    if os.geteuid() == 0:
        locked = subprocess.run(["chattr", "+i", str(folder)], capture_output=True, text=True)
        if locked.returncode != 0:
            pytest.skip(f"root, and cannot make {folder} immutable: {locked.stderr.strip()}")
        return ["chattr", "-i", str(folder)]
    folder.chmod(0o500)
    return ["chmod", "700", str(folder)]


def tmpfs(path: Path, size: str):
    """A small tmpfs mounted at `path` (a disk to fill); skips where mounting is not allowed."""
    path.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs to fill: {mounted.stderr.strip()}")


def forked_pid(process: subprocess.Popen) -> int:
    """The pid of the process that runs `process`'s command: the one the preloaded server forked for its
    launcher, or the process itself where it is a new interpreter."""
    forked = LAUNCHERS / "pids" / str(process.pid)
    return int(forked.read_text()) if forked.exists() else process.pid


def wait_for_exit(pids: list[int], timeout: float = 30) -> None:
    """Wait until processes that are not our children have ended, with a launcher the process forked for
    it: every thread gone, the main one a zombie at most (only then are its files, and its locks, closed)."""
    deadline = time.time() + timeout
    forked = [LAUNCHERS / "pids" / str(pid) for pid in pids]
    for pid in [*pids, *(int(path.read_text()) for path in forked if path.exists())]:
        while True:
            try:
                zombie = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
                if zombie and len(os.listdir(f"/proc/{pid}/task")) <= 1:
                    break
            except OSError:
                break
            assert time.time() < deadline, f"process {pid} is still running"
            time.sleep(0.01)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# nanoGPT is not part of gptdist: $GPTDIST_NANOGPT_DIR points the benchmark tests at a checkout of it, else
# they use this stand-in with the interface its model.py gives the benchmarks (GPTConfig, GPT(config)(x, y)
# -> logits, loss; get_num_params; configure_optimizers), built from gptdist's own model.
NANOGPT_STAND_IN = '''"""A stand-in for nanoGPT's model.py (GPTConfig, GPT) on gptdist's GPTModel."""
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from gptdist.config import ModelConfig
from gptdist.model.gpt import GPTModel


@dataclass
class GPTConfig:
    block_size: int = 1024
    vocab_size: int = 50304
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    bias: bool = True


class GPT(torch.nn.Module):
    def __init__(self, config):
        super().__init__()
        shape = ModelConfig(vocab_size=config.vocab_size, vocab_multiple=1, n_layers=config.n_layer,
                            n_heads=config.n_head, emb_dim=config.n_embd, drop_rate=config.dropout,
                            context_length=config.block_size, bias=config.bias, tie_embeddings=True)
        self.model = GPTModel(shape)

    def forward(self, idx, targets=None):
        logits = self.model(idx)
        loss = None if targets is None else F.cross_entropy(logits.flatten(0, 1), targets.flatten())
        return logits, loss

    def get_num_params(self, non_embedding=True):
        return self.model.num_params() - (self.model.pos_emb.weight.numel() if non_embedding else 0)

    def configure_optimizers(self, weight_decay, learning_rate, betas, device_type):
        params = [p for p in self.parameters() if p.requires_grad]
        groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
                  {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
        return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, fused=device_type == "cuda")
'''


@pytest.fixture(scope="session")
def nanogpt(tmp_path_factory) -> Path:
    """A nanoGPT checkout ($GPTDIST_NANOGPT_DIR), or a stand-in with its model.py's interface."""
    if os.environ.get("GPTDIST_NANOGPT_DIR"):
        return Path(os.environ["GPTDIST_NANOGPT_DIR"])
    folder = tmp_path_factory.mktemp("nanogpt")
    (folder / "model.py").write_text(NANOGPT_STAND_IN)
    return folder


HELLASWAG_ITEMS = [  # made-up items in HellaSwag's official JSONL format (ctx, endings, label)
    ("A man is sitting on a roof. He", ["starts pulling up roofing on a roof.", "is holding a cube.",
                                        "drinks a glass of water.", "rides a bike down the road."], 0),
    ("The painter looks at the canvas. She", ["picks up a brush and paints.", "swims across a lake.",
                                              "eats a sandwich.", "reads the newspaper."], 0),
    ("Every effort moves you closer to the goal, said Gisburn, looking at the picture that had been his "
     "wife's favourite for many years before the last summer at the villa on the Riviera. Then he",
     ["laughed.", "turned away from the picture and sighed for a long while.", "sat down.",
      "left the room."], 3),
    ("A woman is kneading dough on a table. She", ["cuts the dough.", "flies away.", "sings.", "sleeps."], 0),
    ("Two boys play football in the park. One of them", ["kicks the ball into the goal.", "bakes bread.",
                                                         "writes a letter.", "paints the fence."], 0),
    ("The dog runs after a stick. It", ["brings the stick back.", "opens a book.", "drives a car.",
                                        "cooks dinner."], 0),
    ("A chef chops onions in the kitchen. He", ["adds them to the pan.", "climbs a tree.", "plays the piano.",
                                                "goes to sleep."], 2),
    ("People are skiing down a snowy hill. A skier", ["falls in the snow.", "buys a ticket.", "swims.",
                                                      "reads a map."], 1),
    ("A girl is brushing her hair. She", ["ties it in a ponytail.", "eats soup.", "jumps off a roof.",
                                          "drives a truck."], 0),
    ("The gardener waters the plants. Then he", ["cuts the grass.", "writes code.", "flies a plane.",
                                                 "paints a picture of the sea at sunset with friends."], 3),
    ("A crowd watches the band play. The singer", ["waves to the crowd.", "leaves.", "sits.", "falls."], 1),
]


def write_hellaswag(path: Path, items=HELLASWAG_ITEMS) -> Path:
    """A HellaSwag file in the official format (one JSON object per line, with the fields it has)."""
    rows = [{"ind": i, "activity_label": "test", "ctx_a": ctx, "ctx_b": "", "ctx": ctx, "split": "val",
             "split_type": "indomain", "label": label, "endings": endings, "source_id": f"test~{i}"}
            for i, (ctx, endings, label) in enumerate(items)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


GENERATION_DOCS = [{"prompt": "I had always thought Jack Gisburn", "answer": "x"},
                   {"prompt": "Every effort moves you", "answer": "y"},
                   {"prompt": "The", "answer": "z"}]
ROLLING_DOCS = [{"text": "I had always thought Jack Gisburn rather a cheap genius."},
                {"text": VERDICT.read_text()[:1500]}]  # > one window


def write_lm_eval_tasks(folder: Path, hellaswag_file: Path) -> Path:
    """Three tasks in lm-eval's YAML format over local JSONL files: multiple choice (HellaSwag's items),
    generation until a stop, and rolling log-likelihood (perplexity)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, docs in (("generation", GENERATION_DOCS), ("rolling", ROLLING_DOCS)):
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(doc) + "\n" for doc in docs))

    def task(name: str, data: Path, body: str) -> None:
        (folder / f"{name}.yaml").write_text(
            f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\n"
            f"test_split: test\n{body}")

    task("local_hellaswag", hellaswag_file,
         "output_type: multiple_choice\ndoc_to_text: '{{ctx}}'\ndoc_to_choice: '{{endings}}'\n"
         "doc_to_target: '{{label}}'\nmetric_list:\n  - metric: acc\n  - metric: acc_norm\n")
    task("local_generation", folder / "generation.jsonl",
         "output_type: generate_until\ndoc_to_text: '{{prompt}}'\ndoc_to_target: '{{answer}}'\n"
         "generation_kwargs:\n  until: ['.', ',']\n  max_gen_toks: 12\n  do_sample: false\n"
         "metric_list:\n  - metric: exact_match\n")
    task("local_rolling", folder / "rolling.jsonl",
         "output_type: loglikelihood_rolling\ndoc_to_text: ''\ndoc_to_target: '{{text}}'\n"
         "metric_list:\n  - metric: word_perplexity\n  - metric: byte_perplexity\n"
         "  - metric: bits_per_byte\n")
    return folder


def random_hf_gpt2(folder: Path, tie=True, vocab_size=50257, n_positions=64, std=0.1, seed=0):
    """A transformers GPT2LMHeadModel with every tensor random (biases and norms too), saved by
    save_pretrained."""
    import transformers

    torch.manual_seed(seed)
    cfg = transformers.GPT2Config(vocab_size=vocab_size, n_positions=n_positions, n_embd=32, n_layer=2,
                                  n_head=4, tie_word_embeddings=tie)
    model = transformers.GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0, std)
    model.save_pretrained(folder)
    return model
