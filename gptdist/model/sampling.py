"""Text generation as in the book's section 5.3 (temperature scaling and top-k filtering), through each
layer's cached keys and values (kv_cache.py): the prompts go through the model once, then every new
token alone.

When the context fills up, the window slides: the cache is rebuilt from the last three quarters of
the context (one forward over them), and generation goes on from there, so that a rebuild comes
every quarter of a context, not at every token. Without the cache (`cache=False`) every token
recomputes the whole window of the last context_length tokens, as the book's loop does: the same
greedy tokens until the context is full, at far more work per token.
"""

from collections.abc import Callable

import torch

from ..errors import UserError
from ..tokenizer import EOT_TOKEN, decode, encode
from .kv_cache import KVCache


def pick(logits: torch.Tensor, temperature: float, top_k: int | None,
         generator: torch.Generator | None) -> torch.Tensor:
    """The next token of each row of `logits` (batch, vocabulary): greedy when temperature is 0 or top_k
    is 1, else drawn from the softmax of logits / temperature among the top_k likeliest."""
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if temperature > 0 and top_k != 1:
        probs = torch.softmax(logits / temperature, dim=-1)
        return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(1)
    return logits.argmax(dim=-1)


def left_padded(prompts: list[list[int]], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(tokens, pad): the prompts as rows of one length, each padded on its left by pad[row] columns."""
    width = max(map(len, prompts))
    pad = torch.tensor([width - len(prompt) for prompt in prompts], device=device)
    tokens = torch.full((len(prompts), width), EOT_TOKEN, dtype=torch.long, device=device)
    for row, prompt in enumerate(prompts):
        tokens[row, width - len(prompt) :] = torch.tensor(prompt, dtype=torch.long)
    return tokens, pad


@torch.no_grad()
def generate(
    model: torch.nn.Module,
    prompts: list[list[int]],
    max_new_tokens: int,
    temperature: float = 0.0,
    top_k: int | None = None,
    eos_id: int | None = EOT_TOKEN,
    generator: torch.Generator | None = None,
    cache: bool = True,
    step: Callable | None = None,
    on_tokens: Callable[[list[int | None]], None] | None = None,
    ends: Callable[[list[int]], bool] | None = None,
) -> list[list[int]]:
    """Each prompt's continuation: up to `max_new_tokens` tokens, ending before `eos_id`.

    A private `generator` keeps sampling from drawing on the global RNG that dropout uses, so that
    printing samples never changes a training run. `step` runs the model on one new token (a compiled
    GPTModel, default the model itself); `on_tokens` is told each row's new token (None once the row
    has ended) as it comes; a row also ends once `ends(its continuation)` is true (a stop sequence).
    """
    device = next(model.parameters()).device
    context = model.cfg.context_length
    tokens, pad = left_padded(prompts, device)
    continuations: list[list[int]] = [[] for _ in prompts]
    ended = torch.zeros(len(prompts), dtype=torch.bool, device=device)
    if not cache and bool(pad.any()):
        raise ValueError("without the cache, the prompts must be of one length")
    kv = None
    for _ in range(max_new_tokens):
        if not cache:  # the book's loop
            logits = model(tokens[:, -context:])
        elif kv is None or kv.length == context:  # the first forward, or a slide: the window at once
            window = tokens[:, -(context if kv is None else context - context // 4) :]
            kv = KVCache((pad - (tokens.shape[1] - window.shape[1])).clamp(min=0), context,
                         model.cfg.n_layers, static=step is not None)
            kv.begin(window.shape[1])
            logits = model(window, cache=kv)
        else:
            kv.begin(1)
            logits = (model if step is None else step)(tokens[:, -1:].contiguous(), cache=kv)
        next_ids = pick(logits[:, -1, :].float(), temperature, top_k, generator)
        was_ended = ended.clone()
        if eos_id is not None:
            ended |= next_ids == eos_id
        new = [None if done else token for done, token in zip(ended.tolist(), next_ids.tolist(), strict=True)]
        for row, token in enumerate(new):
            if token is not None:
                continuations[row].append(token)
                if ends is not None and ends(continuations[row]):
                    ended[row] = True
        if on_tokens is not None:
            on_tokens(new)
        if bool(ended.all()):
            break
        tokens = torch.cat([tokens, torch.where(was_ended, eos_id or 0, next_ids)[:, None]], dim=1)
    return continuations


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
    ids = prompt_ids(prompt, model.cfg.vocab_size)
    was_training = model.training
    model.eval()
    generator = torch.Generator(device=device).manual_seed(seed)
    continuation = generate(model, [ids], max_new_tokens, temperature, top_k, generator=generator)[0]
    model.train(was_training)
    return decode(ids + continuation)
