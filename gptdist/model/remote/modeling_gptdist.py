"""transformers' modelling code of a gptdist GPT (written by `python -m gptdist.export`): the function
gptdist's model/gpt.py computes, with transformers' cache for `generate()`.

Read top-down as gptdist's model: norm -> rotary -> attention -> MLP -> block -> GPT. Weight names
are gptdist's own (tok_emb, trf_blocks.N.att.qkv, ...). Options (configuration_gptdist.py): learned
or rotary positions, LayerNorm or RMSNorm, QK-norm, GELU (tanh) or ReLU², a logit soft-cap, biases,
a tied head.
"""

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.cache_utils import DynamicCache
from transformers.modeling_outputs import CausalLMOutputWithPast

from .configuration_gptdist import GPTDistConfig

# transformers 5 names the cache `cache` in forward's arguments and outputs; 4 named it past_key_values.
CACHE_FIELD = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"
TRANSFORMERS_5 = CACHE_FIELD == "cache"


def make_norm(config: GPTDistConfig) -> nn.Module:
    if config.norm == "rmsnorm":
        return nn.RMSNorm(config.emb_dim, eps=1e-5)
    return nn.LayerNorm(config.emb_dim, eps=1e-5, bias=config.bias)


def rotate(x: torch.Tensor, positions: torch.Tensor, base: float) -> torch.Tensor:
    """RoPE, "rotate half" layout: channel i paired with i + head_dim/2, turned by position *
    base^(-2i/head_dim). x: (batch, heads, tokens, head_dim), positions: (batch, tokens)."""
    head_dim = x.shape[-1]
    frequencies = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float64, device=x.device) / head_dim)
    angles = positions.to(torch.float64)[..., None] * frequencies  # (batch, tokens, head_dim / 2)
    cos, sin = angles.cos().float().unsqueeze(1).to(x.dtype), angles.sin().float().unsqueeze(1).to(x.dtype)
    first, second = x.chunk(2, dim=-1)
    return torch.cat([first * cos - second * sin, second * cos + first * sin], dim=-1)


class Attention(nn.Module):
    def __init__(self, config: GPTDistConfig, layer: int):
        super().__init__()
        self.config, self.layer, self.n_heads = config, layer, config.n_heads
        self.qkv = nn.Linear(config.emb_dim, 3 * config.emb_dim, bias=config.qkv_bias)
        self.out_proj = nn.Linear(config.emb_dim, config.emb_dim, bias=config.bias)

    def forward(self, x, positions, mask, cache):
        batch, tokens, dim = x.shape
        q, k, v = self.qkv(x).view(batch, tokens, 3, self.n_heads, dim // self.n_heads).permute(2, 0, 3, 1, 4)
        if self.config.qk_norm:
            q, k = F.rms_norm(q, (q.shape[-1],)), F.rms_norm(k, (k.shape[-1],))
        if self.config.positions == "rotary":
            base = self.config.rotary_base
            q, k = rotate(q, positions, base), rotate(k, positions, base)
        if cache is not None:
            k, v = cache.update(k, v, self.layer)
        dropout = self.config.drop_rate if self.training else 0.0
        context = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
        return self.out_proj(context.transpose(1, 2).reshape(batch, tokens, dim))


class FeedForward(nn.Module):
    def __init__(self, config: GPTDistConfig):
        super().__init__()
        self.relu2 = config.activation == "relu2"
        self.fc = nn.Linear(config.emb_dim, 4 * config.emb_dim, bias=config.bias)
        self.proj = nn.Linear(4 * config.emb_dim, config.emb_dim, bias=config.bias)

    def forward(self, x):
        hidden = self.fc(x)
        return self.proj(F.relu(hidden).square() if self.relu2 else F.gelu(hidden, approximate="tanh"))


class Block(nn.Module):
    def __init__(self, config: GPTDistConfig, layer: int):
        super().__init__()
        self.norm1, self.att = make_norm(config), Attention(config, layer)
        self.norm2, self.ff = make_norm(config), FeedForward(config)
        self.drop_shortcut = nn.Dropout(config.drop_rate)

    def forward(self, x, positions, mask, cache):
        x = x + self.drop_shortcut(self.att(self.norm1(x), positions, mask, cache))
        return x + self.drop_shortcut(self.ff(self.norm2(x)))


class GPTDistForCausalLM(PreTrainedModel, GenerationMixin):
    config_class = GPTDistConfig
    base_model_prefix = "gptdist"
    _no_split_modules = ["Block"]
    _supports_sdpa = True
    _tied_weights_keys = {"out_head.weight": "tok_emb.weight"} if TRANSFORMERS_5 else ["out_head.weight"]

    def __init__(self, config: GPTDistConfig):
        super().__init__(config)
        self.tok_emb = nn.Embedding(config.vocab_size, config.emb_dim)
        if config.positions == "learned":
            self.pos_emb = nn.Embedding(config.context_length, config.emb_dim)
        self.drop_emb = nn.Dropout(config.drop_rate)
        self.trf_blocks = nn.ModuleList(Block(config, layer) for layer in range(config.n_layers))
        self.final_norm = make_norm(config)
        self.out_head = nn.Linear(config.emb_dim, config.vocab_size, bias=False)
        self.post_init()

    def _init_weights(self, module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
        if getattr(module, "bias", None) is not None:
            nn.init.zeros_(module.bias)
        if isinstance(module, (nn.LayerNorm, nn.RMSNorm)) and module.weight is not None:
            nn.init.ones_(module.weight)

    def get_input_embeddings(self):
        return self.tok_emb

    def set_input_embeddings(self, embeddings):
        self.tok_emb = embeddings

    def get_output_embeddings(self):
        return self.out_head

    def set_output_embeddings(self, head):
        self.out_head = head

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None,
                use_cache=None, labels=None, logits_to_keep=0, cache=None, **kwargs):
        cache = cache if cache is not None else past_key_values
        use_cache = self.config.use_cache if use_cache is None else use_cache
        if use_cache and cache is None:
            cache = DynamicCache()
        batch, tokens = input_ids.shape
        past = cache.get_seq_length() if cache is not None else 0
        columns = torch.arange(past, past + tokens, device=input_ids.device)
        if attention_mask is None:
            attention_mask = torch.ones(batch, past + tokens, dtype=torch.long, device=input_ids.device)
        if position_ids is None:  # counted from each row's first real token: left padding is skipped
            position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -tokens:]
        mask = self._mask(attention_mask, columns)
        x = self.tok_emb(input_ids)
        if self.config.positions == "learned":
            x = x + self.pos_emb(position_ids)
        x = self.drop_emb(x)
        for block in self.trf_blocks:
            x = block(x, position_ids, mask, cache)
        x = self.final_norm(x)
        if logits_to_keep:
            x = x[:, -logits_to_keep:]
        logits = self.out_head(x)
        if self.config.logit_softcap is not None:
            cap = self.config.logit_softcap
            logits = cap * torch.tanh(logits / cap)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(),
                                   ignore_index=-100)
        return CausalLMOutputWithPast(loss=loss, logits=logits, **{CACHE_FIELD: cache if use_cache else None})

    @staticmethod
    def _mask(attention_mask: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
        """(batch, 1, tokens, keys): causal, padding keys excluded (a padding query sees itself alone)."""
        if attention_mask.dim() == 4:  # already expanded by the caller: additive (0 where allowed) or bool
            return attention_mask if attention_mask.dtype == torch.bool else attention_mask == 0
        keys = torch.arange(attention_mask.shape[1], device=columns.device)
        allowed = (keys[None, :] <= columns[:, None])[None] & attention_mask.bool()[:, None, :]
        return (allowed | (keys[None, :] == columns[:, None])[None]).unsqueeze(1)
