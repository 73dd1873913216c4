"""Text generation as in the book's section 5.3: temperature scaling and top-k filtering."""

import torch

from ..errors import UserError
from ..tokenizer import EOT_TOKEN, decode, encode


@torch.no_grad()
def generate(
    model: torch.nn.Module,
    idx: torch.Tensor,
    max_new_tokens: int,
    context_size: int,
    temperature: float = 0.0,
    top_k: int | None = None,
    eos_id: int | None = EOT_TOKEN,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Extend `idx` (batch, tokens) by up to `max_new_tokens`; greedy when temperature is 0 or top_k is 1.

    A private `generator` keeps sampling from drawing on the global RNG that dropout uses,
    so that printing samples never changes a training run.
    """
    for _ in range(max_new_tokens):
        logits = model(idx[:, -context_size:])[:, -1, :].float()
        if top_k is not None and top_k < logits.shape[-1]:
            kth = torch.topk(logits, top_k).values[:, -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        if temperature > 0 and top_k != 1:
            probs = torch.softmax(logits / temperature, dim=-1)
            next_id = torch.multinomial(probs, num_samples=1, generator=generator)
        else:
            next_id = logits.argmax(dim=-1, keepdim=True)
        if eos_id is not None and bool((next_id == eos_id).all()):
            break
        idx = torch.cat([idx, next_id], dim=1)
    return idx


def prompt_ids(prompt: str, vocab_size: int, option: str = "--prompt") -> list[int]:
    """The prompt's GPT-2 token ids, checked against the model's vocabulary (`option` names it for errors)."""
    ids = encode(prompt)
    if not ids:
        raise UserError(f"{option} is empty")
    if max(ids) >= vocab_size:
        raise UserError(f"{option} {prompt!r} encodes to GPT-2 token id {max(ids)}, beyond the model's "
                        f"vocabulary of {vocab_size} tokens; use a prompt the model's tokenizer covers")
    return ids


def complete(model, prompt: str, max_new_tokens: int, temperature: float, top_k: int | None,
             seed: int, device: torch.device) -> str:
    """The prompt followed by the model's continuation, as text."""
    idx = torch.tensor([prompt_ids(prompt, model.cfg.vocab_size)], dtype=torch.long, device=device)
    was_training = model.training
    model.eval()
    generator = torch.Generator(device=device).manual_seed(seed)
    context = model.cfg.context_length
    out = generate(model, idx, max_new_tokens, context, temperature, top_k, generator=generator)
    model.train(was_training)
    return decode(out[0].tolist())
