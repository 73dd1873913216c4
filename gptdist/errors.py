"""User-facing errors: one clear line, a non-zero exit, never a traceback."""

import functools
import os
import sys


class UserError(Exception):
    """A problem the user can fix: bad input, a missing file, an offline download.

    The message is printed as one line (prefixed with the program name) and the
    program exits with status 2. Everything else is a bug and keeps its traceback.
    """

    # Whether the program must end without the interpreter's teardown: a collective that timed out
    # leaves a communication thread waiting on a peer, and freeing its process group at exit waits on
    # that thread while holding the GIL the thread needs to finish (a process that never ends).
    exit_at_once = False


def exit_now(code: int) -> None:
    """End the process with `code` after flushing the console, skipping the interpreter's teardown."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # a closed or broken stream: nothing more can be said on it
            pass
    os._exit(code)


def cli(program: str):
    """Decorate a `main()` so that a UserError becomes one line on stderr and exit code 2."""

    def wrap(main):
        @functools.wraps(main)
        def run(*args, **kwargs):
            try:
                return main(*args, **kwargs)
            except UserError as err:
                rank = os.environ.get("RANK", "0")  # under torchrun, say which rank failed
                prefix = f"[rank {rank}] " if rank != "0" else ""
                print(f"{prefix}{program}: error: {err}", file=sys.stderr, flush=True)
                if err.exit_at_once:
                    exit_now(2)
                sys.exit(2)
            except KeyboardInterrupt:
                print(f"{program}: interrupted", file=sys.stderr, flush=True)
                sys.exit(130)

        return run

    return wrap
