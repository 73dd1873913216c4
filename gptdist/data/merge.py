"""`python -m gptdist.prepare --merge PARTS... --out DIR`: the parts of one input (`--part K/N`) as one
prepared folder.

The parts' shards are linked into DIR, not copied (a hard link, or a symbolic one across file
systems), in the order of the parts, and one manifest lists them. Each part split its documents by
their position in the whole input, so the merged splits hold the same documents in the same order,
and the same token streams, as a prepare of the whole input: a run trains on it exactly as on that.
"""

import os
from pathlib import Path

from ..errors import UserError
from ..files.replace import replace_folder
from . import shards
from .preparation import PREPARED
from .tally import Tally

# what every part must share with the others to be one input's (the source's keys)
SHARED = ("gutenberg", "val_fraction", "seed", "shard_tokens", "gptdist_version")


def checked_parts(folders: list[str]) -> list[shards.Manifest]:
    """The parts' manifests in part order; refused in one line unless they are parts 1..N of one input."""
    manifests = [shards.read_manifest(folder) for folder in folders]
    for manifest in manifests:
        if "part" not in manifest.raw["source"]:
            raise UserError(f"{manifest.folder} is not a part (prepare it with --part K/N); --merge joins "
                            "parts")
    manifests.sort(key=lambda m: m.raw["source"]["part"]["number"])
    numbers = [m.raw["source"]["part"]["number"] for m in manifests]
    count = manifests[0].raw["source"]["part"]["of"]
    if numbers != list(range(1, count + 1)) or any(m.raw["source"]["part"]["of"] != count for m in manifests):
        raise UserError(f"--merge needs parts 1 to {count} of one input, each once; it was given parts "
                        f"{', '.join(map(str, numbers))}")
    first = manifests[0]
    for manifest in manifests[1:]:
        for key in ("tokenizer", "vocab_size", "eot_token", "dtype"):
            if manifest.raw[key] != first.raw[key]:
                raise UserError(f"{manifest.folder} was prepared with {key} {manifest.raw[key]!r} but "
                                f"{first.folder} with {first.raw[key]!r}: not parts of one prepare")
        for key in SHARED:
            theirs, mine = manifest.raw["source"].get(key), first.raw["source"].get(key)
            if theirs != mine:
                raise UserError(f"{manifest.folder} was prepared with {key} {theirs!r} but {first.folder} "
                                f"with {mine!r}: prepare every part with the same arguments")
    return manifests


def link(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:  # another file system: a symbolic link to where the part keeps it
        os.symlink(source.resolve(), target)


def merge(folders: list[str], out: str, overwrite: bool) -> dict:
    """Write the merged folder `out` (atomically, as a prepare does); returns its manifest."""
    parts = checked_parts(folders)
    splits = {split: {"tokens": sum(p.splits[split]["tokens"] for p in parts),
                      "documents": sum(p.splits[split]["documents"] for p in parts)}
              for split in shards.SPLITS}
    for split, totals in splits.items():
        if not totals["documents"]:
            raise UserError(f"the parts hold no {split} document: the input has too few documents to split "
                            "by document; prepare it whole (it is then split inside its text)")

    def fill(tmp: Path) -> dict:
        for split in shards.SPLITS:
            listed = []
            for part in parts:
                for shard, path in zip(part.splits[split]["shards"], part.shard_paths(split), strict=True):
                    name = f"{split}-{len(listed):05d}.bin"
                    link(path, tmp / name)
                    listed.append({**shard, "path": name})
            splits[split]["shards"] = listed
        sources = [p.raw["source"] for p in parts]
        tally = Tally()
        for s in sources:
            tally.add_tally(s)
        first = parts[0].raw
        source = {key: first["source"][key] for key in SHARED}
        if "inputs" in first["source"]:
            source["inputs"] = [name for s in sources for name in s["inputs"]]
        if "dataset" in first["source"]:
            source["dataset"] = first["source"]["dataset"]
        manifest = {key: first[key] for key in ("format", "tokenizer", "vocab_size", "eot_token", "dtype")}
        manifest.update(splits=splits, source={**source, "split_by": "documents", **tally.state_dict(),
                                                "merged_from": [str(p.folder) for p in parts]})
        shards.write_manifest(tmp, manifest)
        return manifest

    return replace_folder(Path(out), PREPARED, overwrite, fill)
