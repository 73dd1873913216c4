"""Document-aligned windows (data.windows documents): every window starts at a document's first token.

The split's token stream is cut into blocks of BLOCK_WINDOWS windows' worth of tokens, each moved to
the nearest document boundary (`block_start`), and each block is packed on its own:

- its documents are its pieces; a document longer than a window fills whole windows, each continuing
  where the last stopped (one token of overlap: the last target of one is the first input of the
  next), and what is left of it is a piece like the others;
- the pieces, longest first, each open a window, which is filled best-fit: the longest remaining piece
  that fits the room left, and when none fits, the head of the shortest one (its tail is cropped);
  a last window that cannot be filled is dropped (cropped too).

Nothing is held for the whole split: a block is read and packed when the order reaches it. The
training order (`DocumentStream`) takes GROUP_BLOCKS blocks at a time in a seeded order of the blocks
(order.py), shuffles their windows together, and hands them out; its state is (epoch, group, offset),
so its memory is that of one group whatever the corpus, and a resume continues it exactly.
"""

import bisect

import numpy as np

from .order import FeistelOrder
from .windows import TokenWindows

BLOCK_WINDOWS = 16  # windows' worth of tokens per block: the reach of best-fit packing
# blocks whose windows are shuffled together: the places in the corpus a batch's windows come from (a
# group of 16 made a short run train on 16 places only)
GROUP_BLOCKS = 128


Window = list[tuple[int, int]]  # (start, length) ranges of the stream, context_length + 1 tokens in all


def block_span(windows: TokenWindows) -> int:
    """A block's nominal tokens: BLOCK_WINDOWS windows that continue one another (each starts on the last
    one's last token), so that a long document fills its blocks with nothing left over."""
    return BLOCK_WINDOWS * (windows.window - 1) + 1


def block_start(windows: TokenWindows, point: int, eot: int) -> int:
    """Where the block that nominally starts at token `point` begins: at `point` if a document begins
    there; else at the end of the document in progress if it ends within a window's worth of tokens
    (the block before takes that document whole); else at `point` (the document is longer than a
    window and continues here)."""
    if point <= 0 or point >= windows.total_tokens:
        return min(max(point, 0), windows.total_tokens)
    context = windows.window - 1
    around = windows.tokens(point - 1, context + 1)  # the token before `point`, then a context's worth
    if around[0] == eot:
        return point
    ends = np.flatnonzero(around[1:] == eot)
    return point + int(ends[0]) + 1 if len(ends) else point


def pack(pieces: list[tuple[int, int]], window: int) -> tuple[list[Window], int]:
    """Best-fit packing of (start, length) pieces, each shorter than `window`, into rows of exactly
    `window` tokens; returns (the rows, tokens cropped)."""
    # sorted by length (ties by start, for determinism); a row opens with the longest left
    pending = sorted(pieces, key=lambda piece: (piece[1], piece[0]))
    lengths = [length for _, length in pending]
    rows, cropped = [], 0
    while pending:
        first = pending.pop()
        lengths.pop()
        row, room = [first], window - first[1]
        while room and pending:
            fits = bisect.bisect_right(lengths, room) - 1  # the longest piece that fits the room
            if fits >= 0:
                piece = pending.pop(fits)
                lengths.pop(fits)
                row.append(piece)
                room -= piece[1]
            else:  # none fits: the shortest one's head fills the row, its tail is cropped
                start, length = pending.pop(0)
                lengths.pop(0)
                row.append((start, room))
                cropped += length - room
                room = 0
        if room:  # nothing left to fill the last row: dropped
            cropped += window - room
        else:
            rows.append(row)
    return rows, cropped


def block_windows(windows: TokenWindows, block: int, eot: int) -> tuple[list[Window], int, int]:
    """The windows of block `block` (each a list of (start, length) ranges of the stream), the tokens of
    the block that are in none of them, and the block's tokens."""
    span = block_span(windows)
    start = block_start(windows, block * span, eot)
    end = block_start(windows, (block + 1) * span, eot)
    tokens = windows.tokens(start, end - start)
    bounds = [start, *(start + np.flatnonzero(tokens == eot) + 1).tolist()]
    if bounds[-1] != end:
        bounds.append(end)
    context, rows, pieces = windows.window - 1, [], []
    for first, last in zip(bounds[:-1], bounds[1:], strict=True):
        whole = first
        while last - first >= windows.window:  # a long document: whole windows, each continuing the last
            rows.append([(first, windows.window)])
            first += context
        # what is left of it; one token left of a long document was the last window's last target already
        if last - first > 1 or (last - first == 1 and first == whole):
            pieces.append((first, last - first))
    packed, cropped = pack(pieces, windows.window)
    return rows + packed, cropped, end - start


def num_blocks(windows: TokenWindows) -> int:
    return -(-windows.total_tokens // block_span(windows))


class DocumentStream:
    """One split's document-aligned windows in a seeded order, epoch after epoch: `take(n)` hands out
    the next n windows (each a list of (start, length) ranges, for `TokenWindows.rows`)."""

    def __init__(self, windows: TokenWindows, eot: int, seed: int):
        self.windows, self.eot, self.seed = windows, eot, seed
        self.blocks = num_blocks(windows)
        self.groups = -(-self.blocks // GROUP_BLOCKS)
        self.epoch = self.group = self.offset = 0  # the position: windows of this group already handed out
        self._windows: list | None = None  # this group's windows, in their shuffled order
        self._packed: dict = {}  # this group's blocks, windows, tokens and tokens cropped

    def _group_windows(self) -> list:
        if self._windows is None:
            order = FeistelOrder(self.blocks, self.seed, self.epoch)
            blocks = order[self.group * GROUP_BLOCKS : (self.group + 1) * GROUP_BLOCKS]
            packed = [block_windows(self.windows, int(block), self.eot) for block in blocks]
            rows = [row for block_rows, _, _ in packed for row in block_rows]
            shuffle = np.random.default_rng([self.seed, self.epoch, self.group]).permutation(len(rows))
            self._windows = [rows[i] for i in shuffle]
            self._packed = {"blocks": len(blocks), "windows": len(rows),
                            "cropped": sum(cropped for _, cropped, _ in packed),
                            "tokens": sum(tokens for _, _, tokens in packed)}
        return self._windows

    def estimate(self) -> dict:
        """The share of tokens cropped and the windows of an epoch, measured on the group the order is in
        (at a start its first: GROUP_BLOCKS blocks spread over the split, all of them in a small one),
        which the order then hands out without packing it again."""
        self._group_windows()
        packed = self._packed
        return {"cropped_share": packed["cropped"] / max(packed["tokens"], 1),
                "windows_per_epoch": max(1, round(packed["windows"] * self.blocks / packed["blocks"])),
                "blocks_measured": packed["blocks"]}

    @property
    def windows_per_epoch(self) -> int:
        return self.estimate()["windows_per_epoch"]

    def take(self, count: int) -> list:
        out = []
        while len(out) < count:
            rows = self._group_windows()
            handed = rows[self.offset : self.offset + count - len(out)]
            out += handed
            self.offset += len(handed)
            if self.offset >= len(rows):  # the group is done: the next, or the next epoch's first
                self.group, self.offset, self._windows = self.group + 1, 0, None
                if self.group == self.groups:
                    self.epoch, self.group = self.epoch + 1, 0
        return out

    @property
    def epochs_done(self) -> float:
        within = self.offset / len(self._windows) if self._windows else 0.0
        return self.epoch + (self.group + within) / self.groups

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "group": self.group, "offset": self.offset}

    def load_state_dict(self, state: dict) -> None:
        if (state["epoch"], state["group"]) != (self.epoch, self.group):  # another group than the one packed
            self._windows = None
        self.epoch, self.group, self.offset = state["epoch"], state["group"], state["offset"]

