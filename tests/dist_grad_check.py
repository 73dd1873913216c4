"""Run under torchrun: the training step's gradients, with accumulation, against one process's.

    torchrun --nproc_per_node=2 tests/dist_grad_check.py DATA_DIR VARIANT [VARIANT ...]

A VARIANT is options joined by "+" (or "eager" for none): "compile", "fsdp", "blocks". For each,
every rank runs two micro-batches of its share of a global batch through `parallelize` (DDP
over the loss module, or FSDP2 with "fsdp"; compiled with "compile"; activation checkpointing
with "blocks"), reducing on the last only. Every rank must then hold the same gradients (under
fsdp: the gathered shards), they must equal the gradients of the whole global batch computed
eagerly in one process, the loss as gptdist computed it before it was compiled, and the
clipping norm must be that of the whole gradient; the loss of a micro-batch, and evaluation's sum of
it, must be that eager loss too. The variants share one process group: one
torchrun checks them all.
"""

import copy
import sys

import torch
import torch.distributed as dist
import torch.nn.functional as F

from gptdist import distributed
from gptdist.checkpoint.states import ModelState
from gptdist.config import ModelConfig, TrainConfig
from gptdist.data import shards
from gptdist.data.sampler import DistributedStepSampler
from gptdist.data.windows import TokenWindows
from gptdist.errors import exit_now
from gptdist.model.gpt import GPTModel
from gptdist.training.parallelize import parallelize


def max_difference(options: list[str], windows: TokenWindows, ctx: distributed.Dist) -> float:
    """Check one variant's gradients (assertions); returns their largest difference from one process's."""
    torch.manual_seed(0)
    model = GPTModel(ModelConfig(emb_dim=32, n_heads=2, n_layers=1, context_length=32, drop_rate=0.0))
    reference = copy.deepcopy(model)
    cfg = TrainConfig(compile="compile" in options, parallel="fsdp" if "fsdp" in options else "ddp",
                      activation_checkpointing="blocks" if "blocks" in options else "none")
    training = parallelize(model, cfg, ctx, torch.float32)
    global_batch, micro = 8, 2
    sampler = DistributedStepSampler(windows.num_samples, global_batch, ctx.rank, ctx.world_size, seed=1)
    mine = sampler.next_step()
    micro_steps = len(mine) // micro
    for i in range(micro_steps):
        batch = windows.batch(mine[i * micro : (i + 1) * micro])
        with training.grad_sync(last_micro_step=i == micro_steps - 1):
            (training.loss(batch[:, :-1], batch[:, 1:]) / micro_steps).backward()

    whole_batch = DistributedStepSampler(windows.num_samples, global_batch, 0, 1, seed=1).next_step()
    everything = windows.batch(whole_batch)
    logits = reference(everything[:, :-1]).flatten(0, 1).float()
    F.cross_entropy(logits, everything[:, 1:].flatten()).backward()

    names = list(ModelState(model).state_dict())
    assert names in ([], list(reference.state_dict())), "the wrappers changed the names"
    norm = training.clip_grad_norm(float("inf"))
    grads = torch.cat([(p.grad.full_tensor() if cfg.parallel == "fsdp" else p.grad).flatten()
                       for p in model.parameters()])
    expected = torch.cat([p.grad.flatten() for p in reference.parameters()])
    # fp32 sums of a million squares in another order (per shard, then across ranks) differ by ~1e-5
    true_norm = expected.double().norm()
    assert abs(norm.double() - true_norm) / true_norm < 2e-5, f"clipping norm {norm} != {true_norm}"
    gathered = [torch.zeros_like(grads) for _ in range(ctx.world_size)]
    dist.all_gather(gathered, grads)
    assert all(torch.equal(gathered[0], g) for g in gathered), "gradients differ across ranks"
    assert grads.abs().sum() > 0
    difference = (grads - expected).abs().max().item()
    assert torch.allclose(grads, expected, rtol=0, atol=1e-6), \
        f"gradients differ from one process's by {difference:.2e}"
    with torch.no_grad():  # the loss itself, and evaluation's sum, through the model as compiled and wrapped
        inputs, targets = batch[:, :-1], batch[:, 1:]
        expected_loss = F.cross_entropy(reference(inputs).flatten(0, 1).float(), targets.flatten())
        loss, total = training.loss(inputs, targets), training.loss(inputs, targets, reduction="sum")
    assert torch.allclose(loss, expected_loss, rtol=0, atol=1e-6), f"loss {loss} != {expected_loss}"
    assert torch.allclose(total, expected_loss * targets.numel(), rtol=1e-6), f"summed loss {total}"
    return difference


ctx = distributed.setup("cpu")
windows = TokenWindows(shards.read_manifest(sys.argv[1]), "train", 32, 32)
for variant in sys.argv[2:]:
    difference = max_difference(variant.split("+"), windows, ctx)
    distributed.print0(f"{variant}: gradients equal on {ctx.world_size} ranks and to one process's (max "
                       f"difference {difference:.1e}), and so do the loss and its sum")
exit_now(0)  # as gptdist's commands end in process groups (gptdist/errors.py)
