"""HellaSwag (Zellers et al., 2019): which of four endings does the model find likeliest after a context?

Scored completion style, as llm.c and build-nanogpt score it: each ending, encoded as
" " + ending after the encoded context, gets the sum of its tokens' log-probabilities
(`acc`: the highest sum is the model's answer) and their mean per token (`acc_norm`: the
highest mean). OpenAI's GPT-2 124M scores acc 0.2859, acc_norm 0.2955 this way. Under
torchrun the items are split rank::world_size and the counts summed exactly.
"""

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from .. import distributed
from ..errors import UserError
from ..files.download import cache_dir, download
from ..model.loss import IGNORE_INDEX
from ..tokenizer import encode

VAL_URL = "https://raw.githubusercontent.com/rowanz/hellaswag/master/data/hellaswag_val.jsonl"
VAL_ITEMS = 10042
VAL_GIT_BLOB = "0f5ee25d72216f12317d5d8a7b92deafa423d81e"  # git's hash of the file in rowanz/hellaswag
ENDINGS = 4


@dataclass
class Item:
    context: list[int]
    endings: list[list[int]]
    label: int


def git_blob_sha1(path: Path) -> str:
    """The hash git gives a file's content: sha1 of "blob SIZE\\0" + content."""
    data = path.read_bytes()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def official_val() -> Path:
    """The official validation set, downloaded once into the cache (size and git hash checked)."""
    path = download([VAL_URL], cache_dir() / "hellaswag" / "hellaswag_val.jsonl")
    if git_blob_sha1(path) != VAL_GIT_BLOB:  # kept: it may be a file the user placed there
        raise UserError(f"{path} is not HellaSwag's official validation set (its git hash differs); "
                        "delete it to download it afresh")
    return path


def read_items(path: Path, limit: int | None = None) -> list[Item]:
    """The first `limit` items of a file in the official JSONL format (ctx, endings, label), tokenized."""
    items = []
    try:
        lines = Path(path).read_text().splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"cannot read HellaSwag file {path} ({type(err).__name__}: {err})") from None
    for number, line in enumerate(lines[:limit], 1):
        try:
            row = json.loads(line)
            endings, label = row["endings"], row["label"]
            well_formed = len(endings) == ENDINGS and all(isinstance(e, str) for e in endings)
            if not well_formed or label not in range(ENDINGS):
                raise ValueError(f"{ENDINGS} endings and a label 0-{ENDINGS - 1} expected")
            items.append(Item(encode(row["ctx"]), [encode(" " + ending) for ending in endings], int(label)))
        except (ValueError, KeyError, TypeError) as err:
            raise UserError(f"{path}:{number} is not a HellaSwag item ({type(err).__name__}: {err}); "
                            "expected the official JSONL format with ctx, endings and label") from None
    if not items:
        raise UserError(f"HellaSwag file {path} holds no items")
    return items


def load(file: str | None, limit: int | None, ctx: distributed.Dist) -> list[Item]:
    """`file`'s items, or the official validation set's (downloaded once per node)."""
    if file is not None:
        return read_items(Path(file), limit)
    if ctx.local_rank == 0:
        official_val()
    distributed.barrier()
    items = read_items(official_val(), limit)
    if limit is None and len(items) != VAL_ITEMS:
        raise UserError(f"HellaSwag's validation set should hold {VAL_ITEMS} items, the cached one "
                        f"{len(items)}")
    return items


def batch_rows(items: list[Item], context_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(tokens, targets): a row per ending, context + ending (cut from the left to fit), targets only on
    the ending."""
    rows = []
    for item in items:
        for ending in item.endings:
            sequence = (item.context + ending)[-(context_length + 1) :]
            # the position predicting the ending's first token
            first_target = max(len(sequence) - len(ending), 1) - 1
            rows.append((sequence, first_target))
    width = max(len(sequence) for sequence, _ in rows) - 1
    tokens = torch.zeros(len(rows), width, dtype=torch.long)
    targets = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    for row, (sequence, first_target) in enumerate(rows):
        tokens[row, : len(sequence) - 1] = torch.tensor(sequence[:-1])
        targets[row, first_target : len(sequence) - 1] = torch.tensor(sequence[first_target + 1 :])
    return tokens, targets


@torch.no_grad()
def score(model: torch.nn.Module, items: list[Item], ctx: distributed.Dist, autocast,
          batch_rows_hint: int) -> dict:
    """acc and acc_norm of `model` on `items`, each rank scoring its share; the same result on every rank.

    `batch_rows_hint` sequences per forward, rounded down to whole items (four sequences each).
    """
    largest = max(max(item.context + [token for ending in item.endings for token in ending])
                  for item in items)
    if largest >= model.cfg.vocab_size:
        raise UserError(f"HellaSwag's text encodes to GPT-2 token id {largest}, beyond the model's "
                        f"vocabulary of {model.cfg.vocab_size} tokens; score a model with GPT-2's vocabulary")
    was_training = model.training
    model.eval()
    per_batch = max(1, batch_rows_hint // ENDINGS)
    mine = items[ctx.rank :: ctx.world_size]
    # Under fsdp every forward needs every rank: all ranks run as many batches, a short rank repeating
    # an item.
    batches = math.ceil(math.ceil(len(items) / ctx.world_size) / per_batch)
    counts = torch.zeros(3, dtype=torch.int64, device=ctx.device)  # items, acc correct, acc_norm correct
    for b in tqdm(range(batches), desc="hellaswag", leave=False, disable=not ctx.is_main):
        chunk = mine[b * per_batch : (b + 1) * per_batch]
        tokens, targets = (t.to(ctx.device) for t in batch_rows(chunk or items[:1], model.cfg.context_length))
        with autocast:
            losses = model(tokens, targets, reduction="none").view(targets.shape).double()
        ending_losses = losses.sum(1).view(-1, ENDINGS)  # minus the summed log-probabilities
        mean_losses = ending_losses / (targets != IGNORE_INDEX).sum(1).view(-1, ENDINGS)
        if chunk:
            labels = torch.tensor([item.label for item in chunk], device=ctx.device)
            counts += torch.stack([torch.tensor(len(chunk), device=ctx.device),
                                   (ending_losses.argmin(1) == labels).sum(),
                                   (mean_losses.argmin(1) == labels).sum()])
    model.train(was_training)
    total, correct, correct_norm = distributed.all_reduce_sum(counts).tolist()
    return {"task": "hellaswag", "items": total, "acc": correct / total, "acc_norm": correct_norm / total}
