"""The GPT-2 model of the book's chapter 4, read top-down: norm -> rotary -> attention -> MLP -> block ->
logit head -> GPT.

Parameter names follow the book (tok_emb, pos_emb, trf_blocks.N.att, .ff, .norm1,
.norm2, final_norm, out_head), except that the query/key/value projections are one
fused `att.qkv` linear layer -- exactly OpenAI's `c_attn`, and one matmul instead of three --
and that the MLP's layers are named `ff.fc` and `ff.proj` (GPT-2's c_fc and c_proj).

Each module initialises its own weights (`init_weights`): a layer whose output is added to
the residual stream knows it, and scales its init down with the depth, as GPT-2 does.

The modern recipe's options (config.py, `model.positions` to `model.zero_init_projections`) change
one piece each; with their defaults the model is GPT-2's, weight for weight and bit for bit.
"""

import functools
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig, check_model_shape
from ..tokenizer import EOT_TOKEN
from . import capped_loss, document_mask
from .kv_cache import KVCache, LayerCache
from .loss import IGNORE_INDEX, next_token_loss

STD = 0.02  # GPT-2's init of every weight matrix


def init_linear(layer: nn.Linear, std: float) -> None:
    nn.init.normal_(layer.weight, std=std)
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)


def make_norm(cfg: ModelConfig) -> nn.Module:
    """model.norm: GPT-2's LayerNorm (with a bias when model.bias), or RMSNorm (a gain, no mean, no bias)."""
    if cfg.norm == "rmsnorm":
        return nn.RMSNorm(cfg.emb_dim, eps=1e-5)
    return nn.LayerNorm(cfg.emb_dim, eps=1e-5, bias=cfg.bias)


class Rotary(nn.Module):
    """Rotary position embeddings (RoPE): channel i of each query and key head, paired with channel
    i + head_dim/2, is rotated by the angle position * base^(-2i/head_dim) (the "rotate half" layout of
    GPT-NeoX and Llama). Attention scores then depend on the distance between two tokens only."""

    def __init__(self, head_dim: int, context_length: int, base: float):
        super().__init__()
        self.head_dim, self.context_length, self.base = head_dim, context_length, base
        cos, sin = self.tables()
        self.register_buffer("cos", cos, persistent=False)  # derived from the config: never saved
        self.register_buffer("sin", sin, persistent=False)

    def reset_buffers(self) -> None:
        cos, sin = self.tables()
        self.cos.copy_(cos)
        self.sin.copy_(sin)

    def tables(self) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin of every (position, channel pair) angle: (context_length, head_dim / 2), fp32."""
        frequencies = self.base ** (-torch.arange(0, self.head_dim, 2, dtype=torch.float64) / self.head_dim)
        angles = torch.outer(torch.arange(self.context_length, dtype=torch.float64), frequencies)
        return angles.cos().float(), angles.sin().float()

    def forward(self, x: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        """x: (batch, heads, tokens, head_dim), rotated by each token's position: 0, 1, ... or, generating
        with a cache, `positions` (batch, tokens)."""
        if positions is None:
            cos, sin = self.cos[: x.shape[-2]], self.sin[: x.shape[-2]]
        else:
            cos, sin = self.cos[positions].unsqueeze(1), self.sin[positions].unsqueeze(1)
        cos, sin = cos.to(x.dtype), sin.to(x.dtype)
        first, second = x.chunk(2, dim=-1)
        return torch.cat([first * cos - second * sin, second * cos + first * sin], dim=-1)


class MultiHeadAttention(nn.Module):
    """Causal multi-head self-attention through scaled_dot_product_attention (flash kernels on GPU).

    Generating with a cache, the new tokens attend to the cached keys and values too, under the
    cache's mask (which keeps left padding out)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_heads = cfg.n_heads
        self.dropout = cfg.drop_rate
        self.qkv = nn.Linear(cfg.emb_dim, 3 * cfg.emb_dim, bias=cfg.qkv_bias)
        self.out_proj = nn.Linear(cfg.emb_dim, cfg.emb_dim, bias=cfg.bias)
        self.qk_norm = cfg.qk_norm
        self.rotary = Rotary(cfg.emb_dim // cfg.n_heads, cfg.context_length, cfg.rotary_base) \
            if cfg.positions == "rotary" else None

    def init_weights(self, residual_std: float) -> None:
        init_linear(self.qkv, STD)
        init_linear(self.out_proj, residual_std)  # its output joins the residual stream

    def forward(self, x: torch.Tensor, cache: LayerCache | None = None, documents=None) -> torch.Tensor:
        """`documents`: model.document_mask's mask of these windows (document_mask.make), or None."""
        batch, tokens, dim = x.shape
        # (b, t, 3*d) -> 3 x (b, heads, t, head_dim)
        q, k, v = self.qkv(x).view(batch, tokens, 3, self.n_heads, dim // self.n_heads).permute(2, 0, 3, 1, 4)
        if self.qk_norm:  # unit RMS per head: the scores' scale no longer grows with the weights
            q, k = F.rms_norm(q, (q.shape[-1],)), F.rms_norm(k, (k.shape[-1],))
        if self.rotary is not None:
            positions = cache.cache.positions if cache is not None else None
            q, k = self.rotary(q, positions), self.rotary(k, positions)
        dropout = self.dropout if self.training else 0.0
        if documents is not None:
            context = document_mask.attend(q, k, v, documents, dropout)
        elif cache is None:
            context = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout)
        else:
            k, v = cache.extend(k, v)
            mask = cache.cache.mask
            # no mask: the new tokens see every cached key, and causally each other (the last `tokens` keys)
            context = F.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                                     is_causal=mask is None and tokens > 1)
        return self.out_proj(context.transpose(1, 2).reshape(batch, tokens, dim))


class FeedForward(nn.Module):
    """The 4x-wide MLP with GELU (tanh approximation, as GPT-2), or ReLU² (model.activation relu2)."""

    # Checkpoints written before these layers had names (formats 1 and 2) call them by position.
    POSITIONAL_NAMES = {"layers.0.": "fc.", "layers.2.": "proj."}  # then: now

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.fc = nn.Linear(cfg.emb_dim, 4 * cfg.emb_dim, bias=cfg.bias)
        self.relu2 = cfg.activation == "relu2"
        self.gelu = nn.GELU(approximate="tanh")
        self.proj = nn.Linear(4 * cfg.emb_dim, cfg.emb_dim, bias=cfg.bias)

    def init_weights(self, residual_std: float) -> None:
        init_linear(self.fc, STD)
        init_linear(self.proj, residual_std)  # its output joins the residual stream

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.fc(x)
        return self.proj(F.relu(hidden).square() if self.relu2 else self.gelu(hidden))


class TransformerBlock(nn.Module):
    """Pre-norm block: x + drop(att(norm1(x))), then x + drop(ff(norm2(x)))."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.norm1 = make_norm(cfg)
        self.att = MultiHeadAttention(cfg)
        self.norm2 = make_norm(cfg)
        self.ff = FeedForward(cfg)
        self.drop_shortcut = nn.Dropout(cfg.drop_rate)

    def init_weights(self, residual_std: float) -> None:
        self.norm1.reset_parameters()  # ones (and zeros)
        self.att.init_weights(residual_std)
        self.norm2.reset_parameters()
        self.ff.init_weights(residual_std)

    def forward(self, x: torch.Tensor, cache: LayerCache | None = None, documents=None) -> torch.Tensor:
        x = x + self.drop_shortcut(self.att(self.norm1(x), cache, documents))
        return x + self.drop_shortcut(self.ff(self.norm2(x)))


def padded_vocabulary(cfg: ModelConfig) -> int:
    """model.vocab_size rounded up to a multiple of model.vocab_multiple (50,257 -> 50,304)."""
    return math.ceil(cfg.vocab_size / cfg.vocab_multiple) * cfg.vocab_multiple


class LogitHead(nn.Linear):
    """The last linear layer, to vocabulary logits, and all that happens to them: the padded rows kept out,
    the soft-cap, and the next-token loss.

    Rows padded to a multiple of 64 make the head's matmul tile evenly on GPUs. The padded logits get a
    fixed -inf bias (added inside the matmul, so it costs nothing) or are sliced off
    (model.vocab_padding): softmax, loss and sampling then see exactly the vocab_size real tokens, as
    GPT-2 does. Under a soft-cap they are always sliced off: the cap would turn -inf into -cap.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg.emb_dim, padded_vocabulary(cfg), bias=False)
        self.vocab_size, self.cap = cfg.vocab_size, cfg.logit_softcap
        self.masked = self.out_features > cfg.vocab_size and cfg.vocab_padding == "bias" and self.cap is None
        self.register_buffer("padding_bias", self._padding_bias(), persistent=False)

    def _padding_bias(self) -> torch.Tensor:
        padding_bias = torch.zeros(self.out_features)
        padding_bias[self.vocab_size :] = float("-inf")
        return padding_bias

    def reset_buffers(self) -> None:
        self.padding_bias.copy_(self._padding_bias())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits: (..., padded vocabulary) with -inf in the padding under a bias, else (..., vocab_size),
        capped as cap * tanh(logits / cap) under model.logit_softcap."""
        if self.masked:
            return F.linear(x, self.weight, self.padding_bias.to(x.dtype))
        logits = F.linear(x, self.weight)[..., : self.vocab_size]
        return logits if self.cap is None else self.cap * torch.tanh(logits / self.cap)

    def loss(self, x: torch.Tensor, targets: torch.Tensor, reduction: str) -> torch.Tensor:
        """The next-token cross-entropy of `x`'s logits, in fp32. Eager on a CPU a soft-capped loss is fused
        by blocks of rows (capped_loss.py); elsewhere the plain expression, which a compiled step fuses."""
        if self.cap is not None and capped_loss.fused_applies(x):
            raw = F.linear(x, self.weight)  # padded and uncapped: the fused loss slices and caps them itself
            return capped_loss.capped_cross_entropy(raw, targets, self.cap, self.vocab_size, IGNORE_INDEX,
                                                    reduction)
        return next_token_loss(self(x), targets, reduction)


class GPTModel(nn.Module):
    """Token (+ learned position) embeddings, n_layers blocks, final norm, the logit head."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        check_model_shape(cfg)
        self.cfg = cfg
        self.padded_vocab = padded_vocabulary(cfg)  # the embedding's rows, as the head's
        self.tok_emb = nn.Embedding(self.padded_vocab, cfg.emb_dim)
        self.pos_emb = nn.Embedding(cfg.context_length, cfg.emb_dim) if cfg.positions == "learned" else None
        self.drop_emb = nn.Dropout(cfg.drop_rate)
        self.trf_blocks = nn.Sequential(*[TransformerBlock(cfg) for _ in range(cfg.n_layers)])
        self.final_norm = make_norm(cfg)
        self.out_head = LogitHead(cfg)
        self.reset_parameters()
        if cfg.tie_embeddings:
            self.out_head.weight = self.tok_emb.weight

    def reset_parameters(self) -> None:
        """model.init "gpt2": GPT-2's N(0, 0.02), residual projections scaled by 1/sqrt(2 * n_layers).

        "torch": each layer's PyTorch default, as the book's GPTModel has it (N(0, 1) embeddings);
        on a small corpus it memorises much faster, which chapter 5's run shows.
        """
        for module, initialise in self.initialisation():
            initialise(module)
        self.zero_projections()

    def initialisation(self) -> list[tuple[nn.Module, Callable[[nn.Module], None]]]:
        """model.init's random draws in their order, as (module, what initialises it): each step sets
        its module's own parameters alone, so that it can run on a copy of that module (an fsdp
        model is initialised so, one module at a time: training/sharded_init.py)."""
        if self.cfg.init == "torch":
            return [(module, type(module).reset_parameters) for module in self.modules()
                    if isinstance(module, (nn.Linear, nn.Embedding, nn.LayerNorm, nn.RMSNorm))]

        def normal(module: nn.Module) -> None:
            nn.init.normal_(module.weight, std=STD)

        # Two residual additions per block, each adding its projection's variance: GPT-2 keeps
        # the stream's scale by shrinking those projections with the depth.
        residual_std = STD / math.sqrt(2 * self.cfg.n_layers)
        residual = functools.partial(TransformerBlock.init_weights, residual_std=residual_std)
        steps = [(self.tok_emb, normal), *([(self.pos_emb, normal)] if self.pos_emb is not None else [])]
        steps += [(block, residual) for block in self.trf_blocks]
        return [*steps, (self.final_norm, type(self.final_norm).reset_parameters), (self.out_head, normal)]

    def zero_projections(self) -> None:
        """model.zero_init_projections: each block adds nothing at first; its gradients still flow."""
        if self.cfg.zero_init_projections:
            for block in self.trf_blocks:
                for projection in (block.att.out_proj, block.ff.proj):
                    nn.init.zeros_(projection.weight)

    def reset_buffers(self) -> None:
        """The buffers the config determines (the padding's bias, the rotary tables), computed again:
        for a model made on the meta device."""
        for module in self.modules():
            if isinstance(module, (Rotary, LogitHead)):
                module.reset_buffers()

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None,
                reduction: str = "mean", cache: KVCache | None = None) -> torch.Tensor:
        """The logits of every position (batch, tokens, vocabulary: LogitHead); given `targets`, the
        next-token loss instead ("mean", "sum", or "none": one per position). What training and evaluation
        compile and wrap is this forward with targets: the loss in the model's graph.

        Given a `cache` (generation) made ready for them (`KVCache.begin`), `idx` are the tokens after
        those it holds, which they attend to, and the logits are the last position's alone (batch, 1,
        vocabulary): the next token's, all that generation samples from."""
        tokens = idx.shape[1]
        if tokens > self.cfg.context_length:
            raise ValueError(f"sequence of {tokens} tokens exceeds the context length "
                             f"{self.cfg.context_length}")
        positions = cache.positions if cache is not None else torch.arange(tokens, device=idx.device)
        x = self.tok_emb(idx)
        if self.pos_emb is not None:
            x = x + self.pos_emb(positions)
        x = self.drop_emb(x)
        if cache is None:
            # model.document_mask: one mask for every layer (generating with a cache, attention sees the
            # whole prompt, as an exported model's does)
            documents = (document_mask.make(idx, EOT_TOKEN, self.cfg.drop_rate if self.training else 0.0)
                         if self.cfg.document_mask else None)
            for block in self.trf_blocks:
                x = block(x, documents=documents)
        else:
            for block, layer_cache in zip(self.trf_blocks, cache.layers, strict=True):
                x = block(x, layer_cache)
            x = x[:, -1:]
        x = self.final_norm(x)
        return self.out_head(x) if targets is None else self.out_head.loss(x, targets, reduction)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())  # a tied matrix counts once

    def matmul_params(self) -> int:
        """The parameters that multiply every token (for FLOP counts): all but the embedding lookups.

        An untied token embedding is a lookup, not a matmul; tied, it is also the head and counts.
        """
        token_lookups = 0 if self.cfg.tie_embeddings else self.tok_emb.weight.numel()
        lookups = (self.pos_emb.weight.numel() if self.pos_emb is not None else 0) + token_lookups
        return self.num_params() - lookups

