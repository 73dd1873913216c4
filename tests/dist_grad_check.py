"""Run under torchrun: the training step's gradients, with accumulation, against one process's.

    torchrun --nproc_per_node=2 tests/dist_grad_check.py DATA_DIR [compile] [fsdp] [blocks]

Each rank runs two micro-batches of its share of a global batch through `parallelize` (DDP over
the loss module, or FSDP2 with "fsdp"; compiled with "compile"; activation checkpointing with
"blocks"), reducing on the last only. Every rank must then hold the same gradients (under fsdp:
the gathered shards), they must equal the gradients of the whole global batch computed eagerly
in one process, the loss as gptdist computed it before it was compiled, and the clipping norm
must be that of the whole gradient.
"""

import copy
import sys

import torch
import torch.distributed as dist
import torch.nn.functional as F

from gptdist import distributed, shards
from gptdist.config import ModelConfig, TrainConfig
from gptdist.data import DistributedStepSampler, TokenWindows
from gptdist.model import GPTModel
from gptdist.parallelize import parallelize
from gptdist.train_state import ModelState

ctx = distributed.setup("cpu")
torch.manual_seed(0)
model = GPTModel(ModelConfig(emb_dim=32, n_heads=2, n_layers=1, context_length=32, drop_rate=0.0))
reference = copy.deepcopy(model)
options = sys.argv[2:]
cfg = TrainConfig(compile="compile" in options, parallel="fsdp" if "fsdp" in options else "ddp",
                  activation_checkpointing="blocks" if "blocks" in options else "none")
training = parallelize(model, cfg, ctx, torch.float32)
windows = TokenWindows(shards.read_manifest(sys.argv[1]), "train", 32, 32)
global_batch, micro = 8, 2
mine = DistributedStepSampler(windows.num_samples, global_batch, ctx.rank, ctx.world_size, seed=1).next_step()
micro_steps = len(mine) // micro
for i in range(micro_steps):
    batch = windows.batch(mine[i * micro : (i + 1) * micro])
    with training.grad_sync(last_micro_step=i == micro_steps - 1):
        (training.loss(batch[:, :-1], batch[:, 1:]) / micro_steps).backward()

everything = windows.batch(DistributedStepSampler(windows.num_samples, global_batch, 0, 1, seed=1).next_step())
F.cross_entropy(reference(everything[:, :-1]).flatten(0, 1).float(), everything[:, 1:].flatten()).backward()

assert list(ModelState(model).state_dict()) in ([], list(reference.state_dict())), "the wrappers changed the names"
norm = training.clip_grad_norm(float("inf"))
grads = torch.cat([(p.grad.full_tensor() if cfg.parallel == "fsdp" else p.grad).flatten() for p in model.parameters()])
expected = torch.cat([p.grad.flatten() for p in reference.parameters()])
# fp32 sums of a million squares in another order (per shard, then across ranks) differ by ~1e-5
true_norm = expected.double().norm()
assert abs(norm.double() - true_norm) / true_norm < 2e-5, f"clipping norm {norm} != {true_norm}"
gathered = [torch.zeros_like(grads) for _ in range(ctx.world_size)]
dist.all_gather(gathered, grads)
assert all(torch.equal(gathered[0], g) for g in gathered), "gradients differ across ranks"
assert grads.abs().sum() > 0
difference = (grads - expected).abs().max().item()
assert torch.allclose(grads, expected, rtol=0, atol=1e-6), f"gradients differ from one process's by {difference:.2e}"
distributed.print0(f"gradients equal on {ctx.world_size} ranks and to one process's (max difference {difference:.1e})")
distributed.teardown()
