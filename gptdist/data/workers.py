"""Worker processes that hand back their results in the order of their tasks: prepare's tokenizers.

multiprocessing.Pool passes every task and result through two helper threads of the main process
and a 64 kB pipe, which a worker's result of half a megabyte crosses in eight turns: with two workers
on two cores that cost the main process 0.2 s of CPU in a 2.5 s prepare, taken from the workers. Here
the main process waits on the workers' own pipes (1 MB where Linux allows it) and nothing else. A
task goes only to an idle worker, which is waiting for it, so neither side ever waits on the other
to send; and at most `IN_FLIGHT` tasks per worker are out (sent, or done and waiting for their turn),
so a streamed corpus is never read far ahead of its tokenizers.
"""

import fcntl
import multiprocessing
import signal
import traceback
from collections.abc import Callable, Iterable, Iterator
from multiprocessing.connection import Connection, wait

from ..errors import UserError

IN_FLIGHT = 4  # tasks per worker sent or waiting for their turn
PIPE_BYTES = 1 << 20  # a result pipe's size, where the system allows it (Linux; 64 kB otherwise)


def start_context():
    """Processes forked where the platform can (what the main process loaded, the tokenizer, goes
    along), spawned elsewhere."""
    return multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods()
                                       else "spawn")


def _serve(function: Callable, tasks: Connection, results: Connection, main_ends: list[Connection]) -> None:
    """A worker: each task received, its result (or the exception it raised) sent back, until None."""
    for end in main_ends:  # a fork's copies of the main process's ends: with them open here, a killed
        end.close()  # main process would never read as EOF, and the workers would wait on forever
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's to handle: it ends us
    try:
        while (task := tasks.recv()) is not None:
            try:
                outcome = (True, function(task), None)
            except Exception as err:  # noqa: BLE001 - raised again in the main process, where it belongs
                outcome = (False, err, traceback.format_exc())
            try:
                results.send(outcome)
            except Exception as err:  # noqa: BLE001 - an exception that does not pickle: its words instead
                results.send((False, RuntimeError(f"{outcome[1]!r} ({err})"), outcome[2]))
    except (EOFError, BrokenPipeError):  # the main process is gone (killed): nothing to hand back to
        pass


class WorkerTraceback(Exception):
    """Where in a worker the exception raised in the main process came from (a bug's traceback shows it)."""

    def __str__(self):
        return f"\n\n{self.args[0]}"


class _Worker:
    def __init__(self, context, function: Callable, earlier: list["_Worker"]):
        self.task_reader, self.tasks = context.Pipe(duplex=False)
        self.results, self.result_writer = context.Pipe(duplex=False)
        main_ends = [end for worker in [*earlier, self] for end in (worker.tasks, worker.results)]
        if hasattr(fcntl, "F_SETPIPE_SZ"):
            try:
                fcntl.fcntl(self.results.fileno(), fcntl.F_SETPIPE_SZ, PIPE_BYTES)
            except OSError:  # a smaller limit (/proc/sys/fs/pipe-max-size): more turns, same results
                pass
        self.process = context.Process(target=_serve, daemon=True,
                                       args=(function, self.task_reader, self.result_writer, main_ends))
        self.process.start()
        self.task_reader.close()  # the worker's ends: with them closed here, a dead worker reads as EOF
        self.result_writer.close()

    def outcome(self) -> tuple[bool, object, str | None]:
        """(True, the result, None) or (False, the exception, its traceback) of the task sent last."""
        try:
            return self.results.recv()
        except EOFError:
            self.process.join()
            raise UserError(f"a worker process (pid {self.process.pid}) ended with exit code "
                            f"{self.process.exitcode} (killed? out of memory?); run the same command again "
                            "to go on from where it was") from None

    def stop(self, finished: bool) -> None:
        if finished:
            self.tasks.send(None)
        else:
            self.process.terminate()
        self.process.join()
        self.tasks.close()
        self.results.close()


def ordered_map(function: Callable, tasks: Iterable, workers: int) -> Iterator:
    """function(task) for every task, computed by `workers` processes, yielded in the tasks' order.

    An exception a task raised is raised here, at its turn; a worker that dies is one line. The
    workers end with the iterator (at once, when it is closed before its end)."""
    context = start_context()
    pool: list[_Worker] = []
    for _ in range(workers):
        pool.append(_Worker(context, function, pool))
    pending, end = iter(tasks), object()
    idle, running, done = list(pool), {}, {}  # running: result pipe -> (worker, task number)
    sent = turn = 0
    exhausted = finished = False
    try:
        while not (exhausted and turn == sent):
            while idle and not exhausted and sent - turn < IN_FLIGHT * workers:
                task = next(pending, end)
                if task is end:
                    exhausted = True
                    break
                worker = idle.pop()
                worker.tasks.send(task)
                running[worker.results] = (worker, sent)
                sent += 1
            for results in wait(list(running)) if running else ():
                worker, number = running.pop(results)
                done[number] = worker.outcome()
                idle.append(worker)
            while turn in done:
                succeeded, value, trace = done.pop(turn)
                if not succeeded:
                    raise value from (None if isinstance(value, UserError) else WorkerTraceback(trace))
                yield value
                turn += 1
        finished = True
    finally:
        for worker in pool:
            worker.stop(finished)
