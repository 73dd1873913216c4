"""User-facing errors: one clear line, a non-zero exit, never a traceback."""

import functools
import os
import sys


class UserError(Exception):
    """A problem the user can fix: bad input, a missing file, an offline download.

    The message is printed as one line (prefixed with the program name) and the
    program exits with status 2. Everything else is a bug and keeps its traceback.
    """


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
                sys.exit(2)
            except KeyboardInterrupt:
                print(f"{program}: interrupted", file=sys.stderr, flush=True)
                sys.exit(130)

        return run

    return wrap
