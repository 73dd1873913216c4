"""Muon for the blocks' 2-D matrices and AdamW for everything else, as one optimizer (optim.optimizer muon).

Muon's update is torch.optim.Muon's: momentum (Nesterov), orthogonalised by five Newton-Schulz
iterations, scaled by sqrt(max(1, rows / cols)), with decoupled weight decay. It is computed here
rather than by torch.optim.Muon for what training needs around it:
- torch's orthogonalises in bf16 everywhere; on a CPU a bf16 matmul is ~40x slower than an fp32
  one (measured: 295 ms against 7 ms for 384x1536 @ 1536x384), so on a CPU it runs in fp32;
- a step whose gradients are not finite is skipped on the device (`found_inf`, set by the
  non-finite guard), as the fused AdamW skips it, with no host sync;
- under fsdp each matrix is a shard; its orthogonalisation needs the whole matrix, so the
  gradient and momentum are gathered, and each rank keeps its own rows of the result.
The AdamW part is torch's fused AdamW, sharing this optimizer's parameter groups and state: one
`state_dict()` holds both, and torch.distributed.checkpoint saves it as it saves any optimizer.
"""

import math

import torch
from torch.distributed.tensor import DTensor

from ..distributed import local_tensor, own_part

NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)  # torch.optim.Muon's (Keller Jordan's) quintic
NS_STEPS = 5
NS_EPS = 1e-7


def orthogonalise(matrix: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The Newton-Schulz iteration of torch.optim.Muon: close to U V^T of matrix = U S V^T, in `dtype`."""
    a, b, c = NS_COEFFICIENTS
    x = matrix.to(dtype)
    transposed = x.shape[0] > x.shape[1]
    if transposed:
        x = x.T
    x = x / x.norm().clamp(min=NS_EPS)  # a spectral norm of at most 1
    for _ in range(NS_STEPS):
        gram = x @ x.T
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.T if transposed else x


def whole(tensor: torch.Tensor) -> torch.Tensor:
    """The full matrix of an fsdp shard (gathered from every rank), or the tensor itself."""
    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor




class MuonAdamW(torch.optim.Optimizer):
    """`muon_params` (2-D) trained by Muon, `adamw_groups` (torch param groups) by fused AdamW."""

    def __init__(self, muon_params: list, adamw_groups: list[dict], muon_lr: float, momentum: float,
                 muon_weight_decay: float, lr: float, betas: tuple[float, float]):
        # lr_scale: the schedule gives each group its own peak, the same curve (schedule.py)
        muon_group = {"params": muon_params, "kind": "muon", "lr": muon_lr, "lr_scale": muon_lr / lr,
                      "momentum": momentum, "weight_decay": muon_weight_decay}
        groups = [muon_group, *({**group, "kind": "adamw"} for group in adamw_groups)]
        super().__init__(groups, {"lr": lr})
        self.adamw = torch.optim.AdamW(self._adamw_groups(), lr=lr, betas=betas, fused=True)
        self.adamw.state = self.state  # one state: this optimizer's state_dict holds AdamW's moments too
        # the cheaper matmuls where they are cheap: bf16 on CUDA, as torch.optim.Muon; fp32 on a CPU
        self.ns_dtype = torch.bfloat16 if muon_params and muon_params[0].is_cuda else torch.float32

    def _adamw_groups(self) -> list[dict]:
        return [group for group in self.param_groups if group["kind"] == "adamw"]

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)  # new group dicts and a new state: AdamW shares them again
        self.adamw.param_groups, self.adamw.state = self._adamw_groups(), self.state

    @torch.no_grad()
    def step(self, closure=None):
        found_inf = getattr(self, "found_inf", None)
        for group in self.param_groups:
            if group["kind"] == "muon":
                self._muon_step(group, found_inf)
        self.adamw.found_inf = found_inf
        self.adamw.step()

    def _muon_step(self, group: dict, found_inf: torch.Tensor | None) -> None:
        lr, momentum, decay = group["lr"], group["momentum"], group["weight_decay"]
        for param in group["params"]:
            if param.grad is None:
                continue
            state = self.state[param]
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = torch.zeros_like(param)
            buffer = state["momentum_buffer"]
            grad, full_buffer = whole(param.grad), whole(buffer)
            new_buffer = full_buffer.lerp(grad, 1 - momentum)
            update = orthogonalise(grad.lerp(new_buffer, momentum), self.ns_dtype)  # Nesterov
            rows, cols = grad.shape
            step = math.sqrt(max(1, rows / cols)) * lr  # the same update size for tall matrices
            update = own_part(update, param).to(param.dtype)
            new_param = local_tensor(param) * (1 - lr * decay) - step * update
            new_buffer = own_part(new_buffer, buffer)
            if found_inf is not None:  # a skipped step leaves both as they were
                skip = found_inf.bool()
                new_param = torch.where(skip, local_tensor(param), new_param)
                new_buffer = torch.where(skip, local_tensor(buffer), new_buffer)
            local_tensor(param).copy_(new_param)
            local_tensor(buffer).copy_(new_buffer)
