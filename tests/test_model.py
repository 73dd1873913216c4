import math

import pytest
import torch

from gptdist.config import PRESETS, ModelConfig
from gptdist.model.gpt import GPTModel
from gptdist.model.loss import next_token_loss
from gptdist.training.optimizer import decay_groups


def test_loss_at_initialisation_is_near_uniform():
    torch.manual_seed(0)
    model = GPTModel(ModelConfig(emb_dim=64, n_heads=4, n_layers=2, context_length=32)).eval()
    tokens = torch.randint(0, 50257, (4, 33))
    loss = next_token_loss(model(tokens[:, :-1]), tokens[:, 1:]).item()
    assert abs(loss - math.log(50257)) < 0.3


def test_gpt2_small_has_the_books_parameter_count():
    with torch.device("meta"):
        model = GPTModel(ModelConfig(**PRESETS["gpt2-small"], vocab_multiple=1))
    assert model.num_params() == 163_009_536  # the book's count, untied head, no qkv bias
    with_tied_head = model.num_params() - model.out_head.weight.numel()
    assert with_tied_head == 124_412_160


@pytest.mark.parametrize("padding", ["bias", "slice"])
def test_padded_vocabulary_never_reaches_loss_or_sampling(padding):
    torch.manual_seed(0)
    cfg = ModelConfig(emb_dim=32, n_heads=4, n_layers=1, context_length=8, drop_rate=0.0,
                      vocab_padding=padding)
    model = GPTModel(cfg).eval()
    assert model.tok_emb.weight.shape[0] == model.out_head.weight.shape[0] == 50304
    tokens = torch.randint(0, 50257, (2, 8))
    logits = model(tokens)
    if padding == "bias":
        assert logits.shape == (2, 8, 50304) and torch.isneginf(logits[..., 50257:]).all()
        logits = logits[..., :50257]
    assert logits.shape == (2, 8, 50257)
    unpadded = GPTModel(ModelConfig(**{**vars(cfg), "vocab_multiple": 1})).eval()
    state = {k: (v[:50257] if k in ("tok_emb.weight", "out_head.weight") else v)
             for k, v in model.state_dict().items()}
    unpadded.load_state_dict(state)
    assert torch.allclose(unpadded(tokens), logits, atol=1e-6)
    targets = torch.randint(0, 50257, (2, 8))
    loss = next_token_loss(logits, targets)
    assert torch.allclose(loss, next_token_loss(unpadded(tokens), targets), atol=1e-6)
    loss.backward()
    grad = model.out_head.weight.grad
    assert torch.isfinite(grad).all() and grad[50257:].abs().sum() == 0


def test_without_bias_only_the_qkv_projection_may_have_one():
    with torch.device("meta"):
        plain = GPTModel(ModelConfig(**PRESETS["gpt2-small"], bias=False))
        with_qkv = GPTModel(ModelConfig(**PRESETS["gpt2-small"], bias=False, qkv_bias=True))
        biased = GPTModel(ModelConfig(**PRESETS["gpt2-small"]))
    assert not [name for name, _ in plain.named_parameters() if name.endswith("bias")]
    biases = {name.split(".", 2)[2] for name, _ in with_qkv.named_parameters() if name.endswith("bias")}
    assert biases == {"att.qkv.bias"}
    # per block: out_proj, two MLP layers and two LayerNorms lose their biases; and the final LayerNorm
    removed = 12 * (768 + 3072 + 768 + 2 * 768) + 768
    assert biased.num_params() - plain.num_params() == removed


def test_causal_attention_ignores_the_future():
    torch.manual_seed(0)
    model = GPTModel(ModelConfig(emb_dim=32, n_heads=4, n_layers=2, context_length=16, drop_rate=0.0)).eval()
    a = torch.randint(0, 50257, (1, 16))
    b = a.clone()
    b[0, 10:] = 7
    assert torch.allclose(model(a)[0, :10], model(b)[0, :10], atol=1e-5)
    assert not torch.allclose(model(a)[0, 12], model(b)[0, 12])


def test_weight_decay_only_on_matrices():
    model = GPTModel(ModelConfig(emb_dim=32, n_heads=4, n_layers=1, context_length=8, qkv_bias=True))
    decayed, plain = decay_groups(model, 0.1)
    assert all(p.dim() == 2 for p in decayed["params"]) and all(p.dim() == 1 for p in plain["params"])
    assert len(decayed["params"]) + len(plain["params"]) == len(list(model.parameters()))
    assert plain["weight_decay"] == 0.0


# --- the modern recipe's options, each against a reference written out here ----------------------

SMALL = dict(emb_dim=32, n_heads=4, n_layers=2, context_length=16, vocab_size=101, drop_rate=0.0)


def test_rotary_rotates_each_channel_pair_by_its_positions_angle():
    """RoPE written out channel by channel: pair (i, i + d/2) turned by position * base^(-2i/d)."""
    from gptdist.model.gpt import Rotary
    d, base = 8, 10000.0
    x = torch.randn(1, 1, 5, d, dtype=torch.float64)
    rotated = Rotary(d, 16, base).double()(x)
    for m in range(5):
        for i in range(d // 2):
            angle = m * base ** (-2 * i / d)
            a, b = x[0, 0, m, i].item(), x[0, 0, m, i + d // 2].item()
            first, second = rotated[0, 0, m, i].item(), rotated[0, 0, m, i + d // 2].item()
            assert first == pytest.approx(a * math.cos(angle) - b * math.sin(angle), abs=1e-6)
            assert second == pytest.approx(b * math.cos(angle) + a * math.sin(angle), abs=1e-6)


def test_rotary_scores_depend_only_on_the_distance_between_tokens():
    from gptdist.model.gpt import Rotary
    rotary = Rotary(8, 32, 10000.0).double()
    q, k = torch.randn(8, dtype=torch.float64), torch.randn(8, dtype=torch.float64)

    def score(m, n):
        at = torch.zeros(1, 1, 32, 8, dtype=torch.float64)
        at[0, 0, m], keys = q, torch.zeros(1, 1, 32, 8, dtype=torch.float64)
        keys[0, 0, n] = k
        return (rotary(at)[0, 0, m] @ rotary(keys)[0, 0, n]).item()

    assert score(7, 3) == pytest.approx(score(20, 16)) and score(7, 3) != pytest.approx(score(7, 4))


def test_rmsnorm_divides_by_the_root_mean_square_and_scales_by_its_gain():
    model = GPTModel(ModelConfig(**SMALL, norm="rmsnorm"))
    norm = model.trf_blocks[0].norm1
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
    x = torch.randn(3, 32)
    expected = x / torch.sqrt((x * x).mean(-1, keepdim=True) + 1e-5) * norm.weight
    torch.testing.assert_close(norm(x), expected)
    assert not any("bias" in name for name, _ in model.named_parameters() if "norm" in name)


def attention_by_hand(att, x, qk_norm: bool):
    """Causal attention written out: per head, softmax(q k^T / sqrt(d)) v, q and k RMS-normalised."""
    batch, tokens, dim = x.shape
    heads, d = att.n_heads, dim // att.n_heads
    q, k, v = (part.reshape(batch, tokens, heads, d).transpose(1, 2) for part in att.qkv(x).split(dim, -1))
    if qk_norm:
        q = q / torch.sqrt((q * q).mean(-1, keepdim=True) + torch.finfo(q.dtype).eps)
        k = k / torch.sqrt((k * k).mean(-1, keepdim=True) + torch.finfo(k.dtype).eps)
    scores = q @ k.transpose(-1, -2) / math.sqrt(d)
    scores = scores.masked_fill(torch.ones(tokens, tokens, dtype=torch.bool).triu(1), float("-inf"))
    return att.out_proj((scores.softmax(-1) @ v).transpose(1, 2).reshape(batch, tokens, dim))


@pytest.mark.parametrize("qk_norm", [False, True], ids=["plain", "qk-norm"])
def test_attention_matches_the_formula(qk_norm):
    model = GPTModel(ModelConfig(**SMALL, qk_norm=qk_norm))
    att, x = model.trf_blocks[0].att, torch.randn(2, 6, 32)
    torch.testing.assert_close(att(x), attention_by_hand(att, x, qk_norm), atol=1e-5, rtol=1e-5)


def test_relu_squared_mlp():
    ff = GPTModel(ModelConfig(**SMALL, activation="relu2")).trf_blocks[0].ff
    x = torch.randn(2, 5, 32)
    torch.testing.assert_close(ff(x), ff.proj(torch.clamp(ff.fc(x), min=0) ** 2))


@pytest.mark.parametrize("padding", ["bias", "slice"])
def test_logit_softcap_bounds_the_logits_and_keeps_padding_out(padding):
    cfg = ModelConfig(**SMALL, vocab_multiple=64, vocab_padding=padding)
    plain, capped = GPTModel(cfg), GPTModel(ModelConfig(**{**vars(cfg), "logit_softcap": 2.0}))
    capped.load_state_dict(plain.state_dict())
    with torch.no_grad():
        plain.out_head.weight.mul_(100)
        capped.out_head.weight.mul_(100)
    idx = torch.randint(0, 101, (2, 8))
    raw, logits = plain(idx)[..., :101], capped(idx)
    assert logits.shape[-1] == 101 and logits.abs().max() <= 2.0 < raw.abs().max()
    torch.testing.assert_close(logits, 2.0 * torch.tanh(raw / 2.0))


def test_zero_initialised_projections_make_every_block_the_identity():
    model = GPTModel(ModelConfig(**SMALL, zero_init_projections=True))
    x = torch.randn(2, 5, 32)
    for block in model.trf_blocks:
        assert torch.equal(block(x), x)
    model(torch.randint(0, 101, (2, 5))).sum().backward()  # gradients still reach the projections
    assert all(block.att.out_proj.weight.grad.abs().sum() > 0 for block in model.trf_blocks)


def test_rotary_models_have_no_position_table_and_the_defaults_are_gpt2s():
    rotary = GPTModel(ModelConfig(**SMALL, positions="rotary"))
    assert rotary.pos_emb is None and not any("pos_emb" in n for n in rotary.state_dict())
    torch.manual_seed(0)
    default = GPTModel(ModelConfig(**SMALL))
    torch.manual_seed(0)
    explicit = GPTModel(ModelConfig(**SMALL, positions="learned", norm="layernorm", qk_norm=False,
                                    activation="gelu", logit_softcap=None, zero_init_projections=False))
    pairs = zip(default.state_dict().values(), explicit.state_dict().values(), strict=True)
    assert all(torch.equal(a, b) for a, b in pairs)
    assert isinstance(default.final_norm, torch.nn.LayerNorm)
