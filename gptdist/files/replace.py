"""What gptdist may replace or delete: one rule, shared by every command that does either.

A folder or file is replaced or deleted only when gptdist made it for the same purpose (its
`Kind` says which entries such a write makes), never when it is, holds or lies inside an input
of the command; otherwise the command stops with one line saying what is there and why it was
kept. A replacement is written beside the target first (`.NAME.tmp-HOST-PID`) and swapped in
whole (the old one set aside as `.NAME.old-HOST-PID` until then), so a process killed at any
moment leaves either the old folder or the new one: the next command into the same place puts
an old one back or removes the half-written one of a dead process, and says so.
"""

import os
import re
import shutil
import socket
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError


@dataclass(frozen=True)
class Kind:
    """What gptdist writes for one purpose: `name` ("an export folder") and `writer` ("export") for
    messages, and `foreign(path)`: the entries of a folder that such a write never makes, or for a
    file, [its name] unless it is one (none: the folder or file is one of them)."""

    name: str
    writer: str
    foreign: Callable[[Path], list[str]]


def check_apart(out: Path, inputs: Iterable[tuple[str, str | Path | None]], label: str) -> None:
    """Refuse an output `out` (named `label` in messages) that is, holds or lies inside one of the
    command's `inputs`, given as (the flag or key that named it, its path)."""
    target = os.path.realpath(out)
    resolved_folders: dict[str, str] = {}
    for name, path in inputs:
        if path is None:
            continue
        source = _resolved(os.fspath(path), resolved_folders)
        if source == target:
            relation = "is"
        elif source.startswith(_inside(target)):
            relation = "holds"
        elif target.startswith(_inside(source)):
            relation = "lies inside"
        else:
            continue
        raise UserError(f"{label} {out} {relation} the input {path} ({name}): gptdist never writes where "
                        f"it reads; choose a {label} outside it")


def _resolved(path: str, resolved_folders: dict[str, str]) -> str:
    """os.path.realpath(path), each folder resolved once for all the files in it that are not links
    (a prepare's input may be 10^5 files of a few folders)."""
    folder, name = os.path.split(path)
    if name in ("", ".", "..") or os.path.islink(path):
        return os.path.realpath(path)
    if folder not in resolved_folders:
        resolved_folders[folder] = os.path.realpath(folder or ".")
    return os.path.join(resolved_folders[folder], name)


def _inside(folder: str) -> str:
    """The prefix of every path inside `folder` ("/" itself included)."""
    return folder.rstrip(os.sep) + os.sep


def check_replaceable(out: Path, kind: Kind, overwrite: bool, label: str = "--out") -> None:
    """Refuse an existing `out` unless it is empty, or is `kind` and `overwrite` is set."""
    if not out.exists() and not out.is_symlink():
        return
    if out.is_symlink() or not out.is_dir():
        raise UserError(f"{label} {out} already exists and is not a folder; choose another {label}")
    if not any(out.iterdir()):
        return
    foreign = kind.foreign(out)
    if foreign:
        raise UserError(f"{label} {out} holds {foreign[0]!r}, which {kind.writer} did not write: it is not "
                        f"{kind.name}, the only kind --overwrite replaces; choose another {label}")
    if not overwrite:
        raise UserError(f"{label} {out} already holds {kind.name}; pass --overwrite to replace it")


def temporary_name(out: Path, role: str) -> Path:
    """`.NAME.ROLE-HOST-PID` beside `out`: the host and process that own it, to tell stale ones."""
    return out.with_name(f".{out.name}.{role}-{socket.gethostname()}-{os.getpid()}")


def process_alive(pid: int) -> bool:
    """Whether process `pid` still runs on this host: a zombie (ended, not yet reaped) does not."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        pass
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:  # it ended just now, or there is no /proc: then kill's answer is all there is
        return not Path("/proc").is_dir()
    return state != "Z"


def own_temporary_folder(prefix: str) -> Path:
    """A new folder in the system's temporary folder named for this host and process,
    `PREFIX-HOST-PID-XXXXXXXX`; the folders of that prefix that processes on this host which no longer run
    left there (killed before they could remove them) are removed first. The caller removes its own."""
    root, host = Path(tempfile.gettempdir()), socket.gethostname()
    stale = re.compile(rf"^{re.escape(prefix)}-{re.escape(host)}-(\d+)-")
    for entry in root.iterdir():
        match = stale.match(entry.name)
        if match and entry.is_dir() and not entry.is_symlink() and not process_alive(int(match.group(1))):
            shutil.rmtree(entry, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=f"{prefix}-{host}-{os.getpid()}-"))


def clean_stale_temporaries(out: Path) -> None:
    """Remove what a killed replacement of `out` on this host left beside it; put back a folder it had set
    aside. Another host's or a live process's temporaries are left alone."""
    if not out.parent.is_dir():
        return
    stale = re.compile(rf"^\.{re.escape(out.name)}\.(tmp|old)-{re.escape(socket.gethostname())}-(\d+)$")
    for entry in sorted(out.parent.iterdir()):
        match = stale.match(entry.name)
        if not match or process_alive(int(match.group(2))) or entry.is_symlink() or not entry.is_dir():
            continue
        if match.group(1) == "old" and not out.exists():  # killed between its two renames
            entry.rename(out)
            print(f"restored {out} from {entry.name}, left by a process killed while replacing it")
        else:
            shutil.rmtree(entry)
            print(f"removed {entry.name}, left by a process that did not finish (process {match.group(2)} "
                  "is gone)")


def replace_folder(out: Path, kind: Kind, overwrite: bool, fill: Callable[[Path], object],
                   label: str = "--out", kept: Path | None = None):
    """Write the folder `out` through `fill(temporary_folder)` and move it into place whole; returns what
    `fill` returns. An existing `out` is replaced only as `check_replaceable` allows, once the new one
    is complete. (`check_apart` on the command's inputs comes first, where the command has them.)

    `kept`: a temporary folder of a fixed name that outlives a failed or killed write (a prepare
    resumes from it: data/progress.py) instead of one of this process's own that goes with it."""
    clean_stale_temporaries(out)  # first: a folder a killed process was replacing is put back
    check_replaceable(out, kind, overwrite, label)
    tmp = kept or temporary_name(out, "tmp")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp.mkdir(exist_ok=kept is not None)
    except OSError as err:
        raise UserError(f"cannot write {out} ({err.strerror})") from None
    try:
        result = fill(tmp)
        if out.exists():  # the old folder goes only once the new one is complete
            old = temporary_name(out, "old")
            os.replace(out, old)
            try:
                os.replace(tmp, out)
            except OSError:
                os.replace(old, out)
                raise
            shutil.rmtree(old)
        else:
            os.replace(tmp, out)
        return result
    except OSError as err:
        raise UserError(f"cannot write {out} ({err.strerror or err}); it was left as it was") from None
    finally:
        if kept is None:
            shutil.rmtree(tmp, ignore_errors=True)


def remove_own(path: Path, kind: Kind) -> bool:
    """Delete `path` if it is `kind` (a file, or a folder of only `kind`'s entries; a link is never
    followed). Returns whether it was removed."""
    if path.is_symlink() or not path.exists() or kind.foreign(path):
        return False
    shutil.rmtree(path) if path.is_dir() else path.unlink()
    return True
