"""How the tests run gptdist's commands: as real processes (torchrun, its agents and workers included), each
forked from a preloaded server (tests/preloaded.py) or, with GPTDIST_TESTS_FRESH=1, each a new interpreter;
or, where nothing about a process is under test, in the test process itself (`run_main`). And how they find,
stop, kill and wait for those processes."""

import contextlib
import importlib
import importlib.util
import io
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import environment
import preloaded
import pytest

from gptdist.files.replace import own_temporary_folder

REPO = environment.REPO
# GPTDIST_TESTS_FRESH=1: every command in a new interpreter, as a user's shell starts it (slower: each
# imports torch again); otherwise forked from the preloaded server.
FRESH = os.environ.get("GPTDIST_TESTS_FRESH") == "1"
# `python3`, `python` and `torchrun` for every process the tests start: each is forked from this test
# process's preloaded server, or is a new interpreter until the server is up.
# (named for this host and process: what a killed test run left is removed here the next time)
LAUNCHERS = None if FRESH else own_temporary_folder("gptdist-tests-python")
PYTHON = sys.executable if FRESH else str(LAUNCHERS / "python3")
if not FRESH:
    preloaded.write_launchers(LAUNCHERS, str(LAUNCHERS / "server"))
    os.environ["PATH"] = f"{LAUNCHERS}{os.pathsep}{os.environ['PATH']}"
HOOKS = REPO / "tests" / "hooks"


@contextlib.contextmanager
def preloaded_server():
    """The server that this test process's launchers hand their commands to (none with FRESH)."""
    if FRESH:
        yield
        return
    server = subprocess.Popen([sys.executable, preloaded.__file__, str(LAUNCHERS / "server"), str(LAUNCHERS)],
                              cwd=REPO)
    deadline = time.time() + 120
    while not (LAUNCHERS / "server").exists() and server.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    try:
        yield
    finally:
        server.kill()
        server.wait()
        import shutil

        shutil.rmtree(LAUNCHERS, ignore_errors=True)


# --- commands ----------------------------------------------------------------------------------------


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


def torchrun_command(nproc: int, *args, launch=("--standalone",), module="gptdist.train") -> list[str]:
    """torchrun with `nproc` workers of `module args...`; `launch` its rendezvous and restarts."""
    return [PYTHON, "-m", "torch.distributed.run", *launch, f"--nproc_per_node={nproc}", "-m", module,
            *map(str, args)]


def train_command(nproc: int | None, *args) -> list[str]:
    """`gptdist.train args...` under torchrun with `nproc` workers, or (None) in one process of its own
    without torchrun."""
    if nproc is None:
        return [PYTHON, "-m", "gptdist.train", *map(str, args)]
    return torchrun_command(nproc, *args)


def train(nproc: int | None, *args, env: dict | None = None, cwd=REPO,
          check=True) -> subprocess.CompletedProcess:
    """A training run to its end (`train_command`), output captured; with `check`, it must succeed."""
    result = subprocess.run(train_command(nproc, *args), capture_output=True, text=True, cwd=cwd,
                            env=env, timeout=600)
    if check:
        assert result.returncode == 0, result.stdout[-1500:] + result.stderr[-3000:]
    return result


def start(command: list[str], env: dict | None = None, **popen) -> subprocess.Popen:
    """A command in the background, in the checkout, its output to pipes unless told otherwise."""
    popen = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True, **popen}
    return subprocess.Popen(command, cwd=REPO, env=env, **popen)


def hooks_env(gate: Path | None = None, unreadable: Path | None = None, unreadable_ranks: str = "",
              opened: Path | None = None, stall: str | None = None, spike: int | None = None) -> dict:
    """The environment of a command under tests/hooks: its checkpoint writes held at `gate`
    (tests/hooks/sitecustomize.py: `gate/NAME.held` says a write waits, `gate/NAME` or `gate/all` releases
    it), the files under `unreadable` refused to `unreadable_ranks` (each rank's opens listed in
    `opened`), rank R's read of step S's batch stuck (`stall` "R:S"), step `spike`'s batch random."""
    env = {**os.environ,
           "PYTHONPATH": os.pathsep.join(filter(None, [str(HOOKS), os.environ.get("PYTHONPATH")]))}
    if gate is not None:
        gate.mkdir(exist_ok=True)
        env["GPTDIST_TESTS_GATE"] = str(gate)
    if unreadable is not None:
        opened.mkdir(exist_ok=True)
        env.update(GPTDIST_TESTS_UNREADABLE=str(unreadable), GPTDIST_TESTS_UNREADABLE_RANKS=unreadable_ranks,
                   GPTDIST_TESTS_OPENED=str(opened))
    if stall is not None:
        env["GPTDIST_TESTS_STALL"] = stall
    if spike is not None:
        env["GPTDIST_TESTS_SPIKE"] = str(spike)
    return env


# --- processes ---------------------------------------------------------------------------------------


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
    found by their command lines (a forked command's launcher: see `forked_pid`)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        if f"run.out_dir={out_dir}".encode() not in args or not any(b"gptdist" in arg for arg in args):
            continue
        agent = b"torch.distributed.run" in args or any(arg.endswith(b"torchrun") for arg in args)
        if agent == agents:
            found.append(int(cmdline.parent.name))
    return sorted(found)


def rank_pids(out_dir: Path) -> dict[int, int]:
    """{rank: pid} of the workers training into `out_dir`: the processes that run them (forked or not)."""
    ranks = {}
    for pid in run_processes(out_dir):
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        rank = next((int(v.split(b"=", 1)[1]) for v in environ if v.startswith(b"RANK=")), None)
        if rank is not None:
            ranks[rank] = forked_pid(pid)
    return ranks


def forked_pid(process: subprocess.Popen | int) -> int:
    """The pid of the process that runs a command (a Popen or its pid): the one the preloaded server forked
    for its launcher, or the process itself where it is a new interpreter."""
    pid = process if isinstance(process, int) else process.pid
    forked = LAUNCHERS / "pids" / str(pid) if LAUNCHERS else None
    return int(forked.read_text()) if forked and forked.exists() else pid


def wait_for_exit(pids: list[int], timeout: float = 30) -> None:
    """Wait until processes that are not our children have ended, with a launcher the process forked for
    it: every thread gone, the main one a zombie at most (only then are its files, and its locks, closed)."""
    deadline = time.time() + timeout
    for pid in {*pids, *map(forked_pid, pids)}:
        while True:
            try:
                zombie = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
                if zombie and len(os.listdir(f"/proc/{pid}/task")) <= 1:
                    break
            except OSError:
                break
            assert time.time() < deadline, f"process {pid} is still running"
            time.sleep(0.01)


def kill_job(agent: subprocess.Popen, out_dir: Path) -> None:
    """SIGKILL a torchrun job's agent and workers at once, as a node failure would (torchrun starts its
    workers in sessions of their own: killed by pid, not by group), and wait until they are gone."""
    workers = run_processes(out_dir)
    for pid in [*workers, agent.pid]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    agent.wait()
    wait_for_exit(workers)


def finish_or_show_stacks(agent: subprocess.Popen, out_dir: Path, log_dir: Path, timeout: float) -> str:
    """The output of torchrun `agent` (run with PYTHONFAULTHANDLER=1 and `--log-dir log_dir`) once it ends;
    if it has not ended within `timeout`, every worker is made to print its threads' stacks (SIGABRT, which
    faulthandler answers), the job is killed, and the test fails with the agent's and workers' logs."""
    try:
        return agent.communicate(timeout=timeout)[0]
    except subprocess.TimeoutExpired:
        pass
    workers = run_processes(out_dir)
    for pid in workers:
        with contextlib.suppress(ProcessLookupError):
            os.kill(forked_pid(pid), signal.SIGABRT)
    time.sleep(3)
    kill_job(agent, out_dir)
    output = agent.communicate()[0] or ""
    logs = "".join(f"\n--- {path.relative_to(log_dir)}\n{path.read_text(errors='replace')[-4000:]}"
                   for path in sorted(log_dir.rglob("*.log")))
    pytest.fail(f"torchrun did not end within {timeout:.0f} s (workers {workers} made to print their "
                f"stacks)\n"
                f"--- the agent's output\n{output[-6000:]}{logs}")


def start_restartable(nproc: int, *args, logs: Path, rendezvous=("--standalone",)) -> subprocess.Popen:
    """torchrun with `nproc` workers of `gptdist.train args...` under --max-restarts=1, its output (stdout and
    stderr together) to a pipe; each worker's output also in a file of its own under `logs`, and its stacks
    printed on SIGABRT (see `finish_or_show_stacks`)."""
    launch = [*rendezvous, "--max-restarts=1", f"--log-dir={logs}", "--redirects=3", "--tee=3"]
    return start(torchrun_command(nproc, *args, launch=launch), env={**os.environ, "PYTHONFAULTHANDLER": "1"},
                 stderr=subprocess.STDOUT)


def kill_a_worker_once_saved(agent: subprocess.Popen, checkpoint: Path, log_dir: Path) -> str:
    """Once `checkpoint` exists, SIGKILL the second of torchrun `agent`'s two workers, as a crash would;
    returns the agent's output once it ends, having restarted them under --max-restarts (see
    `finish_or_show_stacks` for a job that hangs)."""
    wait_for(checkpoint.exists, agent)
    workers = run_processes(checkpoint.parent.parent)
    assert len(workers) == 2
    os.kill(workers[1], signal.SIGKILL)
    output = finish_or_show_stacks(agent, checkpoint.parent.parent, log_dir, timeout=300)
    assert agent.returncode == 0, output[-3000:]
    assert "resumed from" in output, output[-3000:]
    return output


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
