"""model.document_mask: attention that stays inside each document of a window.

A window of the token stream may hold the end of one document and the start of the next (and with
data.windows documents, several short ones packed together). Each token belongs to the document its
position is in: a new one starts after every <|endoftext|>, which belongs to the document it ends. A
query attends to the keys before it in its own document only: a block-causal mask.

On a CPU (or wherever dropout is on, which FlexAttention does not do) the mask is a boolean
(batch, 1, tokens, tokens) tensor for scaled_dot_product_attention. On CUDA it is a FlexAttention
BlockMask, made once per forward and shared by every layer, and attention runs compiled
FlexAttention, which skips the blocks that the mask empties.
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
    batch, tokens = idx.shape
    if uses_flex(idx.device, dropout):
        from torch.nn.attention.flex_attention import create_block_mask

        def same_document_causal(b, h, q, kv):
            return (q >= kv) & (documents[b, q] == documents[b, kv])

        return create_block_mask(same_document_causal, batch, None, tokens, tokens, device=idx.device)
    causal = torch.ones(tokens, tokens, dtype=torch.bool, device=idx.device).tril()
    return ((documents[:, :, None] == documents[:, None, :]) & causal).unsqueeze(1)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask, dropout: float) -> torch.Tensor:
    """Attention of q, k, v (batch, heads, tokens, head_dim) under `make`'s mask."""
    if isinstance(mask, torch.Tensor):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
    from torch.nn.attention.flex_attention import flex_attention

    attention = flex_attention if torch.compiler.is_compiling() else _compiled_flex()
    return attention(q, k, v, block_mask=mask)
