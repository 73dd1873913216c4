"""The soft-capped loss fused by blocks of rows (model/capped_loss.py) against the plain expression."""

import pytest
import torch
import torch.nn.functional as F

from gptdist.config import ModelConfig
from gptdist.model.capped_loss import capped_cross_entropy
from gptdist.model.gpt import GPTModel
from gptdist.model.loss import IGNORE_INDEX, next_token_loss

CAP, VOCAB, PADDED = 15.0, 990, 1024


def reference(logits: torch.Tensor, targets: torch.Tensor, reduction: str) -> torch.Tensor:
    capped = CAP * torch.tanh(logits.float()[..., :VOCAB] / CAP)
    return F.cross_entropy(capped.flatten(0, 1), targets.flatten(), reduction=reduction,
                           ignore_index=IGNORE_INDEX)


def fused(targets: torch.Tensor, reduction: str = "mean"):
    return lambda logits: capped_cross_entropy(logits, targets, CAP, VOCAB, IGNORE_INDEX, reduction)


def loss_and_grad(loss_of, logits: torch.Tensor, weights: torch.Tensor | None = None):
    logits = logits.detach().clone().requires_grad_()
    loss = loss_of(logits)
    (loss if weights is None else (loss * weights).sum()).backward()
    return loss.detach(), logits.grad


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_the_fused_loss_and_its_gradient_are_the_plain_expressions(reduction, monkeypatch):
    monkeypatch.setattr("gptdist.model.capped_loss.BLOCK_BYTES", 7 * VOCAB * 4)  # blocks of 7 rows
    torch.manual_seed(0)
    logits = torch.randn(3, 50, PADDED) * 20  # well beyond the cap: tanh saturates
    targets = torch.randint(0, VOCAB, (3, 50))
    targets[0, :9] = IGNORE_INDEX  # padding rows of an evaluation batch
    weights = torch.rand(150) if reduction == "none" else None
    ours, our_grad = loss_and_grad(fused(targets, reduction), logits, weights)
    theirs, their_grad = loss_and_grad(lambda z: reference(z, targets, reduction), logits, weights)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-6)
    torch.testing.assert_close(our_grad, their_grad, atol=1e-7, rtol=1e-5)
    assert not our_grad[..., VOCAB:].any() and not our_grad[0, :9].any()  # padding and ignored rows


def test_bf16_logits_are_capped_in_fp32_and_get_a_bf16_gradient():
    torch.manual_seed(0)
    logits = (torch.randn(2, 40, PADDED) * 20).bfloat16()
    targets = torch.randint(0, VOCAB, (2, 40))
    ours, our_grad = loss_and_grad(fused(targets), logits)
    theirs, their_grad = loss_and_grad(lambda z: reference(z.float(), targets, "mean"), logits.float())
    assert our_grad.dtype == torch.bfloat16
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-6)
    torch.testing.assert_close(our_grad.float(), their_grad, atol=1e-5, rtol=1e-2)


def test_a_capped_models_training_loss_is_its_logits_loss():
    cfg = ModelConfig(vocab_size=101, context_length=16, emb_dim=32, n_heads=4, n_layers=2, drop_rate=0.0,
                      vocab_multiple=64, logit_softcap=2.0)
    torch.manual_seed(0)
    model = GPTModel(cfg)
    with torch.no_grad():
        model.out_head.weight.mul_(100)  # logits the cap bends
    tokens = torch.randint(0, 101, (2, 9))
    fused = model(tokens[:, :-1], tokens[:, 1:])
    fused.backward()
    fused_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    plain = next_token_loss(model(tokens[:, :-1]), tokens[:, 1:])
    plain.backward()
    torch.testing.assert_close(fused, plain)
    for ours, theirs in zip(fused_grads, (p.grad for p in model.parameters()), strict=True):
        torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=1e-4)
    with torch.no_grad():  # as evaluation calls it: no gradient kept
        torch.testing.assert_close(model(tokens[:, :-1], tokens[:, 1:], reduction="sum"),
                                   plain * 16)
