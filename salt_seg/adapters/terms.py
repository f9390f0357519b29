"""The update algebra shared by every adapter: ``ΔW = Σ L·C·R`` terms and cheap Frobenius norms."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Term:
    """One update term ``L · C · R`` (fp32).

    Attributes:
        left: ``out x a``.
        right: ``b x fan_in``.
        core: ``None`` (then ``a == b``), an ``a``-vector (diagonal), or an ``a x b`` matrix.
    """

    left: torch.Tensor
    right: torch.Tensor
    core: torch.Tensor | None = None

    def dense(self) -> torch.Tensor:
        """The term as an ``out x fan_in`` matrix, multiplied in the cheaper order."""
        if self.core is None:
            return self.left @ self.right
        if self.core.dim() == 1:
            return (self.left * self.core) @ self.right
        out, a = self.left.shape
        b, fan_in = self.right.shape
        if a * b * fan_in + out * a * fan_in <= out * a * b + out * b * fan_in:
            return self.left @ (self.core @ self.right)
        return (self.left @ self.core) @ self.right


def frobenius(x: torch.Tensor) -> torch.Tensor:
    """``‖x‖_F`` with a finite gradient at zero (the regulariser is zero at an identity init)."""
    return x.pow(2).sum().clamp_min(1e-30).sqrt()


def low_rank_frobenius(left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """``‖left @ right‖_F`` without forming the product: ``sqrt(sum((leftᵀleft) ⊙ (right rightᵀ)))``."""
    gram = (left.T @ left) * (right @ right.T)
    return gram.sum().clamp_min(1e-30).sqrt()
