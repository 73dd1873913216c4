"""Downloads into a cache folder: verified, resumable, never half-counted as complete.

A file is downloaded to `NAME.part` (resumed with an HTTP Range request when a
partial one exists), checked against its known size and sha256, and only then
renamed to `NAME`. A cached file is re-verified before it is reused.
"""

import os
import urllib.error
import urllib.request
from pathlib import Path

from tqdm import tqdm

from ..errors import UserError
from .durable import CHUNK, sha256_of


def cache_dir() -> Path:
    """The download cache: $GPTDIST_CACHE, default ~/.cache/gptdist."""
    return Path(os.environ.get("GPTDIST_CACHE") or Path.home() / ".cache" / "gptdist")


def _matches(path: Path, size: int | None, sha256: str | None) -> bool:
    if size is not None and path.stat().st_size != size:
        return False
    return sha256 is None or sha256_of(path) == sha256


def _fetch(url: str, part: Path, desc: str) -> int | None:
    """Append the rest of `url` to `part`, resuming where an earlier attempt stopped.

    Returns the whole file's size as the server announced it (None if it did not).
    """
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "gptdist"})
    if have:
        request.add_header("Range", f"bytes={have}-")
    with urllib.request.urlopen(request, timeout=30) as response:
        if have and response.status != 206:  # the server ignored the range: start over
            have = 0
        total = response.headers.get("Content-Length")
        total = int(total) + have if total is not None else None
        with open(part, "ab" if have else "wb") as out, tqdm(
            total=total, initial=have, unit="B", unit_scale=True, desc=desc, leave=False
        ) as bar:
            while chunk := response.read(CHUNK):
                out.write(chunk)
                bar.update(len(chunk))
    return total


def download(urls: list[str], dest: Path, size: int | None = None, sha256: str | None = None) -> Path:
    """Return `dest`, downloading it from the first of `urls` that works if it is not cached.

    `size` (else the size the server announces) and `sha256`, where known, are checked;
    a file that fails them is never kept as complete.
    """
    dest = Path(dest)
    if dest.exists():
        if _matches(dest, size, sha256):
            return dest
        raise UserError(
            f"cached file {dest} does not match its expected size/sha256; delete it to download again"
        )
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    failures = []
    for url in urls:
        try:
            announced = _fetch(url, part, dest.name)
        except (urllib.error.URLError, OSError, TimeoutError) as err:
            failures.append(f"{url}: {getattr(err, 'reason', err)}")
            continue
        if _matches(part, size or announced, sha256):
            os.replace(part, dest)
            return dest
        failures.append(f"{url}: downloaded file has the wrong size or sha256")
        part.unlink()
    raise UserError(
        f"cannot download {dest.name} ({'; '.join(failures)}); offline, place the file at {dest}"
    )
