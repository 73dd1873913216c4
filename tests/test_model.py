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
