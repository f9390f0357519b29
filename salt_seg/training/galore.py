"""GaLore-AdamW: full fine-tuning with Adam moments kept in a low-rank gradient subspace (Zhao et al., 2024).

For each 2-D weight matrix ``W`` (m x n) with ``min(m, n) >= min_dim`` the gradient ``G`` is projected onto the top
``rank`` singular vectors of the gradient itself: ``R = G P^T`` with ``P`` the first ``rank`` rows of ``V^T`` when
``m >= n``, else ``R = P^T G`` with ``P`` the first ``rank`` columns of ``U`` (the smaller side is projected, so the
moments are ``m x r`` or ``r x n``). The projector is recomputed from the current gradient's SVD every
``update_interval`` steps (at steps 0, T, 2T, ... of that tensor); Adam's moments live in the projected space and
the normalised update is projected back and scaled by ``scale``. Every other tensor (1-D, convolutions, position
tables, matrices below ``min_dim``) gets plain AdamW, with the same arithmetic as :class:`torch.optim.AdamW`.

Weight decay is decoupled and applied to the full weight, as AdamW does. The projector is an ordinary tensor in the
optimizer state (``state[p]["projector"]``), so ``state_dict()`` round-trips through ``torch.save`` and
``torch.load(weights_only=True)`` and a resumed run continues bit-exactly.

Why not the ``galore-torch`` package (1.0): its ``__init__`` imports ``transformers`` and ``bitsandbytes``
unconditionally (neither is a dependency of this project), and it keeps a ``GaLoreProjector`` Python object in the
optimizer state, which ``torch.load(weights_only=True)`` refuses to unpickle, so ``--resume`` could not load it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch

__all__ = ["GaLoreAdamW", "galore_eligible", "optimizer_state_bytes"]


def galore_eligible(p: torch.Tensor, min_dim: int) -> bool:
    """Whether a tensor is projected: a 2-D matrix whose smaller side is at least ``min_dim``."""
    return p.ndim == 2 and min(p.shape) >= min_dim


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes held in tensors of the optimizer state (moments, projectors, step counters)."""
    return sum(
        v.numel() * v.element_size()
        for state in optimizer.state.values()
        for v in state.values()
        if isinstance(v, torch.Tensor)
    )


def check_adam_args(lr: float, betas: tuple[float, float], eps: float, weight_decay: float) -> None:
    """The argument checks :class:`torch.optim.AdamW` makes, for the GaLore family."""
    if lr < 0 or eps < 0 or weight_decay < 0:
        raise ValueError("lr, eps and weight_decay must be >= 0")
    if not (0 <= betas[0] < 1 and 0 <= betas[1] < 1):
        raise ValueError(f"betas must be in [0, 1), got {betas}")


def adam_moments(
    state: dict[str, Any], grad: torch.Tensor, group: dict[str, Any]
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Advance Adam's moments of ``grad`` (full or projected) in ``state``, as torch.optim.AdamW's single-tensor
    arithmetic does, in its order; returns ``(exp_avg, denom, step_size)`` for ``p -= step_size * exp_avg / denom``."""
    beta1, beta2 = group["betas"]
    if "exp_avg" not in state:
        state["exp_avg"] = torch.zeros_like(grad, memory_format=torch.preserve_format)
        state["exp_avg_sq"] = torch.zeros_like(grad, memory_format=torch.preserve_format)
    exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
    state["step"] += 1
    step_t = state["step"].item()
    exp_avg.lerp_(grad, 1 - beta1)
    exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    bias_correction1 = 1 - beta1**step_t
    bias_correction2_sqrt = (1 - beta2**step_t) ** 0.5
    denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(group["eps"])
    return exp_avg, denom, group["lr"] / bias_correction1


class GaLoreAdamW(torch.optim.Optimizer):
    """AdamW with GaLore gradient projection for large 2-D weights (module docstring).

    Args:
        params: tensors or parameter groups (each group may override any default below).
        lr / betas / eps / weight_decay: as :class:`torch.optim.AdamW`.
        rank: projection rank, clipped to ``min(m, n)`` per matrix.
        update_interval: steps between projector refreshes (SVD of the current gradient).
        scale: factor on the projected-back update (GaLore's alpha).
        min_dim: matrices with a smaller side below this use plain AdamW.
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        rank: int = 128,
        update_interval: int = 200,
        scale: float = 0.25,
        min_dim: int = 64,
        **extra_defaults: Any,
    ) -> None:
        check_adam_args(lr, betas, eps, weight_decay)
        if rank < 1 or update_interval < 1 or min_dim < 1:
            raise ValueError("rank, update_interval and min_dim must be >= 1")
        defaults = {
            "lr": lr,
            "betas": betas,
            "eps": eps,
            "weight_decay": weight_decay,
            "rank": rank,
            "update_interval": update_interval,
            "scale": scale,
            "min_dim": min_dim,
            **extra_defaults,  # a subclass's own group options (Q-GaLore)
        }
        super().__init__(params, defaults)

    @staticmethod
    def _projector(grad: torch.Tensor, rank: int) -> torch.Tensor:
        """The orthonormal basis of the gradient's top-``rank`` singular subspace on its smaller side."""
        u, _, vh = torch.linalg.svd(grad.float(), full_matrices=False)
        m, n = grad.shape
        proj = vh[:rank] if m >= n else u[:, :rank]
        return proj.to(grad.dtype).contiguous()

    @staticmethod
    def _project(grad: torch.Tensor, proj: torch.Tensor) -> torch.Tensor:
        return grad @ proj.T if grad.shape[0] >= grad.shape[1] else proj.T @ grad

    @staticmethod
    def _project_back(low: torch.Tensor, proj: torch.Tensor, shape: torch.Size) -> torch.Tensor:
        return low @ proj if shape[0] >= shape[1] else proj @ low

    # -- what a subclass changes (Q-GaLore: quantized projector, lazy refresh, INT8 weights) ---------------------

    def _init_low_rank(self, p: torch.Tensor, state: dict[str, Any], group: dict[str, Any]) -> None:
        """Fill a projected matrix's state at its first step."""
        state["refreshes"] = 0

    def _projection(
        self, grad: torch.Tensor, state: dict[str, Any], group: dict[str, Any], step: int
    ) -> torch.Tensor:
        """This step's projector, refreshed from the gradient's SVD at steps 0, T, 2T, ..."""
        if "projector" not in state or step % group["update_interval"] == 0:
            state["projector"] = self._projector(grad, min(group["rank"], *grad.shape))
            state["refreshes"] = state.get("refreshes", 0) + 1
        projector: torch.Tensor = state["projector"]
        return projector

    def _apply_low_rank(
        self,
        p: torch.Tensor,
        update: torch.Tensor,
        step_size: float,
        state: dict[str, Any],
        group: dict[str, Any],
        index: int,
        step: int,
    ) -> None:
        """Write the projected-back update into a projected matrix (decoupled weight decay first)."""
        p.mul_(1 - group["lr"] * group["weight_decay"])
        p.add_(update, alpha=-step_size * group["scale"])

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        index = -1  # the tensor's position in the optimizer (seeds Q-GaLore's stochastic rounding)
        for group in self.param_groups:
            lr, wd = group["lr"], group["weight_decay"]
            for p in group["params"]:
                index += 1
                if p.grad is None:
                    continue
                grad = p.grad
                if grad.is_sparse:
                    raise RuntimeError(f"{type(self).__name__} does not support sparse gradients")
                state = self.state[p]
                low_rank = galore_eligible(p, group["min_dim"])
                if not state:
                    state["step"] = torch.tensor(0.0)
                    if low_rank:
                        self._init_low_rank(p, state, group)
                step = int(state["step"].item())
                if low_rank:
                    proj = self._projection(grad, state, group, step).to(grad.dtype)
                    grad = self._project(grad, proj)
                exp_avg, denom, step_size = adam_moments(state, grad, group)
                if not low_rank:
                    p.mul_(1 - lr * wd)
                    p.addcdiv_(exp_avg, denom, value=-step_size)
                    continue
                update = self._project_back(exp_avg / denom, proj, p.shape)
                self._apply_low_rank(p, update, step_size, state, group, index, step)
        return loss
