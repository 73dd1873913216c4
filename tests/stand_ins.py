"""Stand-ins for what a test cannot have as it is: nanoGPT's model.py where no checkout is given, a small
random GPT-2 of transformers, a folder not even root can write, a small disk to fill."""

import os
import subprocess
from pathlib import Path

import pytest
import torch

# nanoGPT is not part of gptdist: $GPTDIST_NANOGPT_DIR points the benchmark tests at a checkout of it, else
# they use this stand-in with the interface its model.py gives the benchmarks (GPTConfig, GPT(config)(x, y)
# -> logits, loss; get_num_params; configure_optimizers), built from gptdist's own model.
NANOGPT_STAND_IN = '''"""A stand-in for nanoGPT's model.py (GPTConfig, GPT) on gptdist's GPTModel."""
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from gptdist.config import ModelConfig
from gptdist.model.gpt import GPTModel


@dataclass
class GPTConfig:
    block_size: int = 1024
    vocab_size: int = 50304
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    bias: bool = True


class GPT(torch.nn.Module):
    def __init__(self, config):
        super().__init__()
        shape = ModelConfig(vocab_size=config.vocab_size, vocab_multiple=1, n_layers=config.n_layer,
                            n_heads=config.n_head, emb_dim=config.n_embd, drop_rate=config.dropout,
                            context_length=config.block_size, bias=config.bias, tie_embeddings=True)
        self.model = GPTModel(shape)

    def forward(self, idx, targets=None):
        logits = self.model(idx)
        loss = None if targets is None else F.cross_entropy(logits.flatten(0, 1), targets.flatten())
        return logits, loss

    def get_num_params(self, non_embedding=True):
        return self.model.num_params() - (self.model.pos_emb.weight.numel() if non_embedding else 0)

    def configure_optimizers(self, weight_decay, learning_rate, betas, device_type):
        params = [p for p in self.parameters() if p.requires_grad]
        groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
                  {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
        return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, fused=device_type == "cuda")
'''


def make_unwritable(folder: Path) -> list[str]:
    """Make `folder` unwritable even for root (immutable) where possible; returns the command that
    undoes it."""
    if os.geteuid() == 0:
        locked = subprocess.run(["chattr", "+i", str(folder)], capture_output=True, text=True)
        if locked.returncode != 0:
            pytest.fail(f"root, and cannot make {folder} immutable: {locked.stderr.strip()}")
        return ["chattr", "-i", str(folder)]
    folder.chmod(0o500)
    return ["chmod", "700", str(folder)]


def tmpfs(path: Path, size: str):
    """A small tmpfs mounted at `path` (a disk to fill); skips where mounting is not allowed (not root)."""
    path.mkdir()
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a small tmpfs (a disk to fill)")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.fail(f"cannot mount a small tmpfs to fill: {mounted.stderr.strip()}")


def random_hf_gpt2(folder: Path, tie=True, vocab_size=50257, n_positions=64, std=0.1, seed=0):
    """A transformers GPT2LMHeadModel with every tensor random (biases and norms too), saved by
    save_pretrained."""
    import transformers

    torch.manual_seed(seed)
    cfg = transformers.GPT2Config(vocab_size=vocab_size, n_positions=n_positions, n_embd=32, n_layer=2,
                                  n_head=4, tie_word_embeddings=tie)
    model = transformers.GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0, std)
    model.save_pretrained(folder)
    return model
