"""File-system helpers every room uses: a file's sha256, a durable write or rename, a folder
replaced only once its successor is whole."""

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

from .errors import UserError

CHUNK = 1 << 20


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def fsync_path(path: Path) -> None:
    """Flush a file, or a folder's entries (a rename in it), to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_folder(out: Path, overwrite: bool, fill) -> None:
    """Write a folder through `fill(temporary_folder)`, then move it to `out` whole.

    An existing `out` is replaced only with `overwrite`, and only once the new folder is complete:
    the old one is moved aside, the new one renamed in (the old one put back if that fails), then
    the old one removed.
    """
    if out.exists() and not (overwrite and out.is_dir()):
        raise UserError(f"{out} already exists" + ("; pass --overwrite to replace it" if out.is_dir() else
                                                  " and is not a folder"))
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        temporary = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    except OSError as err:
        raise UserError(f"cannot write {out} ({err.strerror})") from None
    try:
        umask = os.umask(0)
        os.umask(umask)
        temporary.chmod(0o777 & ~umask)  # mkdtemp's folder is private; the new one is an ordinary one
        fill(temporary)
        for file in temporary.iterdir():  # some writers make their files private too
            file.chmod(0o666 & ~umask)
        if out.exists():
            old = temporary.with_suffix(".old")
            os.replace(out, old)
            try:
                os.replace(temporary, out)
            except OSError:
                os.replace(old, out)
                raise
            shutil.rmtree(old)
        else:
            os.replace(temporary, out)
    except OSError as err:
        raise UserError(f"cannot write {out} ({err.strerror}); it was left as it was") from None
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
