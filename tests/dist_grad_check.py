"""Run under torchrun: after one DDP backward on different data per rank, every rank holds the same gradients."""

import sys

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from gptdist import distributed, shards
from gptdist.config import ModelConfig
from gptdist.data import DistributedStepSampler, TokenWindows
from gptdist.evaluation import next_token_loss
from gptdist.model import GPTModel

ctx = distributed.setup("cpu")
torch.manual_seed(0)
model = GPTModel(ModelConfig(emb_dim=32, n_heads=2, n_layers=1, context_length=32))
ddp = DistributedDataParallel(model)
windows = TokenWindows(shards.read_manifest(sys.argv[1]), "train", 32, 32)
sampler = DistributedStepSampler(windows.num_samples, 8, ctx.rank, ctx.world_size, seed=1)
batch = windows.batch(sampler.next_step())
next_token_loss(ddp(batch[:, :-1]), batch[:, 1:]).backward()
grads = torch.cat([p.grad.flatten() for p in model.parameters()])
gathered = [torch.zeros_like(grads) for _ in range(ctx.world_size)]
dist.all_gather(gathered, grads)
assert all(torch.equal(gathered[0], g) for g in gathered), "gradients differ across ranks"
assert grads.abs().sum() > 0
distributed.print0(f"gradients equal on {ctx.world_size} ranks")
distributed.teardown()
