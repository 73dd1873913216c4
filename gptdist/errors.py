"""User-facing errors: one clear line, a non-zero exit, never a traceback; and how a command ends.

A command that took part in process groups (under torchrun) ends without the interpreter's teardown,
whatever its outcome: freeing a gloo process group joins its communication threads while holding the
GIL, and a thread still finishing a collective (one that timed out, or whose work holds a Python
object) waits for that same GIL, so the rank never ends and its job hangs. Everything a command keeps
is closed by then (checkpoints written, logs closed); the console is flushed, and the process ends.
"""

import functools
import os
import sys
import traceback


class UserError(Exception):
    """A problem the user can fix: bad input, a missing file, an offline download.

    The message is printed as one line (prefixed with the program name) and the
    program exits with status 2. Everything else is a bug and keeps its traceback.
    """


def exit_now(code: int) -> None:
    """End the process with `code` after flushing the console, skipping the interpreter's teardown."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # a closed or broken stream: nothing more can be said on it
            pass
    os._exit(code)


def in_process_groups() -> bool:
    """Whether this process has joined process groups (torch.distributed, not imported for that)."""
    dist = sys.modules.get("torch.distributed")
    return dist is not None and dist.is_available() and dist.is_initialized()


def _end(code: int) -> None:
    """Exit with `code`: at once in process groups (see above), else as Python does."""
    if in_process_groups():
        exit_now(code)
    sys.exit(code)


def cli(program: str):
    """Decorate a `main()` so that a UserError becomes one line on stderr and exit code 2, and a command in
    process groups ends at once (see above)."""

    def wrap(main):
        @functools.wraps(main)
        def run(*args, **kwargs):
            try:
                result = main(*args, **kwargs)
            except UserError as err:
                rank = os.environ.get("RANK", "0")  # under torchrun, say which rank failed
                prefix = f"[rank {rank}] " if rank != "0" else ""
                print(f"{prefix}{program}: error: {err}", file=sys.stderr, flush=True)
                _end(2)
            except KeyboardInterrupt:
                print(f"{program}: interrupted", file=sys.stderr, flush=True)
                _end(130)
            except SystemExit as exit:
                if not in_process_groups():
                    raise
                if isinstance(exit.code, str):
                    print(exit.code, file=sys.stderr)
                exit_now(exit.code if isinstance(exit.code, int) else int(exit.code is not None))
            except BaseException:
                if not in_process_groups():
                    raise
                traceback.print_exc()  # a bug keeps its traceback
                exit_now(1)
            if in_process_groups():
                exit_now(0)
            return result

        return run

    return wrap
