"""Each layer's keys and values of the tokens a generation has seen, so that a new token costs one
position's work instead of the whole context's (model/sampling.py generates through it).

The rows of a batch are left-padded to one length: row r's first `pad[r]` columns are padding,
which no query attends to, and its positions (learned or rotary) count from its first real token.
Before each forward through GPTModel with a cache, `begin(tokens)` makes it ready for that many
new columns: their positions, the mask of the keys each attends to, the columns they are written
to. Each attention layer then `extend`s its own LayerCache. Keys and values are held in buffers of
`capacity` columns, allocated at a layer's first tokens (their shape and dtype are the layer's).

`static` (for a compiled decode step): every forward sees all `capacity` columns, those not yet
written masked out, so that each step has the same shapes and compiles once. Eager, a layer
attends to the columns written so far only.
"""

import torch


class KVCache:
    def __init__(self, pad: torch.Tensor, capacity: int, layers: int, static: bool = False):
        """`pad`: (batch,) the padding columns of each row; `capacity`: the most columns it holds."""
        self.pad, self.capacity, self.static = pad, capacity, static
        # Without padding, an eager forward needs no mask: its tokens see every cached key and, among
        # themselves, the causal triangle (SDPA's own, and its faster kernels).
        self.needs_mask = static or bool(pad.any())
        self.length = 0  # columns cached, padding included (the same for every row)
        self.layers = [LayerCache(self) for _ in range(layers)]
        self.positions = self.mask = self.columns = None

    def begin(self, tokens: int) -> None:
        """Make ready for `tokens` more columns: their (batch, tokens) positions, their columns, and the
        mask saying which keys each of them attends to (None: all cached keys, and causally the new
        ones); they count as cached from now on."""
        if self.length + tokens > self.capacity:
            raise ValueError(f"{self.length} cached and {tokens} new tokens exceed the cache's "
                             f"{self.capacity}")
        device = self.pad.device
        end = self.length + tokens
        self.columns = torch.arange(self.length, end, device=device)
        keys = torch.arange(self.capacity if self.static else end, device=device)
        self.positions = (self.columns[None, :] - self.pad[:, None]).clamp(min=0)
        self.length = end
        if not self.needs_mask and (tokens == 1 or end == tokens):  # one token, or a first forward
            self.mask = None
            return
        real_key = keys[None, None, :] >= self.pad[:, None, None]  # (batch, 1, keys)
        causal = keys[None, :] <= self.columns[:, None]  # (tokens, keys): written keys only, too
        # A padding column attends to itself alone: its output is never used, but must not be NaN.
        itself = keys[None, :] == self.columns[:, None]
        self.mask = ((real_key & causal) | itself).unsqueeze(1)  # (batch, 1, tokens, keys)


class LayerCache:
    """One attention layer's keys and values in a KVCache."""

    def __init__(self, cache: KVCache):
        self.cache = cache
        self.keys = self.values = None

    def extend(self, keys: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The new columns' keys and values (batch, heads, tokens, head_dim) written into the cache;
        returns this layer's keys and values of every column the new ones may attend to."""
        cache = self.cache
        if self.keys is None:
            shape = (*keys.shape[:2], cache.capacity, keys.shape[3])
            self.keys, self.values = keys.new_zeros(shape), values.new_zeros(shape)
        self.keys.index_copy_(2, cache.columns, keys)
        self.values.index_copy_(2, cache.columns, values)
        if cache.static:
            return self.keys, self.values
        return self.keys[:, :, : cache.length], self.values[:, :, : cache.length]
