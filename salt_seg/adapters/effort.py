"""Effort: freeze the principal singular components, train the residual ones (arXiv 2411.15633).

The mirror image of SALT. With ``W = U_r Σ_r V_rᵀ + U_res Σ_res V_resᵀ`` split at ``r``, the residual factors
become trainable copies ``Û, σ̂, V̂`` (initialised to ``U_res, σ_res, V_res``) and

    W' − W = Û diag(σ̂) V̂ᵀ − U_res diag(σ_res) V_resᵀ

which is exactly zero at step 0. The regulariser keeps the residual basis orthonormal and orthogonal to the frozen
principal one, and the residual energy ``Σσ̂²`` near its start, in the spirit of Effort's orthogonality and
singular-value constraints (the relative weighting is ours, not the paper's).
"""

from __future__ import annotations

import torch
from torch import nn

from salt_seg.adapters.base import AdapterLayer
from salt_seg.adapters.cost import TermShape
from salt_seg.adapters.svd import SVDFactors
from salt_seg.adapters.terms import Term


class EffortLayer(AdapterLayer):
    """Effort around a frozen ``nn.Linear`` / ``nn.Conv2d``.

    Args:
        base_layer: the layer to adapt.
        factors: fp32 thin SVD of its weight.
        rank: number of principal components kept frozen (``0 <= r < k``); ``k − r`` residual ones train.
        compute: ``auto``, ``factored`` or ``dense``.

    Trainable: ``U`` (``out x (k−r)``), ``sigma`` (``k−r``), ``Vh`` (``(k−r) x fan_in``).
    Buffers: the frozen residual ``U_res``, ``S_res``, ``Vh_res`` and principal ``U_r``, ``Vh_r`` (regulariser).
    """

    adapter_name = "effort"

    U_res: torch.Tensor
    S_res: torch.Tensor
    Vh_res: torch.Tensor
    U_r: torch.Tensor
    Vh_r: torch.Tensor

    def __init__(
        self, base_layer: nn.Linear | nn.Conv2d, factors: SVDFactors, rank: int, compute: str = "auto"
    ) -> None:
        super().__init__(base_layer, compute)
        if not 0 <= rank < factors.k:
            raise ValueError(
                f"effort rank (frozen principal components) must be in [0, k-1={factors.k - 1}], got {rank}"
            )
        self.rank = int(rank)
        U, S, Vh = factors.U, factors.S, factors.Vh
        self.register_buffer("U_res", U[:, rank:].contiguous(), persistent=False)
        self.register_buffer("S_res", S[rank:].contiguous(), persistent=False)
        self.register_buffer("Vh_res", Vh[rank:].contiguous(), persistent=False)
        self.register_buffer("U_r", U[:, :rank].contiguous(), persistent=False)
        self.register_buffer("Vh_r", Vh[:rank].contiguous(), persistent=False)
        self.U = nn.Parameter(self.U_res.clone())
        self.sigma = nn.Parameter(self.S_res.clone())
        self.Vh = nn.Parameter(self.Vh_res.clone())

    @staticmethod
    def count(out: int, fan_in: int, rank: int) -> int:
        """Trainable parameters for one layer: ``(k − r)(out + fan_in + 1)``."""
        return (min(out, fan_in) - rank) * (out + fan_in + 1)

    def terms(self) -> list[Term]:
        return [Term(self.U, self.Vh, self.sigma), Term(self.U_res, self.Vh_res, -self.S_res)]

    def term_shapes(self) -> list[TermShape]:
        m = self.k - self.rank
        return [
            TermShape(m, m, "diag", left_trainable=True, right_trainable=True, core_trainable=True),
            TermShape(m, m, "diag"),
        ]

    def regularization(self) -> torch.Tensor:
        """``‖ÛᵀÛ − I‖² + ‖V̂ V̂ᵀ − I‖² + ‖U_rᵀÛ‖² + ‖V_r V̂ᵀ‖² + (Σσ̂² − Σσ_res²)² / Σσ_res⁴`` (unweighted)."""
        eye = torch.eye(self.U.shape[1], device=self.U.device)
        reg = (self.U.T @ self.U - eye).pow(2).sum() + (self.Vh @ self.Vh.T - eye).pow(2).sum()
        if self.rank:
            reg = reg + (self.U_r.T @ self.U).pow(2).sum() + (self.Vh_r @ self.Vh.T).pow(2).sum()
        energy0 = self.S_res.pow(2).sum().clamp_min(1e-12)
        return reg + (self.sigma.pow(2).sum() - energy0).pow(2) / energy0.pow(2)

    def extra_repr(self) -> str:
        return f"frozen_rank={self.rank}, trained={self.k - self.rank}, k={self.k}, {super().extra_repr()}"
