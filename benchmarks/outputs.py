"""The files a benchmark writes its results into: never over a file of the user's."""

import json
from pathlib import Path


def check_outputs(outputs, error) -> None:
    """Each (flag, path, kind) of `outputs` a file this benchmark may write: its folder exists, and the file
    is absent or one a benchmark wrote (JSON rows, a PNG); else `error(message)`, raised."""
    for flag, path, kind in outputs:
        path = Path(path)
        if not path.resolve().parent.is_dir():
            raise error(f"{flag} {path}: the folder {path.parent} does not exist")
        if path.is_dir() or path.is_symlink() or (path.exists() and not written_here(path)):
            raise error(
                f"{flag} {path} exists and is not {kind} this benchmark writes; choose another {flag}"
            )


def written_here(path: Path) -> bool:
    """Whether `path` is what a benchmark writes there: rows of JSON objects, or a PNG."""
    if path.suffix == ".png":
        with open(path, "rb") as f:
            return f.read(8) == b"\x89PNG\r\n\x1a\n"
    try:
        rows = [line for line in path.read_text().splitlines() if line.strip()]
        return all(isinstance(json.loads(row), dict) for row in rows)
    except (ValueError, UnicodeDecodeError):
        return False
