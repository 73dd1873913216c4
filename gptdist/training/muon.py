"""Muon for the blocks' 2-D matrices and AdamW for everything else, as one optimizer (optim.optimizer muon).

Muon's update is torch.optim.Muon's: momentum (Nesterov), orthogonalised by five Newton-Schulz
iterations, scaled by sqrt(max(1, rows / cols)), with decoupled weight decay. It is computed here
rather than by torch.optim.Muon for what training needs around it:
- torch's orthogonalises in bf16 everywhere; on a CPU without bf16 instructions a bf16 matmul is
  ~40x slower than an fp32 one (measured: 295 ms against 7 ms for 384x1536 @ 1536x384), so there it
  runs in fp32; on a CPU with them (AVX512-BF16, AMX) bf16 is the faster (the CPU benchmark
  model's 24 matrices: 166 ms against 494 ms in fp32);
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


def orthogonalise(matrices: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The Newton-Schulz iteration of torch.optim.Muon: close to U V^T of each matrix = U S V^T, in
    `dtype`. `matrices`: a stack (count, rows, cols) of one shape, orthogonalised together by batched
    matmuls (on a CPU, six 384 x 1536 matrices in half the time of one at a time)."""
    a, b, c = NS_COEFFICIENTS
    x = matrices.to(dtype)
    transposed = x.shape[-2] > x.shape[-1]
    if transposed:
        x = x.mT
    x = x / x.norm(dim=(-2, -1), keepdim=True).clamp(min=NS_EPS)  # spectral norms of at most 1
    for _ in range(NS_STEPS):
        gram = x @ x.mT
        x = torch.baddbmm(x, torch.baddbmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.mT if transposed else x


def bf16_is_fast(device: torch.device) -> bool:
    """Whether bf16 matmuls are the cheaper on `device`: on CUDA, and on CPUs with bf16 instructions."""
    if device.type != "cpu":
        return True
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # torch's own, not public
    return any(getattr(torch.cpu, check, lambda: False)() for check in checks)


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
        fast_bf16 = bool(muon_params) and bf16_is_fast(muon_params[0].device)
        self.ns_dtype = torch.bfloat16 if fast_bf16 else torch.float32

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
        by_shape: dict[torch.Size, list] = {}
        for param in group["params"]:
            if param.grad is not None:
                by_shape.setdefault(param.shape, []).append(param)
        for params in by_shape.values():
            self._update_matrices(params, group, found_inf)

    def _update_matrices(self, params: list, group: dict, found_inf: torch.Tensor | None) -> None:
        """Muon's step for matrices of one shape, orthogonalised together."""
        lr, momentum, decay = group["lr"], group["momentum"], group["weight_decay"]
        buffers, new_buffers, nesterov = [], [], []
        for param in params:
            state = self.state[param]
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = torch.zeros_like(param)
            buffers.append(state["momentum_buffer"])
            grad = whole(param.grad)
            new_buffers.append(whole(buffers[-1]).lerp(grad, 1 - momentum))
            nesterov.append(grad.lerp(new_buffers[-1], momentum))
        updates = orthogonalise(torch.stack(nesterov), self.ns_dtype)
        rows, cols = nesterov[0].shape
        step = math.sqrt(max(1, rows / cols)) * lr  # the same update size for tall matrices
        for param, buffer, update, new_buffer in zip(params, buffers, updates, new_buffers, strict=True):
            update = own_part(update, param).to(param.dtype)
            new_param = local_tensor(param) * (1 - lr * decay) - step * update
            new_buffer = own_part(new_buffer, buffer)
            if found_inf is not None:  # a skipped step leaves both as they were
                skip = found_inf.bool()
                new_param = torch.where(skip, local_tensor(param), new_param)
                new_buffer = torch.where(skip, local_tensor(buffer), new_buffer)
            local_tensor(param).copy_(new_param)
            local_tensor(buffer).copy_(new_buffer)
