"""Python processes for the tests that start in milliseconds: forked from one that imported gptdist already.

A new interpreter spends about 6 s of CPU importing torch and gptdist (and more on their first
compile, plot and tokenizer) before its first line of work; the suite starts hundreds of them, in
torchrun's agents and workers, SLURM jobs and benchmark scripts. Here one server process per test
process (`serve`) imports all of that once. `python3`, `python` and `torchrun` on the tests' PATH are
a small launcher (`LAUNCHER`, a few milliseconds of CPU) that hands the server its command line,
environment, working folder and open files; the server forks a process that takes them over and
runs the command as the interpreter would (`python -m MODULE`, `python SCRIPT`), as `__main__`.

The launcher stays the process that its parent sees: it passes on every signal it gets, ends with
the forked process's exit status (or dies of its signal), and when it is killed the forked process
is killed with it. Its children (a torchrun agent's workers) are launchers again. A command this
cannot run exactly as a new interpreter would (`-c`, other modules, a PYTHONPATH or working folder
that would import another gptdist, an interpreter flag it does not know) is handed to the real
interpreter instead.
"""

import ast
import atexit
import gc
import importlib
import io
import os
import runpy
import selectors
import signal
import socket
import struct
import sys
import threading
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# What a test's processes import, once: torch, every command, and what a run loads lazily (torch.compile's
# front end, which the fused AdamW imports; matplotlib for loss.png; torchrun).
PRELOAD = ("torch", "torch._dynamo", "torch.distributed.run", "gptdist.train", "gptdist.bench",
           "gptdist.evaluate", "gptdist.generate", "gptdist.prepare", "gptdist.export", "matplotlib.figure",
           "matplotlib.backends.backend_agg", "numpy")
# Modules and scripts served from the fork; anything else goes to a new interpreter.
MODULES = ("gptdist.", "torch.distributed.run")
SCRIPTS = (REPO / "benchmarks", REPO / "tests")
# Variables that shape what an import does, or what an interpreter fixes at its start: a command whose
# values differ from the server's gets a new interpreter. PYTHONPATH may add the checkout and folders of
# tests/ (`_added_paths`). A fork shares the server's hash seed (fixed at its start): a command that names
# one of its own (PYTHONHASHSEED) gets a new interpreter; one that does not gets the server's random one,
# where a new interpreter would draw its own (tests/test_fresh.py runs what depends on that fresh).
IMPORT_VARIABLES = ("PYTHONHOME", "PYTHONWARNINGS", "PYTHONSAFEPATH", "MPLBACKEND", "TORCH_LOGS",
                    "PYTHONHASHSEED", "PYTHONDEVMODE", "PYTHONTRACEMALLOC")
IMPORT_PREFIXES = ("TORCHINDUCTOR_", "TORCHDYNAMO_", "PYTORCH_", "TORCH_COMPILE")

LAUNCHER = r'''#!{python} -SE
# Runs this command in a process forked from gptdist's test server (tests/preloaded.py), or else in
# {python} itself.
import array, os, signal, socket, struct, sys
REAL, ADDRESS, MODULE = {python!r}, {address!r}, {module!r}
argv = ([REAL, "-m", MODULE] if MODULE else [REAL]) + sys.argv[1:]
def real():
    os.execv(REAL, argv)
fds = []
for name in os.listdir("/proc/self/fd"):
    try:
        os.fstat(int(name))
        fds.append(int(name))
    except OSError:
        pass
try:
    server = socket.socket(socket.AF_UNIX)
    server.connect(ADDRESS)
except OSError:
    real()
request = repr({{"argv": argv[1:], "env": dict(os.environ), "cwd": os.getcwd(), "fds": fds,
                "launcher": os.getpid()}}).encode()
socket.send_fds(server, [struct.pack("!Q", len(request)) + request], fds)
reply = b""
while not reply.endswith(b"\n"):
    chunk = server.recv(64)
    if not chunk:
        real()
    reply += chunk
if reply.startswith(b"new"):
    server.close()
    real()
pid = int(reply.split()[1])
for fd in fds:
    os.close(fd)
def forward(signum, frame):
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass
for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2, signal.SIGQUIT,
            signal.SIGALRM, signal.SIGCONT):
    signal.signal(sig, forward)
status = b""
while not status.endswith(b"\n"):
    try:
        chunk = server.recv(64)
    except InterruptedError:
        continue
    if not chunk:
        os._exit(1)
    status += chunk
kind, value = status.split()
if kind == b"signal":
    signal.signal(int(value), signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, [int(value)])
    os.kill(os.getpid(), int(value))
os._exit(int(value) if kind == b"exit" else 128 + int(value))
'''


def write_launchers(folder: Path, address: str) -> None:
    """`python3`, `python` and `torchrun` in `folder`, each handing its command to the server at `address`
    (which records in `folder/pids/LAUNCHER_PID` the pid of the process it forked for it)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, module in (("python3", None), ("python", None), ("torchrun", "torch.distributed.run")):
        path = folder / name
        path.write_text(LAUNCHER.format(python=sys.executable, address=address, module=module))
        path.chmod(0o755)


# --- the server ------------------------------------------------------------------------------------


def _import_state(env: dict) -> tuple:
    return tuple(sorted((key, value) for key, value in env.items()
                        if key in IMPORT_VARIABLES or key.startswith(IMPORT_PREFIXES)))


def _added_paths(env: dict) -> list[str] | None:
    """The folders the command's PYTHONPATH adds to the server's; None if one of them could import
    something else than the server has: each must be the checkout (its gptdist is the server's) or a
    folder of tests/ (a test's sitecustomize.py)."""
    own = SERVER_PYTHONPATH.split(os.pathsep)
    added = [path for path in env.get("PYTHONPATH", "").split(os.pathsep) if path and path not in own]
    tests = REPO / "tests"
    for path in map(lambda path: Path(path).resolve(), added):
        if path != REPO and path != tests and tests not in path.parents:
            return None
    return added


def _runnable(argv: list[str], env: dict, cwd: str) -> tuple[str, str, list[str], bool, list[str]] | None:
    """(kind "module" or "script", its name or path, its arguments, unbuffered, the folders its PYTHONPATH
    adds) of a command this server runs as a new interpreter would; None for one that needs a new
    interpreter."""
    unbuffered = False
    while argv[:1] == ["-u"]:
        unbuffered, argv = True, argv[1:]
    added = _added_paths(env)
    if not argv or _import_state(env) != IMPORT_STATE or added is None:
        return None
    if argv[0] == "-m" and len(argv) > 1 and argv[1].startswith(MODULES):
        kind, target, args, folder = "module", argv[1], argv[2:], Path(cwd)
    elif not argv[0].startswith("-") and argv[0].endswith(".py"):
        kind, target, args = "script", str(Path(cwd, argv[0]).resolve()), argv[1:]
        folder = Path(target).parent
        if not any(folder == place or place in folder.parents for place in SCRIPTS):
            return None
    else:
        return None
    if (folder / "gptdist").is_dir() and (folder / "gptdist").resolve() != REPO / "gptdist":
        return None  # that folder would import another gptdist first
    return kind, target, args, unbuffered, added


def _receive(connection: socket.socket) -> tuple[dict, list[int]]:
    data, fds, _, _ = socket.recv_fds(connection, 1 << 20, 1024)
    while len(data) < 8 or len(data) < 8 + struct.unpack("!Q", data[:8])[0]:
        more = connection.recv(1 << 20)
        if not more:
            raise EOFError
        data += more
    return ast.literal_eval(data[8:].decode()), fds


def _take_over(connection: socket.socket, numbers: list[int], fds: list[int]) -> socket.socket:
    """In the forked process: the launcher's open files at their own `numbers`, nothing else of the
    server's; returns the connection, moved out of their way."""
    high = max([*numbers, *fds, connection.fileno(), 2]) + 1
    own = os.dup2(connection.fileno(), high)
    moved = [os.dup2(fd, high + 1 + i) for i, fd in enumerate(fds)]
    connection.detach()
    keep = {own, *moved}
    for name in os.listdir("/proc/self/fd"):
        if int(name) not in keep:
            try:
                os.close(int(name))
            except OSError:
                pass
    for fd, number in zip(moved, numbers, strict=True):
        os.dup2(fd, number)
        os.close(fd)
    return socket.socket(fileno=own)


def _die_with_the_launcher(connection: socket.socket) -> None:
    """Its end of the connection closes when the launcher ends, however it ends (a SIGKILL too)."""
    def wait():
        while True:
            try:
                if not connection.recv(64):
                    break
            except OSError:
                break
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=wait, daemon=True).start()


def _standard_streams(unbuffered: bool) -> None:
    """sys.stdin/stdout/stderr on the launcher's files, buffered as a new interpreter buffers them."""
    unbuffered = unbuffered or bool(os.environ.get("PYTHONUNBUFFERED"))
    streams = []
    for fd, mode in ((0, "r"), (1, "w"), (2, "w")):
        try:
            raw = io.FileIO(fd, mode, closefd=False)
        except OSError:
            streams.append(None)
            continue
        interactive = raw.isatty()
        if mode == "r":
            streams.append(io.TextIOWrapper(io.BufferedReader(raw), line_buffering=interactive))
        else:
            streams.append(io.TextIOWrapper(raw if unbuffered else io.BufferedWriter(raw),
                                            line_buffering=interactive or fd == 2, write_through=unbuffered,
                                            errors="backslashreplace" if fd == 2 else "strict"))
    sys.stdin, sys.stdout, sys.stderr = streams
    sys.__stdin__, sys.__stdout__, sys.__stderr__ = streams


def _fresh_process_state() -> None:
    """What a new interpreter has that a fork would share with its siblings: random seeds of its own, its
    thread count from OMP_NUM_THREADS, default signal handlers, faulthandler where PYTHONFAULTHANDLER asks
    for it; the tokenizer the server loaded only if its TIKTOKEN_CACHE_DIR is the command's."""
    import faulthandler

    import numpy as np
    import tiktoken.registry
    import torch

    from gptdist import tokenizer

    if os.environ.get("TIKTOKEN_CACHE_DIR") != SERVER_TIKTOKEN_CACHE:
        tokenizer.gpt2_encoding.cache_clear()
        tiktoken.registry.ENCODINGS.clear()

    torch.seed()
    np.random.seed()
    threads = os.environ.get("OMP_NUM_THREADS")
    torch.set_num_threads(int(threads) if threads else DEFAULT_THREADS)
    for sig in (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2, signal.SIGHUP, signal.SIGCHLD):
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    if os.environ.get("PYTHONFAULTHANDLER"):
        faulthandler.enable(all_threads=True)


def _run(connection: socket.socket) -> int:
    """In the forked process: receive a command and run it here (its exit status), or tell the launcher
    to start a new interpreter."""
    request, fds = _receive(connection)
    runnable = _runnable(request["argv"], request["env"], request["cwd"])
    if runnable is None:
        connection.sendall(b"new\n")
        return 0
    kind, target, args, unbuffered, added = runnable
    connection = _take_over(connection, request["fds"], fds)
    (Path(LAUNCHERS["pids"]) / str(request["launcher"])).write_text(str(os.getpid()))
    connection.sendall(f"run {os.getpid()}\n".encode())
    _die_with_the_launcher(connection)
    os.environ.clear()
    os.environ.update(request["env"])
    os.chdir(request["cwd"])
    _standard_streams(unbuffered)
    sys.executable = LAUNCHERS["python3"]  # what this process starts (torchrun's workers) is served too
    _fresh_process_state()
    sys.argv = [target, *args]
    sys.path[1:1] = added
    if any(Path(folder, "sitecustomize.py").is_file() for folder in added):
        sys.modules.pop("sitecustomize", None)
        importlib.import_module("sitecustomize")  # as `site` imports it at an interpreter's start
    code = 0
    try:
        if kind == "module":
            sys.path[0] = request["cwd"]
            sys.modules.pop(target, None)  # run afresh as __main__, as `python -m` does
            runpy.run_module(target, run_name="__main__", alter_sys=True)
        else:
            sys.path[0] = str(Path(target).parent)
            runpy.run_path(target, run_name="__main__")
    except SystemExit as exit:
        code = exit.code
    except KeyboardInterrupt:
        code = 130
    except BaseException:
        sys.excepthook(*sys.exc_info())
        code = 1
    finally:
        # as an interpreter does at its end: wait for every non-daemon thread, then the exit functions
        threading._shutdown()
        atexit._run_exitfuncs()
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError, AttributeError):
                pass
    if code is None or isinstance(code, int):
        return code or 0
    print(code, file=sys.stderr)
    return 1


DEFAULT_THREADS = 1  # what torch chose at the server's start: a new interpreter's thread count
IMPORT_STATE: tuple = ()  # the server's own _import_state
SERVER_PYTHONPATH = ""
SERVER_TIKTOKEN_CACHE = None
LAUNCHERS: dict[str, str] = {}


def _warm_up() -> None:
    """What every run does once, done here: the tokenizer's files read, matplotlib's fonts found."""
    import tempfile

    from gptdist import tokenizer
    from gptdist.observe import metrics

    try:
        tokenizer.gpt2_encoding()
    except Exception:  # offline without the files: each command then says so itself
        pass
    with tempfile.TemporaryDirectory() as folder:
        rows = Path(folder, "metrics.jsonl")
        rows.write_text('{"step": 0, "epoch": 0, "tokens_seen": 0, "train_loss": 1, "val_loss": 1}\n')
        metrics.plot_losses(rows, Path(folder, "loss.png"))


def _end_with_the_parent() -> None:
    """The server ends when the test process that started it does, however it ends (Linux's
    PR_SET_PDEATHSIG): a killed test run leaves no server behind."""
    import ctypes
    import ctypes.util

    try:
        ctypes.CDLL(ctypes.util.find_library("c")).prctl(1, signal.SIGKILL)  # 1: PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def serve(address: str, launchers: str) -> None:
    """Import everything once, then fork a process for each launcher that connects; when it ends, send
    the launcher its exit status."""
    global DEFAULT_THREADS, IMPORT_STATE, SERVER_PYTHONPATH, SERVER_TIKTOKEN_CACHE
    _end_with_the_parent()
    IMPORT_STATE = _import_state(dict(os.environ))  # before the imports, which set some (inductor's cache)
    SERVER_PYTHONPATH = os.environ.get("PYTHONPATH", "")
    SERVER_TIKTOKEN_CACHE = os.environ.get("TIKTOKEN_CACHE_DIR")
    for module in PRELOAD:
        __import__(module)
    _warm_up()
    gc.freeze()  # what is here stays here: no collection in a fork touches (and copies) the server's pages
    import torch

    DEFAULT_THREADS = torch.get_num_threads()
    LAUNCHERS.update({name: str(Path(launchers, name)) for name in ("python3", "python", "torchrun", "pids")})
    Path(LAUNCHERS["pids"]).mkdir(exist_ok=True)
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(address)
    listener.listen(64)
    reaped_r, reaped_w = os.pipe()
    os.set_blocking(reaped_w, False)
    signal.signal(signal.SIGCHLD, lambda *_: os.write(reaped_w, b"."))
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    connections: dict[int, socket.socket] = {}  # forked pid -> its launcher's connection
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ)
    selector.register(reaped_r, selectors.EVENT_READ)
    while True:
        for key, _ in selector.select():
            if key.fileobj is listener:
                connection, _ = listener.accept()
                pid = os.fork()
                if pid == 0:
                    code = 1
                    try:
                        selector.close()
                        listener.close()
                        for other in connections.values():
                            other.close()
                        code = _run(connection)
                    finally:
                        os._exit(code)
                connections[pid] = connection
                continue
            os.read(reaped_r, 4096)
            while True:
                try:
                    pid, status = os.waitpid(-1, os.WNOHANG)
                except ChildProcessError:
                    break
                if pid == 0:
                    break
                connection = connections.pop(pid, None)
                if connection is None:
                    continue
                code = os.waitstatus_to_exitcode(status)
                try:
                    connection.sendall((f"signal {-code}" if code < 0 else f"exit {code}").encode() + b"\n")
                except OSError:
                    pass
                connection.close()


if __name__ == "__main__":
    serve(sys.argv[1], sys.argv[2])
