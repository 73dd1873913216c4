"""transformers' configuration of a gptdist GPT (written by `python -m gptdist.export`).

The keys are gptdist's model options (model.* in its configs); transformers' common names
(hidden_size, num_hidden_layers, ...) point at them.
"""

from transformers import PretrainedConfig


class GPTDistConfig(PretrainedConfig):
    model_type = "gptdist"
    attribute_map = {"hidden_size": "emb_dim", "num_attention_heads": "n_heads",
                     "num_hidden_layers": "n_layers", "max_position_embeddings": "context_length"}

    def __init__(self, vocab_size=50257, context_length=1024, emb_dim=768, n_heads=12, n_layers=12,
                 drop_rate=0.0, qkv_bias=False, bias=True, positions="learned", rotary_base=10000.0,
                 norm="layernorm", qk_norm=False, activation="gelu", logit_softcap=None,
                 tie_word_embeddings=False, bos_token_id=50256, eos_token_id=50256, use_cache=True, **kwargs):
        self.vocab_size, self.context_length, self.emb_dim = vocab_size, context_length, emb_dim
        self.n_heads, self.n_layers, self.drop_rate = n_heads, n_layers, drop_rate
        self.qkv_bias, self.bias, self.positions, self.rotary_base = qkv_bias, bias, positions, rotary_base
        self.norm, self.qk_norm, self.activation = norm, qk_norm, activation
        self.logit_softcap, self.use_cache = logit_softcap, use_cache
        super().__init__(tie_word_embeddings=tie_word_embeddings, bos_token_id=bos_token_id,
                         eos_token_id=eos_token_id, **kwargs)
