"""model.document_mask: attention that stays inside each document of a window.

A window of the token stream may hold the end of one document and the start of the next (and with
data.windows documents, several short ones packed together). Each token belongs to the document its
position is in: a new one starts after every <|endoftext|>, which belongs to the document it ends. A
query attends to the keys before it in its own document only: a block-causal mask.

On a CPU (or wherever dropout is on, which FlexAttention does not do) the mask is a boolean
(batch, 1, tokens, tokens) tensor for scaled_dot_product_attention. On CUDA it is a FlexAttention
BlockMask, made once per forward (outside a compiled model's graph) and shared by every layer, and
attention runs compiled FlexAttention, which skips the blocks that the mask empties. The tests run
that path on CPU too, forward (FlexAttention has no CPU backward), against the boolean mask.
"""

import functools

import torch
import torch.nn.functional as F


def document_ids(idx: torch.Tensor, eot: int) -> torch.Tensor:
    """(batch, tokens): how many documents ended before each position."""
    ends = (idx == eot).int()
    return ends.cumsum(dim=1) - ends


def uses_flex(device: torch.device, dropout: float) -> bool:
    return device.type == "cuda" and dropout == 0.0


@functools.cache
def _compiled_flex():
    """FlexAttention compiled once, for an eager model (eager FlexAttention is a slow reference); inside a
    compiled model (train.compile) the model's own graph takes it in."""
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


def make(idx: torch.Tensor, eot: int, dropout: float):
    """The block-causal mask of the windows `idx` (batch, tokens), in the form `attend` takes."""
    documents = document_ids(idx, eot)
    if uses_flex(idx.device, dropout):
        return _block_mask(documents)
    tokens = idx.shape[1]
    causal = torch.ones(tokens, tokens, dtype=torch.bool, device=idx.device).tril()
    return ((documents[:, :, None] == documents[:, None, :]) & causal).unsqueeze(1)


@torch.compiler.disable  # made outside a compiled model's graph, as torchtitan does: inside it, inductor
def _block_mask(documents: torch.Tensor):  # could not lower it (torch 2.13, on CPU)
    from torch.nn.attention.flex_attention import create_block_mask

    def same_document_causal(b, h, q, kv):
        return (q >= kv) & (documents[b, q] == documents[b, kv])

    batch, tokens = documents.shape
    return create_block_mask(same_document_causal, batch, None, tokens, tokens, device=documents.device)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask, dropout: float) -> torch.Tensor:
    """Attention of q, k, v (batch, heads, tokens, head_dim) under `make`'s mask."""
    if isinstance(mask, torch.Tensor):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
    from torch.nn.attention.flex_attention import flex_attention

    attention = flex_attention if torch.compiler.is_compiling() else _compiled_flex()
    # contiguous: inside a compiled model's graph, FlexAttention read the heads' permuted views wrongly
    # (torch 2.13 on CPU: logits 0.8 off; tests/test_mixture.py), a copy of each it reads right
    return attention(q.contiguous(), k.contiguous(), v.contiguous(), block_mask=mask)
